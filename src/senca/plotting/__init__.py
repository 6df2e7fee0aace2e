"""Plotting (``senca.pl``): region maps over H&E, embeddings, marker dot plots."""

from senca.plotting.markers import marker_dotplot
from senca.plotting.spatial import embedding, region_palette, region_styles, regions

__all__ = ["embedding", "marker_dotplot", "region_palette", "region_styles", "regions"]
