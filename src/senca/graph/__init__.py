"""Spatial neighbour graphs over spot coordinates."""

from senca.graph.spacing import spot_spacing
from senca.graph.spatial import edge_index, neighbour_graph, spatial_graph

__all__ = ["edge_index", "neighbour_graph", "spatial_graph", "spot_spacing"]
