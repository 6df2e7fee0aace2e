"""Evaluation of found regions: agreement with labels (ARI, NMI) and marker genes."""

from senca.evaluation.markers import markers
from senca.evaluation.metrics import NAME_MIN_SHARE, ari_nmi, match_regions, n_clusters_from_labels, name_regions, score

__all__ = ["NAME_MIN_SHARE", "ari_nmi", "markers", "match_regions", "n_clusters_from_labels", "name_regions", "score"]
