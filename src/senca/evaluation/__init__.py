"""Evaluation of found regions: agreement with labels (ARI, NMI) and marker genes."""

from senca.evaluation.markers import markers
from senca.evaluation.metrics import ari_nmi, match_regions, n_clusters_from_labels, score

__all__ = ["ari_nmi", "markers", "match_regions", "n_clusters_from_labels", "score"]
