"""Several sections in one AnnData, and back (squidpy's ``library_key`` convention)."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd

from senca.errors import SencaInputError

logger = logging.getLogger(__name__)

SPOT_KEY = "spot_id"


def concat_sections(sections: dict[str, ad.AnnData], library_key: str = "section") -> ad.AnnData:
    """Join sections into one AnnData over their shared genes.

    Parameters
    ----------
    sections
        Section name -> section as read (one library with its image, or none).
    library_key
        ``obs`` column that receives each spot's section name.

    Returns
    -------
    One AnnData: the genes every section measured (a gene missing from a section would read
    as zero there), spot ids ``"<section>:<spot>"`` with the original id in ``obs["spot_id"]``,
    and each section's image under ``uns["spatial"][section]``, so that graph, patches and plots
    find it by the section's name.
    """
    if len(sections) < 1:
        raise SencaInputError("concat_sections: expected at least one section")
    shared = None
    for adata in sections.values():
        shared = adata.var_names if shared is None else shared.intersection(adata.var_names, sort=False)
    if len(shared) < 2:
        raise SencaInputError(f"the sections {', '.join(sections)} share {len(shared)} gene name(s); expected the same gene space")
    for name, adata in sections.items():
        if adata.n_vars > len(shared):
            logger.info("section %s: %d of its %d genes are not measured in every section and are left out", name, adata.n_vars - len(shared), adata.n_vars)
    parts, spatial = [], {}
    for name, adata in sections.items():
        part = ad.AnnData(X=adata[:, shared].X, obs=adata.obs.copy(), obsm={"spatial": np.asarray(adata.obsm["spatial"])[:, :2]})
        part.var_names = shared
        part.obs[SPOT_KEY] = adata.obs_names.astype(str)
        part.obs[library_key] = name
        part.obs_names = [f"{name}:{spot}" for spot in adata.obs_names]
        for column in part.obs.columns:
            if isinstance(part.obs[column].dtype, pd.CategoricalDtype):
                part.obs[column] = part.obs[column].astype(object)
        parts.append(part)
        libraries = [library for library in adata.uns.get("spatial", {}).values() if library.get("images")]
        if len(libraries) > 1:
            raise SencaInputError(f"section {name}: uns['spatial'] holds {len(libraries)} images; expected one per section")
        if libraries:
            spatial[name] = libraries[0]
    joined = ad.concat(parts, join="outer", merge=None)
    joined.obs[library_key] = pd.Categorical(joined.obs[library_key], categories=list(sections))
    if "label" in joined.obs:
        joined.obs["label"] = joined.obs["label"].astype("category")
    joined.uns["spatial"] = spatial
    return joined


def split_sections(adata: ad.AnnData, library_key: str = "section") -> dict[str, ad.AnnData]:
    """The sections of a :func:`concat_sections` AnnData, each with its own spot ids and image.

    Everything per spot (``obs``, ``obsm``, layers, the graph in ``obsp``) follows the spots; ``uns`` keeps only the
    section's own library under ``uns["spatial"]``.
    """
    if library_key not in adata.obs:
        raise SencaInputError(f"AnnData: obs[{library_key!r}] (library_key) is missing")
    out = {}
    for name in adata.obs[library_key].astype(str).unique():
        section = adata[(adata.obs[library_key].astype(str) == name).to_numpy()].copy()
        if SPOT_KEY in section.obs:
            section.obs_names = section.obs[SPOT_KEY].astype(str).to_numpy()
        library = adata.uns.get("spatial", {}).get(name)
        section.uns = {k: v for k, v in adata.uns.items() if k != "spatial"}
        section.uns["spatial"] = {name: library} if library is not None else {}
        out[name] = section
    return out
