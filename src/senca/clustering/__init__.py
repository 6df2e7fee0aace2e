"""Clustering of a per-spot representation into tissue regions (exposed as ``senca.tl``).

AnnData level: :func:`cluster` (GMM "EEE" / k-means / Leiden, optional spatial refinement),
:func:`smooth_representation`. Array level, for code that works on embeddings directly
(e.g. initialising cluster centres): :func:`fit_gmm`, :func:`fit_kmeans`, :func:`fit_leiden`,
:func:`refine_labels`, :func:`consensus_labels` (of several clusterings, e.g. restarts),
:func:`global_scale` (the one rescaling of an embedding before it is clustered).
"""

from senca.clustering._utils import ClusterResult
from senca.clustering.consensus import Consensus, consensus_labels
from senca.clustering.core import cluster
from senca.clustering.gmm import fit_gmm, scale_features
from senca.clustering.k_selection import K_RANGE, KSelection, select_k
from senca.clustering.kmeans import fit_kmeans
from senca.clustering.leiden import fit_leiden, leiden_partition
from senca.clustering.refine import refine_labels
from senca.clustering.scaling import global_scale
from senca.clustering.smooth import smooth_representation

__all__ = [
    "K_RANGE",
    "ClusterResult",
    "Consensus",
    "KSelection",
    "cluster",
    "consensus_labels",
    "fit_gmm",
    "fit_kmeans",
    "fit_leiden",
    "global_scale",
    "leiden_partition",
    "refine_labels",
    "scale_features",
    "select_k",
    "smooth_representation",
]
