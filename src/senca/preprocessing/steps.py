"""The preprocessing steps, each a small function over AnnData (scanpy style)."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp
from sklearn.decomposition import PCA

from senca.errors import SencaInputError
from senca.graph.spatial import section_codes

logger = logging.getLogger(__name__)


def filter_spots_genes(adata: ad.AnnData, min_counts: int = 1, min_spots: int = 3) -> ad.AnnData:
    """Drop spots with fewer than ``min_counts`` total counts and genes seen in fewer than ``min_spots`` spots.

    Parameters
    ----------
    adata
        Raw counts in ``X``.
    min_counts
        Minimum total counts per spot.
    min_spots
        Minimum number of spots in which a gene is detected.

    Returns
    -------
    A filtered copy (metrics in ``obs["total_counts"]``, ``obs["n_genes"]``, ``var["n_spots"]``).
    """
    counts = sp.csr_matrix(adata.X)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    keep_spots = totals >= min_counts
    detected = np.asarray((counts[keep_spots] > 0).sum(axis=0)).ravel()
    keep_genes = detected >= min_spots
    if keep_spots.sum() < 2 or keep_genes.sum() < 2:
        raise SencaInputError(
            f"quality control left {int(keep_spots.sum())} spot(s) and {int(keep_genes.sum())} gene(s) "
            f"(min_counts={min_counts}, min_spots={min_spots}); expected at least 2 of each"
        )
    dropped = (int((~keep_spots).sum()), int((~keep_genes).sum()))
    if any(dropped):
        logger.info("QC dropped %d spot(s) with < %d counts and %d gene(s) in < %d spots", dropped[0], min_counts, dropped[1], min_spots)
    adata = adata[keep_spots, keep_genes].copy()
    adata.obs["total_counts"] = totals[keep_spots]
    adata.obs["n_genes"] = np.asarray((adata.X > 0).sum(axis=1)).ravel()
    adata.var["n_spots"] = detected[keep_genes]
    return adata


def log_normalize(adata: ad.AnnData, target_sum: float = 1e4) -> None:
    """Keep counts in ``layers["counts"]``; put library-size normalised log1p values in ``X`` and ``layers["lognorm"]``."""
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    adata.layers["lognorm"] = adata.X.copy()


def highly_variable_genes(adata: ad.AnnData, n_top_genes: int = 3000, library_key: str | None = None) -> None:
    """Mark the ``n_top_genes`` most variable genes in ``var["highly_variable"]`` (all genes when there are fewer).

    With ``library_key`` (several sections), variability is judged within each section and
    genes variable in the most sections come first (scanpy's ``batch_key``), so a gene that
    merely differs between sections is not taken for a regional one.
    """
    if adata.n_vars <= n_top_genes:
        adata.var["highly_variable"] = True
        logger.info("%d genes <= n_top_genes=%d: all genes are used", adata.n_vars, n_top_genes)
        return
    sc.pp.highly_variable_genes(adata, n_top_genes=n_top_genes, flavor="seurat", batch_key=library_key)


def _centre_scale(data: np.ndarray, scale: bool) -> np.ndarray:
    """Centre the columns of ``data`` in place and, with ``scale``, divide by their standard deviation."""
    data -= data.mean(axis=0)
    if scale:
        std = data.std(axis=0)
        data /= np.where(std > 0, std, 1.0)
    return data


def pca(adata: ad.AnnData, n_comps: int = 200, seed: int = 0, scale: bool = True, library_key: str | None = None) -> None:
    """PCA of the highly variable genes into ``obsm["X_pca"]``.

    Genes are centred and, with ``scale``, scaled to unit variance (clipped at 10) first;
    with ``library_key`` within each section, so that differences of depth and chemistry
    between sections do not become the leading components, then one PCA is fitted over all
    sections (one shared input space). ``n_comps`` is capped at ``min(n_spots, n_genes) - 1``.
    """
    genes = adata.var["highly_variable"].to_numpy() if "highly_variable" in adata.var else np.ones(adata.n_vars, bool)
    data = adata.X[:, genes]
    data = np.asarray(data.toarray() if sp.issparse(data) else data, dtype=np.float64)
    if library_key is None:
        _centre_scale(data, scale)
    else:
        codes = section_codes(adata, library_key)[1]
        for code in np.unique(codes):
            data[codes == code] = _centre_scale(data[codes == code], scale)
    if scale:
        np.clip(data, -10, 10, out=data)
    n_comps = min(n_comps, min(data.shape) - 1)
    model = PCA(n_components=n_comps, svd_solver="randomized" if n_comps < min(data.shape) // 2 else "full", random_state=seed)
    adata.obsm["X_pca"] = model.fit_transform(data).astype(np.float32)
    adata.uns["pca"] = {"variance_ratio": model.explained_variance_ratio_, "n_comps": n_comps, "scaled": scale}


def preprocess(
    adata: ad.AnnData,
    min_counts: int = 1,
    min_spots: int = 3,
    target_sum: float = 1e4,
    n_top_genes: int = 3000,
    n_comps: int = 200,
    seed: int = 0,
    library_key: str | None = None,
) -> ad.AnnData:
    """Run QC, normalisation + log1p, HVG selection and PCA.

    With ``library_key`` (an ``obs`` column naming each spot's section), several sections are
    preprocessed together: one gene space (QC over all spots, HVGs judged per section), each
    spot normalised by its own library size, genes standardised per section before one shared
    PCA (see :func:`highly_variable_genes`, :func:`pca`).

    Returns
    -------
    A new AnnData: ``X`` log-normalised (all genes), ``layers["counts"]``, ``layers["lognorm"]``,
    ``var["highly_variable"]``, ``obsm["X_pca"]``; ``uns["spatial"]`` and ``obs`` are kept.
    """
    adata = filter_spots_genes(adata, min_counts=min_counts, min_spots=min_spots)
    log_normalize(adata, target_sum=target_sum)
    highly_variable_genes(adata, n_top_genes=n_top_genes, library_key=library_key)
    pca(adata, n_comps=n_comps, seed=seed, library_key=library_key)
    return adata
