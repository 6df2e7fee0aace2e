"""Tools (``senca.tl``): clustering into regions, scores against labels, marker genes, UMAP.

The whole of ``senca run`` in one call is :func:`senca.find_regions` (it trains models, so it
lives with the pipeline, above these tools).
"""

from senca.clustering import cluster, refine_labels, smooth_representation
from senca.evaluation import ari_nmi, markers, n_clusters_from_labels, score
from senca.layout import umap

__all__ = ["ari_nmi", "cluster", "markers", "n_clusters_from_labels", "refine_labels", "score", "smooth_representation", "umap"]
