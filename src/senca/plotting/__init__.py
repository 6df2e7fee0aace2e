"""Plotting (``senca.pl``): region maps over H&E, embeddings, marker dot plots, maps and composition over several sections."""

from senca.plotting.curves import k_selection
from senca.plotting.markers import marker_dotplot
from senca.plotting.sections import composition, regions_by_section
from senca.plotting.spatial import embedding, label_palette, region_palette, region_styles, regions, store_styles

__all__ = ["composition", "embedding", "k_selection", "label_palette", "marker_dotplot", "region_palette", "region_styles",
           "regions", "regions_by_section", "store_styles"]
