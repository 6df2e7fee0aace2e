"""Plotting (``senca.pl``): region maps over H&E, embeddings, marker dot plots, maps and composition over several sections."""

from senca.plotting.markers import marker_dotplot
from senca.plotting.sections import composition, regions_by_section
from senca.plotting.spatial import embedding, region_palette, region_styles, regions

__all__ = ["composition", "embedding", "marker_dotplot", "region_palette", "region_styles", "regions", "regions_by_section"]
