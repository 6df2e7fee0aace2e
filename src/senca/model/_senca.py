"""scvi-tools-style user API of SENCA-st."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from senca.errors import SencaInputError
from senca.graph.autocorrelation import coherent_features
from senca.graph.ops import remove_self_loops, to_undirected
from senca.graph.spatial import section_codes
from senca.model._config import SencaConfig
from senca.model.module import SencaModule
from senca.training.trainer import (
    SencaData,
    StagedTrainer,
    embed,
    intra_op_threads,
    make_sampler,
    neighbourhood_mean,
    spot_image_features,
)

logger = logging.getLogger(__name__)

__all__ = ["SENCA"]

_MODEL_FILE = "model.pt"
_ATTRS_FILE = "attrs.json"
_FEATURES_FILE = "image_features.npy"
_ADATA_FILE = "adata.h5ad"


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"``: CUDA when present, else the CPU; anything else as ``torch.device`` reads it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _obs_hash(adata: AnnData) -> str:
    return hashlib.sha1("\n".join(map(str, adata.obs_names)).encode()).hexdigest()


@contextlib.contextmanager
def _compute_settings(num_threads: int | None, device: torch.device):
    """The configured intra-op threads for one call, with deterministic kernels where they are needed; restored after.

    Kernels run in parallel on CUDA and on several CPU threads, where some (scatter-adds, the
    gradient of indexing) would sum in an order that varies between runs. On one CPU thread
    every kernel runs in order, so the flag is left alone there: setting it imports TorchDynamo
    (about 1.5 s) in every process that trains.
    """
    threads = num_threads or torch.get_num_threads()
    needed = device.type != "cpu" or threads > 1
    previous = torch.are_deterministic_algorithms_enabled()
    if needed:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with intra_op_threads(threads):
            yield
    finally:
        if needed:
            torch.use_deterministic_algorithms(previous)


def _st_input(adata: AnnData, pca_key: str, n_pcs: int | None = None) -> np.ndarray:
    if pca_key not in adata.obsm:
        raise SencaInputError(
            f"AnnData: obsm[{pca_key!r}] is missing; expected (n_obs, n_pcs) PCs (run senca.pp.preprocess first)"
        )
    x = np.asarray(adata.obsm[pca_key], dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != adata.n_obs or x.shape[1] < 2:
        raise SencaInputError(f"AnnData: obsm[{pca_key!r}] has shape {x.shape}; expected ({adata.n_obs}, n_pcs >= 2)")
    if not np.isfinite(x).all():
        raise SencaInputError(f"AnnData: obsm[{pca_key!r}] contains NaN or infinite values")
    return x if n_pcs is None else x[:, :n_pcs]


def _coherent_pcs(adata: AnnData, x: np.ndarray, graph_key: str, z_min: float | None) -> np.ndarray:
    """Columns of ``x`` (PCs) used as ST input: the spatially coherent ones (``SencaConfig.coherence_z``).

    On small noisy sections most PCs are noise yet hold most of the variance: left in, they
    would dominate the reconstruction loss (measurements: benchmarks/README.md, section "Why
    the defaults are what they are", "[model] coherence_z").
    """
    if z_min is None:
        return np.arange(x.shape[1])
    _edge_index(adata, graph_key)  # validates the graph
    keep = coherent_features(x, adata.obsp[graph_key], z_min)
    logger.info("ST input: %d of %d PCs are spatially coherent (Moran's I z > %g)", keep.size, x.shape[1], z_min)
    return keep


def _edge_index(adata: AnnData, graph_key: str) -> torch.Tensor:
    if graph_key not in adata.obsp:
        raise SencaInputError(
            f"AnnData: obsp[{graph_key!r}] is missing; expected a sparse spots x spots spatial graph "
            "(run senca.graph.spatial_graph first)"
        )
    coo = sp.coo_matrix(adata.obsp[graph_key])
    ei = torch.from_numpy(np.vstack([coo.col, coo.row]).astype(np.int64))
    ei = to_undirected(remove_self_loops(ei), adata.n_obs)
    if ei.shape[1] == 0:
        raise SencaInputError(f"AnnData: obsp[{graph_key!r}] has no edges between distinct spots")
    return ei


def _make_data(adata: AnnData, x: np.ndarray, graph_key: str, config: SencaConfig) -> SencaData:
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    edge_index = _edge_index(adata, graph_key)
    target = neighbourhood_mean(x, edge_index, config.target_smoothing_hops)
    return SencaData(x, edge_index, target=target, coordinates=_batch_coordinates(adata))


def _batch_coordinates(adata: AnnData) -> np.ndarray | None:
    """Spot positions that order the mini-batch seeds into contiguous blocks.

    When the graph was built per section (``uns["spatial_neighbors"]["library_key"]``), each
    section is scaled into its own unit square on the diagonal, ``[i, i + 1)``: every spot of
    section ``i`` then lies below and left of every spot of section ``i + 1``, so a Z-order of
    the positions runs through the sections one after another and a block takes its seeds from
    one section (two at a seam), where the sections' own, overlapping coordinates would mix
    them.
    """
    if "spatial" not in adata.obsm:
        return None
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    library_key = adata.uns.get("spatial_neighbors", {}).get("library_key")
    if library_key is None or library_key not in adata.obs:
        return xy
    codes = section_codes(adata, library_key)[1]
    tiled = np.empty_like(xy)
    for code in np.unique(codes):
        rows = codes == code
        block = xy[rows] - xy[rows].min(axis=0)
        tiled[rows] = code + 0.99 * block / max(float(block.max()), 1e-12)
    return tiled


def _patches(adata: AnnData, patches: Any) -> torch.Tensor:
    arr = np.asarray(patches)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != adata.n_obs or arr.shape[1] != 3 or arr.shape[2] != arr.shape[3]:
        raise SencaInputError(
            f"patches: got dtype {arr.dtype} shape {arr.shape}; expected uint8 ({adata.n_obs}, 3, P, P) "
            "(see senca.image.extract_patches)"
        )
    if arr.shape[2] < 16:
        raise SencaInputError(f"patches: side {arr.shape[2]} px is too small for a ResNet; expected >= 16")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _image_features(adata: AnnData, image_features: Any) -> torch.Tensor:
    if isinstance(image_features, str):
        if image_features not in adata.obsm:
            raise SencaInputError(f"AnnData: obsm[{image_features!r}] (image_features) is missing")
        name, arr = f"obsm[{image_features!r}]", np.asarray(adata.obsm[image_features], dtype=np.float32)
    else:
        name, arr = "image_features", np.asarray(image_features, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != adata.n_obs:
        raise SencaInputError(f"{name}: shape {arr.shape}; expected ({adata.n_obs}, n_features)")
    if not np.isfinite(arr).all():
        raise SencaInputError(f"{name}: contains NaN or infinite values")
    # Foundation-model features come on any scale; standardise each column.
    arr = (arr - arr.mean(0)) / np.maximum(arr.std(0), 1e-6)
    return torch.from_numpy(arr.astype(np.float32))


class SENCA:
    """SENCA-st: Shared Encoder with Neighbourhood Cross-Attention over ST + H&E.

    Parameters
    ----------
    adata
        Section with ``obsm[pca_key]`` (PCs of log-normalised HVGs) and
        ``obsp[graph_key]`` (spatial graph).
    config
        Settings; defaults to :class:`SencaConfig`. Keyword arguments override single fields,
        e.g. ``SENCA(adata, latent_dim=16, use_graph=False)``.
    patches
        ``uint8 (n_obs, 3, P, P)`` H&E patches around each spot (ResNet image branch).
    image_features
        Precomputed per-spot image features in place of the ResNet: an ``(n_obs, f)``
        array or the name of an ``obsm`` key.
    pca_key, graph_key
        Where to read the ST input and the graph.
    device
        ``"auto"`` (CUDA when present, else CPU), or a torch device string.

    Examples
    --------
    >>> model = senca.SENCA(adata, patches=patches, n_clusters=5)
    >>> model.train()  # writes adata.obsm["X_senca"]
    >>> model.save("model", save_anndata=True)
    >>> model = senca.SENCA.load("model")  # no AnnData needed
    """

    def __init__(
        self,
        adata: AnnData,
        config: SencaConfig | None = None,
        *,
        patches: np.ndarray | None = None,
        image_features: np.ndarray | str | None = None,
        pca_key: str = "X_pca",
        graph_key: str = "spatial_connectivities",
        device: str | torch.device = "auto",
        **config_overrides: Any,
    ):
        config = config or SencaConfig()
        if config_overrides:
            known = {f.name for f in dataclasses.fields(SencaConfig)}
            unknown = sorted(set(config_overrides) - known)
            if unknown:
                raise SencaInputError(f"SENCA: unknown setting(s) {unknown}")
            config = config.replace(**config_overrides)
        x = _st_input(adata, pca_key, config.n_input_pcs)
        input_pcs = _coherent_pcs(adata, x, graph_key, config.coherence_z)
        x = x[:, input_pcs]
        x_scale = float(np.sqrt(np.mean(x**2)))
        data = _make_data(adata, x / x_scale, graph_key, config)
        if patches is not None and image_features is not None:
            raise SencaInputError("SENCA: give either patches or image_features, not both")
        image_mode = "none"
        if not config.use_image:
            if patches is not None or image_features is not None:
                logger.info("use_image=False: ignoring the image input")
        elif image_features is not None:
            data.image_features = _image_features(adata, image_features)
            image_mode = "features"
        elif patches is not None:
            data.patches = _patches(adata, patches)
            image_mode = "resnet"
        if config.vanilla_contrastive and image_mode == "none":
            raise SencaInputError("SENCA: vanilla_contrastive needs an image (patches or image_features)")
        self._build(adata, config, data, image_mode, x_scale, input_pcs, pca_key, graph_key, device)

    def _build(self, adata, config, data, image_mode, x_scale, input_pcs, pca_key, graph_key, device,
               initialise: bool = True) -> None:
        self.adata = adata
        self.config = config
        self.data = data
        self.x_scale = x_scale
        #: Columns of ``obsm[pca_key]`` the model reads (see ``SencaConfig.coherence_z``).
        self.input_pcs = np.asarray(input_pcs, dtype=int)
        self.pca_key, self.graph_key = pca_key, graph_key
        self.device = resolve_device(device)
        feature_dim = data.image_features.shape[1] if image_mode == "features" else None
        torch.manual_seed(config.seed)
        # Without initialisation (a model about to receive saved weights) the module is built
        # on the meta device: drawing the ResNet's random weights took longer than loading them.
        with contextlib.nullcontext() if initialise else torch.device("meta"):
            self.module = SencaModule(data.x.shape[1], config, image_mode, feature_dim)
        self.history: dict[str, pd.DataFrame] = {}
        #: How the number of regions was chosen when ``n_clusters`` was ``None``
        #: (:func:`senca.clustering.select_k`'s curve as a dict), else ``None``.
        self.k_selection: dict | None = None
        self.is_trained = False
        logger.info(
            "SENCA: %d spots, %d edges, %d inputs, image=%s", data.n_obs, data.edge_index.shape[1], data.x.shape[1], image_mode
        )

    def __repr__(self) -> str:
        c = self.config
        return (
            f"SENCA(n_obs={self.data.n_obs}, image={self.module.image_mode!r}, latent_dim={c.latent_dim}, "
            f"embedding_dim={self.module.embedding_dim}, trained={self.is_trained})"
        )

    def train(
        self,
        epochs_warmup: int | None = None,
        epochs_shared: int | None = None,
        epochs_regions: int | None = None,
        n_clusters: int | None = None,
        batch_size: int | None = None,
        progress_bar: bool = True,
    ) -> SENCA:
        """Run the three training stages; fills :attr:`history` and ``adata.obsm["X_senca"]``.

        Parameters
        ----------
        epochs_warmup, epochs_shared, epochs_regions
            Stage lengths (config values when ``None``).
        n_clusters
            Number of regions of the DEC stage (config value, else chosen by BIC).
        batch_size
            Seed spots per subgraph mini-batch (config value when ``None``).
        progress_bar
            Show a tqdm progress bar.

        Returns
        -------
        The model itself.
        """
        changes = {
            k: v
            for k, v in dict(
                epochs_warmup=epochs_warmup,
                epochs_shared=epochs_shared,
                epochs_regions=epochs_regions,
                n_clusters=n_clusters,
                batch_size=batch_size,
            ).items()
            if v is not None
        }
        if changes:
            self.config = self.config.replace(**changes)
            self.module.config = self.config
        with _compute_settings(self.config.num_threads, self.device):
            torch.manual_seed(self.config.seed)
            trainer = StagedTrainer(self.module, self.data, self.config, self.device, progress_bar)
            self.history = trainer.fit()
            self.k_selection = trainer.k_selection
        self.is_trained = True
        self.adata.obsm["X_senca"] = self.get_latent_representation()
        return self

    @property
    def n_regions(self) -> int | None:
        """Regions of the model: its region centres after the region stage, else ``config.n_clusters``."""
        return int(self.module.centres.shape[0]) if self.module.centres is not None else self.config.n_clusters

    def get_latent_representation(self) -> np.ndarray:
        """Fused embedding ``X_senca`` of every spot, ``(n_obs, embedding_dim)`` float32."""
        with _compute_settings(self.config.num_threads, self.device):
            z = embed(self.module, self.data, make_sampler(self.module, self.data, self.config), self.device)
        return z.numpy()

    def get_image_features(self) -> np.ndarray:
        """Per-spot features of the image branch alone, before any fusion with expression.

        For the ResNet branch: its texture statistics (trained only by the view-agreement
        loss); for precomputed features: those features, standardised. After training, only
        the spatially coherent features the model reads (``SencaConfig.coherence_z``). Used to
        score an image-only baseline with the same clustering.

        Raises
        ------
        SencaInputError
            The model has no image branch.
        """
        if not self.module.has_image:
            raise SencaInputError("SENCA: the model has no image branch (use_image=False or no image given)")
        if self.data.image_features is None:
            with _compute_settings(self.config.num_threads, self.device), intra_op_threads(self.config.image_num_threads):
                features = spot_image_features(self.module, self.data, None, self.device, grad=False).cpu()
        else:
            features = self.data.image_features
        return features[:, self.module.image_keep.cpu() > 0].numpy()

    def get_region_probabilities(self) -> np.ndarray:
        """Soft assignment of every spot to the DEC region centres, ``(n_obs, k)``.

        Raises
        ------
        SencaInputError
            The region stage has not run (``epochs_regions=0`` or ``hierarchical=False``).
        """
        if self.module.centres is None:
            raise SencaInputError("SENCA: no region centres; train with the region stage (epochs_regions > 0) first")
        z = torch.from_numpy(self.get_latent_representation()).to(self.device)
        with torch.no_grad():
            return self.module.soft_assignment(z).cpu().numpy()

    def save(self, dir_path: str | Path, overwrite: bool = False, save_anndata: bool = False) -> None:
        """Write weights, settings, history and (for the ResNet branch) cached image features.

        Parameters
        ----------
        dir_path
            Folder to create.
        overwrite
            Replace an existing model there.
        save_anndata
            Also write the section (``adata.h5ad``), so that :meth:`load` needs no AnnData,
            as in scvi-tools.
        """
        path = Path(dir_path)
        if (path / _MODEL_FILE).exists() and not overwrite:
            raise SencaInputError(f"{path}: already holds a saved model; pass overwrite=True to replace it")
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.module.state_dict(), path / _MODEL_FILE)
        attrs = {
            "config": self.config.to_dict(),
            "n_input": int(self.data.x.shape[1]),
            "n_obs": int(self.data.n_obs),
            "obs_hash": _obs_hash(self.adata),
            "x_scale": self.x_scale,
            "input_pcs": self.input_pcs.tolist(),
            "image_mode": self.module.image_mode,
            "image_feature_dim": self.module.image_feature_dim,
            "n_centres": None if self.module.centres is None else int(self.module.centres.shape[0]),
            "pca_key": self.pca_key,
            "graph_key": self.graph_key,
            "is_trained": self.is_trained,
            "k_selection": self.k_selection,
            "history": {k: v.to_dict(orient="list") for k, v in self.history.items()},
        }
        (path / _ATTRS_FILE).write_text(json.dumps(attrs, indent=1))
        if self.module.image_mode == "resnet" and self.data.image_features is not None:
            np.save(path / _FEATURES_FILE, self.data.image_features.numpy())
        if save_anndata:
            from senca.io import write_h5ad

            write_h5ad(self.adata, path / _ADATA_FILE)
        logger.info("saved SENCA model to %s", path)

    @classmethod
    def load(
        cls,
        dir_path: str | Path,
        adata: AnnData | None = None,
        *,
        patches: np.ndarray | None = None,
        image_features: np.ndarray | str | None = None,
        device: str | torch.device = "auto",
    ) -> SENCA:
        """Load a model written by :meth:`save` for ``adata``.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            The section (same spots, ``obsm[pca_key]`` and ``obsp[graph_key]``); ``None``: the
            one saved with the model (``save(..., save_anndata=True)``, as ``senca run
            --save-model`` does).
        patches, image_features
            The image input used in training. For the ResNet branch the cached features are
            reused when ``patches`` is not given (same spots only).
        device
            As in :class:`SENCA`.
        """
        path = Path(dir_path)
        try:
            attrs = json.loads((path / _ATTRS_FILE).read_text())
            state = torch.load(path / _MODEL_FILE, map_location="cpu", weights_only=True)
        except (OSError, ValueError, RuntimeError) as err:
            raise SencaInputError(f"{path}: not a saved SENCA model ({err})") from err
        if adata is None:
            if not (path / _ADATA_FILE).is_file():
                raise SencaInputError(f"{path}: no {_ADATA_FILE} saved with the model; pass adata= (the section it was trained on)")
            import anndata

            adata = anndata.read_h5ad(path / _ADATA_FILE)
        config = SencaConfig.from_dict(attrs["config"])
        mode, pca_key, graph_key = attrs["image_mode"], attrs["pca_key"], attrs["graph_key"]
        x = _st_input(adata, pca_key, config.n_input_pcs)
        input_pcs = attrs["input_pcs"]
        if x.shape[1] <= max(input_pcs):
            raise SencaInputError(
                f"AnnData: obsm[{pca_key!r}] has {x.shape[1]} columns; model {path} reads columns up to {max(input_pcs)}"
            )
        data = _make_data(adata, x[:, input_pcs] / attrs["x_scale"], graph_key, config)
        if mode == "features":
            if image_features is None:
                raise SencaInputError(f"{path}: model uses precomputed image features; pass image_features=")
            data.image_features = _image_features(adata, image_features)
        elif mode == "resnet" and patches is not None:
            data.patches = _patches(adata, patches)
        elif mode == "resnet":
            same_spots = adata.n_obs == attrs["n_obs"] and _obs_hash(adata) == attrs["obs_hash"]
            if not (same_spots and (path / _FEATURES_FILE).exists()):
                raise SencaInputError(f"{path}: model uses H&E patches; pass patches= for these spots")
            data.image_features = torch.from_numpy(np.load(path / _FEATURES_FILE))
        obj = cls.__new__(cls)
        # The weight file was only needed to initialise; the saved state holds the weights.
        obj._build(adata, config.replace(image_weights=None), data, mode, attrs["x_scale"], input_pcs, pca_key, graph_key, device,
                   initialise=False)
        obj.config = obj.module.config = config
        if attrs["n_centres"]:
            obj.module.centres = torch.nn.Parameter(torch.zeros(attrs["n_centres"], obj.module.embedding_dim))
        obj.module.load_state_dict(state, assign=True)
        obj.module.to(obj.device).eval()
        if mode == "resnet" and data.image_features is None:
            # Recompute the frozen features once, as training did after the warm-up.
            data.image_features = spot_image_features(obj.module, data, None, obj.device, grad=False).cpu()
        obj.history = {k: pd.DataFrame(v) for k, v in attrs["history"].items()}
        obj.is_trained = attrs["is_trained"]
        obj.k_selection = attrs.get("k_selection")
        return obj
