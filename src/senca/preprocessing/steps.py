"""The preprocessing steps, each a small function over AnnData (scanpy style)."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp
from scipy import linalg
from sklearn.decomposition import PCA

from senca.errors import SencaInputError
from senca.graph.spatial import section_codes

logger = logging.getLogger(__name__)

# The exact PCA (most components of a small matrix) densifies it up to this many entries.
_DENSE_MAX_ENTRIES = 50_000_000


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
    """Keep counts in ``layers["counts"]``; put library-size normalised log1p values in ``X`` and ``layers["lognorm"]``.

    ``X`` and ``layers["lognorm"]`` are one matrix, not two copies (a copy costs as much as
    the counts: gigabytes at a million spots); replace ``X``, do not edit it in place, to keep
    ``lognorm``.
    """
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    adata.layers["lognorm"] = adata.X


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


# Stored values handled at once when the sparse matrix is scaled in place (bounds the temporaries).
_VALUE_CHUNK = 10_000_000


def _column_sums(x: sp.csr_matrix, squared: bool = False) -> np.ndarray:
    """Per-column sum of the stored values (or of their squares), a chunk of values at a time:
    no squared or transposed copy of ``x``."""
    out = np.zeros(x.shape[1])
    for start in range(0, x.nnz, _VALUE_CHUNK):
        values = x.data[start:start + _VALUE_CHUNK]
        out += np.bincount(x.indices[start:start + _VALUE_CHUNK], weights=np.square(values) if squared else values,
                           minlength=x.shape[1])
    return out


def _standardised(x: sp.csr_matrix, scale: bool) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """``(y, centre, std)`` with ``(y - centre) / std`` the centred genes, scaled to unit variance and
    clipped at +-10 with ``scale`` (as ``sc.pp.scale(max_value=10)``), ``y`` as sparse as ``x``.

    ``y`` is ``x`` itself, its stored values clipped and shifted in place a chunk at a time:
    ``x`` must be the caller's own copy. At a million spots one copy of the matrix in float64
    is gigabytes, so no second one is made.

    A gene's non-zero values are clipped in place. Its zeros stand at ``-mean / std``; where
    that is below -10 (a gene expressed almost everywhere), they must become -10, which
    ``y = x - shift`` on the stored values and ``centre - shift`` do, with
    ``shift = mean - 10 std``; the zeros stay implicit. The centre is the column mean of the
    clipped values, as PCA re-centres.
    """
    n = x.shape[0]
    mean = _column_sums(x) / n
    if not scale:
        return x, mean, np.ones_like(mean)
    var = np.maximum(_column_sums(x, squared=True) / n - mean**2, 0.0)
    std = np.where(var > 0, np.sqrt(var), 1.0)
    low, high = mean - 10 * std, mean + 10 * std
    shift = np.where(mean > 10 * std, mean - 10 * std, 0.0)
    for start in range(0, x.nnz, _VALUE_CHUNK):
        values, cols = x.data[start:start + _VALUE_CHUNK], x.indices[start:start + _VALUE_CHUNK]
        np.clip(values, low[cols], high[cols], out=values)
        values -= shift[cols]
    centre = _column_sums(x) / n
    return x, centre, std


def _standardised_by_section(x: sp.csr_matrix, scale: bool, codes: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """:func:`_standardised` within each section (``codes``: each spot's section ``0..k-1``).

    Each section's ``y`` is divided by that section's own standard deviations, so one ``std``
    (ones) serves all sections and ``y`` stays as sparse as ``x``; ``centre`` has one row per
    section, the mean of its standardised and clipped values.
    """
    order = np.argsort(codes, kind="stable")  # spots grouped by section, as vstack lays them out
    parts, centres = [], []
    for code in range(int(codes.max()) + 1):
        y, centre, std = _standardised(x[codes == code], scale)
        parts.append(sp.csr_matrix(y @ sp.diags(1.0 / std)))
        centres.append(centre / std)
    y = sp.vstack(parts, format="csr")[np.argsort(order)]
    return y, np.stack(centres), np.ones(x.shape[1])


def _operator(y: sp.csr_matrix, centre: np.ndarray, std: np.ndarray, codes: np.ndarray) -> tuple:
    """Products with ``(y - centre[codes]) / std`` and its transpose, never forming the dense
    matrix; ``centre`` has one row per section, ``codes`` gives each row's section."""
    def times(v: np.ndarray) -> np.ndarray:
        v = v / std[:, None]
        out = y @ v
        offsets = centre @ v  # one row per section
        out -= offsets[0] if len(centre) == 1 else offsets[codes]
        return out

    def times_transposed(u: np.ndarray) -> np.ndarray:
        # Column sums of ``u`` per section (one section: of all of ``u``, summed in its own order).
        sums = u.sum(axis=0)[None] if len(centre) == 1 else np.stack([u[codes == code].sum(axis=0) for code in range(len(centre))])
        return (y.T @ u - centre.T @ sums) / std[:, None]

    return times, times_transposed


def _randomized_svd(times, times_transposed, shape: tuple[int, int], n_comps: int, seed: int):
    """``(u, s, vt)`` of the implicit matrix, by scikit-learn's randomized PCA step for step.

    Halko et al. (2011) as ``PCA(svd_solver="randomized", random_state=seed)`` runs it: the
    same random start, 10 extra directions, 7 power iterations (4 when ``n_comps`` is a tenth
    of the smaller side or more) with LU normalisation, the wide case transposed, signs by the
    largest loading. So the PCs equal those of the dense computation up to rounding.
    """
    n_iter = 7 if n_comps < 0.1 * min(shape) else 4
    transpose = shape[0] < shape[1]
    a, a_t = (times_transposed, times) if transpose else (times, times_transposed)
    q = np.random.RandomState(seed).normal(size=(shape[0] if transpose else shape[1], n_comps + 10))
    for _ in range(n_iter):
        q = linalg.lu(a(q), permute_l=True)[0]
        q = linalg.lu(a_t(q), permute_l=True)[0]
    q = linalg.qr(a(q), mode="economic")[0]
    u_hat, values, vt = linalg.svd(a_t(q).T, full_matrices=False)
    u, values, vt = (q @ u_hat)[:, :n_comps], values[:n_comps], vt[:n_comps]
    if transpose:
        u, vt = vt.T, u.T
    signs = np.sign(vt[np.arange(vt.shape[0]), np.abs(vt).argmax(axis=1)])
    return u * signs, values, vt * signs[:, None]


def pca(adata: ad.AnnData, n_comps: int = 200, seed: int = 0, scale: bool = True, max_fit_spots: int | None = 50_000,
        library_key: str | None = None) -> None:
    """PCA of the highly variable genes into ``obsm["X_pca"]`` and the loadings into ``varm["PCs"]``, without densifying them.

    Genes are centred and, with ``scale``, scaled to unit variance and clipped at 10 first,
    all on the sparse matrix (see :func:`_standardised`): memory stays O(non-zeros + spots x
    ``n_comps``), and the PCs are those of the dense computation. ``n_comps`` is capped at
    ``min(n_spots, n_genes) - 1``; when it is half of that or more, the exact SVD is taken
    (as scikit-learn's PCA does), of the dense matrix, which is then small. Above
    ``max_fit_spots`` spots the loadings are fitted on a random subsample of that many spots
    (drawn with ``seed``) and every spot is projected on them: a sample of that size pins the
    leading directions down, and the cost of the fit then stops growing with the section.
    ``None`` fits on all spots. With ``library_key`` (several sections) genes are centred and
    scaled within each section (see :func:`_standardised_by_section`), so that differences of
    depth and chemistry between sections do not become the leading components, and one PCA
    runs over all sections (one shared input space), as sparse as for one section.
    """
    genes = adata.var["highly_variable"].to_numpy() if "highly_variable" in adata.var else np.ones(adata.n_vars, bool)
    # One float64 copy of the genes used, which _standardised scales in place.
    x = sp.csr_matrix(adata.X if genes.all() else adata.X[:, genes]).astype(np.float64)
    n, n_genes = x.shape
    n_comps = min(n_comps, min(n, n_genes) - 1)
    codes = section_codes(adata, library_key)[1]
    if library_key is None:
        y, centre, std = _standardised(x, scale)
        centre = centre[None]
    else:
        y, centre, std = _standardised_by_section(x, scale, codes)
    times, times_transposed = _operator(y, centre, std, codes)
    n_fitted = n
    if n_comps >= min(n, n_genes) // 2 and n * n_genes <= _DENSE_MAX_ENTRIES:
        data = y.toarray()
        for code, row in enumerate(centre):
            data[codes == code] -= row
        model = PCA(n_components=n_comps, svd_solver="full", random_state=seed)
        scores = model.fit_transform(data / std)
        components = model.components_
    elif max_fit_spots is not None and n > max_fit_spots:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_fit_spots, replace=False))
        logger.info("PCA loadings fitted on %d of %d spots, all spots projected", max_fit_spots, n)
        fit_operator = _operator(y[rows], centre, std, codes[rows])
        _, _, components = _randomized_svd(*fit_operator, (max_fit_spots, n_genes), n_comps, seed)
        scores, n_fitted = times(components.T), max_fit_spots
    else:
        u, values, components = _randomized_svd(times, times_transposed, (n, n_genes), n_comps, seed)
        scores = u * values
    # Variance of each PC over all spots, against the total variance of the standardised genes
    # (each section's genes are centred on the section's mean: the total is the mean of squares).
    weights = np.bincount(codes, minlength=len(centre)) / n
    total = float(((_column_sums(y, squared=True) / n - weights @ centre**2) / std**2).sum())
    # The scores are centred: their variance from the sums of squares, without a centred copy.
    variance = np.einsum("ij,ij->j", scores, scores) / n - scores.mean(axis=0) ** 2
    adata.obsm["X_pca"] = scores.astype(np.float32)
    adata.uns["pca"] = {"variance_ratio": variance / max(total, 1e-300), "variance": variance * n / max(n - 1, 1),
                        "n_comps": n_comps, "scaled": scale, "n_spots_fitted": n_fitted}
    # Loadings as scanpy keeps them (zero for genes outside the HVGs), e.g. for sc.pl.pca_loadings.
    loadings = np.zeros((adata.n_vars, n_comps), dtype=np.float32)
    loadings[genes] = components.T
    adata.varm["PCs"] = loadings


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
