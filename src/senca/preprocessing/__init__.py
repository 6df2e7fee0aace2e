"""Preprocessing (``senca.pp``): QC, normalisation, log1p, highly variable genes, PCA.

All steps keep ``X`` sparse until PCA, which runs on the highly variable genes only.
"""

from senca.preprocessing.steps import filter_spots_genes, highly_variable_genes, log_normalize, pca, preprocess

__all__ = ["filter_spots_genes", "highly_variable_genes", "log_normalize", "pca", "preprocess"]
