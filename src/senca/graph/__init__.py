"""Spatial neighbour graphs over spot coordinates."""

from senca.graph.autocorrelation import MoransI, coherent_features, morans_i
from senca.graph.spacing import spot_spacing
from senca.graph.spatial import edge_index, neighbour_graph, section_codes, sectioned_graph, spatial_graph

__all__ = ["MoransI", "coherent_features", "edge_index", "morans_i", "neighbour_graph", "section_codes", "sectioned_graph", "spatial_graph", "spot_spacing"]
