"""Plotting (``senca.pl``): region maps over H&E, embeddings, marker dot plots."""

from senca.plotting.curves import k_selection
from senca.plotting.markers import marker_dotplot
from senca.plotting.spatial import embedding, label_palette, region_palette, region_styles, regions, store_styles

__all__ = ["embedding", "k_selection", "label_palette", "marker_dotplot", "region_palette", "region_styles", "regions", "store_styles"]
