"""Tools (``senca.tl``): clustering into regions, scores against labels, marker genes, UMAP."""

from senca.clustering import cluster, refine_labels, smooth_representation
from senca.evaluation import ari_nmi, markers, n_clusters_from_labels, score
from senca.layout import umap

__all__ = ["ari_nmi", "cluster", "markers", "n_clusters_from_labels", "refine_labels", "score", "smooth_representation", "umap"]
