"""Staged self-supervised training of SENCA-st.

Stage 1 ``warmup``  : ST branch reconstructs its input from ``h_g``; the ResNet learns from two
                      augmented views of every patch (then, by default, its features are cached
                      and frozen).
Stage 2 ``shared``  : shared cross-attention encoder; reconstruction of the expression from
                      ``z_g``, from ``z_i`` (same decoder: one shared space) and from the fused
                      embedding, reconstruction of the (spatially coherent) image features from
                      the fused embedding, and the cross-modal InfoNCE (neighbours as
                      positives) at weight ``w_contrast`` (off by default); image terms need an
                      image.
Stage 3 ``regions`` : stage-2 losses + DEC KL to a sharpened soft assignment over k centres
                      initialised by a GMM / k-means on the embedding.

Ablations replace stages 2-3 by one stage: ``spot`` (``hierarchical=False``: spot-level losses
only) or ``contrastive`` (``vanilla_contrastive=True``: cross-modal InfoNCE only).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans
from tqdm.auto import tqdm

from senca._process import usable_cores
from senca.clustering import global_scale, select_k
from senca.clustering.gmm import fit_gmm
from senca.graph.autocorrelation import coherent_features
from senca.graph.ops import add_self_loops, edge_index_to_scipy, scatter_sum
from senca.training.augment import PatchAugmenter, patches_to_tensor
from senca.training.losses import dec_loss, dec_target, neighbour_info_nce, nt_xent, reconstruction_loss
from senca.training.optim import AdamW
from senca.training.sampler import SubgraphSampler

if TYPE_CHECKING:
    from senca.model._config import SencaConfig
    from senca.model.module import SencaModule

logger = logging.getLogger(__name__)

__all__ = ["SencaData", "StagedTrainer", "embed", "make_sampler", "neighbourhood_mean", "spot_image_features", "stage_plan"]

_FEATURE_CHUNK = 256
# Patches whose activations re-estimate the ResNet's BatchNorm statistics (all on smaller sections).
_RECALIBRATION_MAX_SPOTS = 8192
# Seeds per mini-batch when the section is too large for full-batch training and none is given:
# a block about the size of a section that trains full-batch, so a step costs about the same at
# any size (the contiguous block's halo adds only its rim).
_DEFAULT_BATCH = 4096


@dataclass
class SencaData:
    """Tensors the model trains on (all on CPU; batches are moved to the device).

    Attributes
    ----------
    x
        ``(n, p)`` float32 ST input (scaled PCs).
    edge_index
        ``(2, E)`` spatial graph, both directions, no self loops.
    patches
        ``(n, 3, P, P)`` uint8 H&E patches, or ``None``.
    image_features
        ``(n, f)`` float32 image features per spot: precomputed ones, or the cached ResNet
        features once the ResNet is frozen; ``None`` otherwise.
    target
        ``(n, p)`` reconstruction target (``x`` averaged over each spot's neighbourhood,
        see :func:`neighbourhood_mean`); ``x`` itself when ``None``.
    coordinates
        ``(n, 2)`` spot positions; mini-batches are contiguous blocks along them.
    """

    x: torch.Tensor
    edge_index: torch.Tensor
    patches: torch.Tensor | None = None
    image_features: torch.Tensor | None = None
    target: torch.Tensor | None = None
    coordinates: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.target is None:
            self.target = self.x

    @property
    def n_obs(self) -> int:
        return self.x.shape[0]


def neighbourhood_mean(x: torch.Tensor, edge_index: torch.Tensor, hops: int) -> torch.Tensor:
    """Average ``x`` over N(i) + {i}, ``hops`` times (O(edges); ``hops=0`` returns ``x``).

    Used as the reconstruction target: spatially coherent (biological) variation survives the
    averaging while spot-level noise shrinks, so the loss weighs signal over noise.
    """
    ei = add_self_loops(edge_index, x.shape[0])
    deg = scatter_sum(torch.ones(ei.shape[1]), ei[1], x.shape[0]).unsqueeze(-1)
    for _ in range(hops):
        x = scatter_sum(x[ei[0]], ei[1], x.shape[0]) / deg
    return x


def stage_plan(config: SencaConfig) -> list[tuple[str, int]]:
    """Ordered ``(stage name, epochs)`` for a config (ablations change the plan)."""
    later = config.epochs_shared + config.epochs_regions
    if config.vanilla_contrastive:
        return [("warmup", config.epochs_warmup), ("contrastive", later)]
    if not config.hierarchical:
        return [("warmup", config.epochs_warmup), ("spot", later)]
    return [("warmup", config.epochs_warmup), ("shared", config.epochs_shared), ("regions", config.epochs_regions)]


def spot_image_features(
    module: SencaModule, data: SencaData, nodes: torch.Tensor | None, device: torch.device, grad: bool
) -> torch.Tensor | None:
    """Image features of ``nodes`` (``None``: every spot): precomputed / cached ones, else the ResNet on their patches."""
    if data.image_features is not None:
        return (data.image_features if nodes is None else data.image_features[nodes]).to(device)
    if nodes is None:
        nodes = torch.arange(data.n_obs)
    if module.resnet is None:
        return None
    if grad:
        return module.image_backbone_features(PatchAugmenter.plain(patches_to_tensor(data.patches[nodes].to(device))))
    with torch.no_grad():
        chunks = [
            module.image_backbone_features(PatchAugmenter.plain(patches_to_tensor(data.patches[idx].to(device))))
            for idx in nodes.split(_FEATURE_CHUNK)
        ]
    return torch.cat(chunks)


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Torch's intra-op threads set to ``threads`` (every usable core when ``None``) for a block; restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or usable_cores())
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_sampler(module: SencaModule, data: SencaData, config: SencaConfig) -> SubgraphSampler:
    """Subgraph sampler for a section: full batch up to ``config.full_batch_max_spots`` spots."""
    batch_size = config.batch_size
    if batch_size is None and data.n_obs > config.full_batch_max_spots:
        batch_size = _DEFAULT_BATCH
    return SubgraphSampler(data.edge_index, data.n_obs, module.num_hops, batch_size, coordinates=data.coordinates)


@torch.no_grad()
def embed(module: SencaModule, data: SencaData, sampler: SubgraphSampler, device: torch.device) -> torch.Tensor:
    """Embedding (``X_senca``) of every spot in eval mode, batch by batch; returns a CPU tensor."""
    was_training = module.training
    module.eval()
    out = torch.empty(data.n_obs, module.embedding_dim)
    for batch in sampler.batches():
        feats = spot_image_features(module, data, batch.nodes, device, grad=False)
        res = module(data.x[batch.nodes].to(device), batch.edge_index.to(device), feats)
        out[batch.nodes[batch.seeds]] = res["embedding"][batch.seeds.to(device)].cpu()
    module.train(was_training)
    return out


class StagedTrainer:
    """Runs the stage plan of :func:`stage_plan` on one section.

    Parameters
    ----------
    module
        The network.
    data
        Its inputs.
    config
        Loss weights, stage lengths, optimiser and batching settings.
    device
        Where to train.
    progress_bar
        Show a tqdm bar over all epochs.
    """

    def __init__(self, module: SencaModule, data: SencaData, config: SencaConfig, device: torch.device, progress_bar: bool = True):
        self.module = module
        self.data = data
        self.config = config
        self.device = device
        self.progress_bar = progress_bar
        self.sampler = make_sampler(module, data, config)
        self.augmenter = PatchAugmenter(config.aug_crop_scale, config.aug_jitter)
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.optimizer = AdamW(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.dec_targets: torch.Tensor | None = None
        self.image_columns: torch.Tensor | None = None
        self.image_target: torch.Tensor | None = None
        self.image_target_scale = 1.0
        #: The criterion curve when the region stage chose the number of regions itself.
        self.k_selection: dict | None = None

    # ----------------------------------------------------------------- helpers
    @property
    def _resnet_trainable(self) -> bool:
        return self.module.resnet is not None and self.data.image_features is None

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), 5.0, foreach=True)
        self.optimizer.step()

    def _image_view_epoch(self) -> float:
        """One pass of the view-agreement loss over all patches, in mini-batches."""
        cfg, dev = self.config, self.device
        order = torch.from_numpy(self.rng.permutation(self.data.n_obs))
        losses = []
        for idx in order.split(cfg.image_batch_size):
            if idx.numel() < 2:
                continue
            x = patches_to_tensor(self.data.patches[idx].to(dev))
            v1 = self.module.view_projection(self.module.image_backbone_features(self.augmenter(x, self.generator)))
            v2 = self.module.view_projection(self.module.image_backbone_features(self.augmenter(x, self.generator)))
            loss = cfg.w_image_view * nt_xent(v1, v2, cfg.temperature)
            self._step(loss)
            losses.append(loss.item())
        return float(np.mean(losses)) if losses else 0.0

    @torch.no_grad()
    def _recalibrate_batchnorm(self) -> None:
        """Re-estimate the ResNet's BatchNorm statistics on this section's plain patches.

        Eval-mode features then see activations normalised for this slide's stain and tissue
        (AdaBN, Li et al. 2016): for a randomly initialised ResNet that is what keeps every
        stage's texture statistics on a sensible scale; for pretrained weights it adapts them
        to the section. Exact averages (``momentum=None``) over one forward pass of the plain
        patches, of at most ``_RECALIBRATION_MAX_SPOTS`` of them (a random subsample drawn with
        the seed above that): the statistics are settled long before, and the features then
        cost one full ResNet pass, not two.
        """
        resnet = self.module.resnet
        norms = [m for m in resnet.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        resnet.train()
        spots = torch.arange(self.data.n_obs)
        if self.data.n_obs > _RECALIBRATION_MAX_SPOTS:
            spots = torch.from_numpy(np.sort(np.random.default_rng(self.config.seed).choice(
                self.data.n_obs, _RECALIBRATION_MAX_SPOTS, replace=False)))
        for idx in spots.split(_FEATURE_CHUNK):
            resnet.forward_texture(PatchAugmenter.plain(patches_to_tensor(self.data.patches[idx].to(self.device))))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum

    def _freeze_image(self) -> None:
        """Cache standardised ResNet features (eval mode, no augmentation) so later stages skip the CNN."""
        start = time.perf_counter()
        # The batch statistics are reduced in an order that depends on the thread count on
        # small feature maps, so they are estimated with the training threads; the eval pass
        # gives the same features at any thread count.
        self._recalibrate_batchnorm()
        self.module.resnet.eval()
        with intra_op_threads(self.config.image_num_threads):
            raw = spot_image_features(self.module, self.data, None, self.device, grad=False)
        self.data.image_features = self.module.fit_image_standardisation(raw).cpu()
        for p in list(self.module.resnet.parameters()) + list(self.module.view_head.parameters()):
            p.requires_grad_(False)
        logger.info("image features: ResNet pass over %d patches, %.1f s; cached %s", self.data.n_obs,
                    time.perf_counter() - start, tuple(self.data.image_features.shape))

    @torch.no_grad()
    def _prepare_image_stream(self) -> None:
        """Choose the image features the model reads and build their reconstruction target.

        Only the spatially coherent features are read (``config.coherence_z``): tissue regions
        are spatially coherent, and a feature whose values are spatial noise (many texture
        statistics of a random or briefly trained ResNet) only adds noise to the image stream.
        Sets the module's ``image_keep`` mask from the features the later stages see; the
        target is those features as they are. Unlike expression, they are not averaged over the
        neighbourhood: they carry no counting noise, each patch already spans about two spots,
        and averaging blurred tissue boundaries (measurements: benchmarks/README.md, section
        "Why the defaults are what they are", "Image features reconstructed as they are").
        """
        cfg = self.config
        features = spot_image_features(self.module, self.data, None, self.device, grad=False).cpu()
        if cfg.coherence_z is not None:
            graph = edge_index_to_scipy(self.data.edge_index, self.data.n_obs)
            keep = torch.from_numpy(coherent_features(features.numpy(), graph, cfg.coherence_z))
            mask = torch.zeros_like(self.module.image_keep)
            mask[keep.to(mask.device)] = 1.0
            self.module.image_keep.copy_(mask)
            logger.info("image input: %d of %d features are spatially coherent (Moran's I z > %g)",
                        keep.numel(), mask.numel(), cfg.coherence_z)
        self.image_columns = torch.nonzero(self.module.image_keep.cpu()).squeeze(1)
        self.image_target = features[:, self.image_columns]
        # Normalised by the target's total variance: 1 for a constant prediction, as the
        # expression terms (unit mean square input) are, whatever the number of features.
        self.image_target_scale = float(self.image_target.var(0).sum().clamp(min=1e-12))

    def _init_regions(self) -> None:
        cfg = self.config
        emb = embed(self.module, self.data, self.sampler, self.device)
        # One scale for every dimension (centred, unit mean variance), as select_k's.
        centre, factor = global_scale(emb.numpy())
        mean = torch.as_tensor(centre, dtype=emb.dtype)
        std = torch.full((emb.shape[1],), factor, dtype=emb.dtype)
        z = ((emb - mean) / std).numpy()
        k = cfg.n_clusters
        if k is None:
            selection = select_k(emb.numpy(), cfg.n_clusters_range, cfg.seed)
            k, self.k_selection = selection.k, selection.to_dict()
        if cfg.dec_init == "gmm":
            # The same mixture as the final clustering (best of its k-means starts, subsampled
            # on large sections): DEC sharpens the partition it starts from, so a poor single
            # start would be locked in.
            centres = fit_gmm(z, k, scale="none", seed=cfg.seed).centers
        else:
            centres = KMeans(k, n_init=10, random_state=cfg.seed).fit(z).cluster_centers_
        self.module.init_centres(torch.as_tensor(centres, dtype=torch.float32), mean, std)
        self.optimizer.add_param_group([self.module.centres])
        logger.info("initialised %d region centres by %s", k, cfg.dec_init)

    def _refresh_dec_targets(self) -> None:
        emb = embed(self.module, self.data, self.sampler, self.device).to(self.device)
        with torch.no_grad():
            self.dec_targets = dec_target(self.module.soft_assignment(emb), self.config.dec_balance).cpu()

    def _graph_losses(self, stage: str, batch) -> dict[str, torch.Tensor]:
        cfg, dev, m = self.config, self.device, self.module
        x = (self.data.x if batch.whole else self.data.x[batch.nodes]).to(dev)
        ei = batch.edge_index.to(dev)
        seeds = batch.seeds.to(dev)
        target = batch.rows(self.data.target).to(dev)
        losses: dict[str, torch.Tensor] = {}
        if stage == "warmup":
            if not cfg.vanilla_contrastive:
                h_g = m.encode_gene(x, ei)
                losses["recon"] = cfg.w_recon * reconstruction_loss(m.gene_decoder(batch.rows(h_g, local=True)), target)
            return losses
        # Only after the warm-up: the ResNet is the costly part and stage 1 does not use it here.
        out = m(x, ei, spot_image_features(m, self.data, None if batch.whole else batch.nodes, dev, grad=True))
        negatives = torch.randperm(x.shape[0], generator=self.generator)[: cfg.n_negatives].to(dev)
        if stage == "contrastive":
            losses["contrast"] = neighbour_info_nce(out["z_g"], out["z_i"], seeds, None, negatives, cfg.temperature, 0.0)
            return losses
        losses["recon"] = cfg.w_recon * reconstruction_loss(m.gene_decoder(batch.rows(out["z_g"], local=True)), target)
        losses["recon_fused"] = cfg.w_recon_fused * reconstruction_loss(m.fused_decoder(batch.rows(out["embedding"], local=True)), target)
        if m.has_image and cfg.w_recon_image > 0:
            # z_i is decoded by the gene decoder too (one shared space): the image stream must
            # carry what in the image predicts expression, not image structure alone.
            losses["recon_image"] = cfg.w_recon_image * reconstruction_loss(m.gene_decoder(batch.rows(out["z_i"], local=True)), target)
        if m.has_image and cfg.w_recon_image_features > 0:
            # Spot level, image side: the fused embedding keeps what the image tells (e.g. two
            # tissues with the same expression but different morphology), not only expression.
            # Only the rows of the decoder that predict the features read: the others are never
            # compared with anything, yet cost a product with every image feature on every step.
            cols = self.image_columns.to(dev)
            pred = torch.nn.functional.linear(batch.rows(out["embedding"], local=True), m.image_decoder.weight[cols],
                                              m.image_decoder.bias[cols])
            image_target = batch.rows(self.image_target).to(dev)
            losses["recon_image_features"] = cfg.w_recon_image_features * (
                (pred - image_target).pow(2).sum(-1).mean() / self.image_target_scale
            )
        # The neighbourhood level is cross-modal: without an image there is nothing to align.
        if stage in ("shared", "regions") and cfg.w_contrast > 0 and m.has_image:
            losses["contrast"] = cfg.w_contrast * neighbour_info_nce(
                out["z_g"], out["z_i"], seeds, ei, negatives, cfg.temperature, cfg.neighbour_positive_weight
            )
        if stage == "regions":
            q = m.soft_assignment(batch.rows(out["embedding"], local=True))
            p = batch.rows(self.dec_targets).to(dev)
            losses["dec"] = cfg.w_dec * dec_loss(q, p)
        return losses

    # ----------------------------------------------------------------- main loop
    def fit(self) -> dict[str, pd.DataFrame]:
        """Train all stages; returns the per-stage, per-epoch loss history."""
        cfg = self.config
        plan = [(s, e) for s, e in stage_plan(cfg) if e > 0]
        history: dict[str, pd.DataFrame] = {}
        self.module.to(self.device).train()
        bar = tqdm(total=sum(e for _, e in plan), desc="SENCA", unit="step", disable=not self.progress_bar)
        # One optimisation step per schedule unit: the whole section when it fits one batch,
        # else the next contiguous block, so the cost of the schedule does not grow with the section.
        batches = self.sampler.steps(self.rng)
        image_epochs = 0
        image_prepared = False
        for stage, epochs in plan:
            if stage != "warmup" and self._resnet_trainable and cfg.freeze_image_after_warmup:
                self._freeze_image()
            if stage != "warmup" and self.module.has_image and not image_prepared:
                self._prepare_image_stream()
                image_prepared = True
            if stage == "regions":
                self._init_regions()
            rows = []
            for step in range(epochs):
                if stage == "regions" and step % max(cfg.dec_update_interval, 1) == 0:
                    self._refresh_dec_targets()
                sums: dict[str, float] = defaultdict(float)
                if self._resnet_trainable and cfg.w_image_view > 0 and image_epochs < cfg.epochs_image:
                    sums["image_view"] = self._image_view_epoch()
                    image_epochs += 1
                losses = self._graph_losses(stage, next(batches))
                if losses:
                    self._step(sum(losses.values()))
                for name, value in losses.items():
                    sums[name] += value.item()
                row = dict(sums)
                row["total"] = sum(row.values())
                rows.append(row)
                bar.set_description(f"SENCA {stage}")
                bar.set_postfix(loss=f"{row['total']:.4f}")
                bar.update(1)
            history[stage] = pd.DataFrame(rows, index=pd.RangeIndex(epochs, name="step"))
        bar.close()
        if self._resnet_trainable and cfg.freeze_image_after_warmup:
            self._freeze_image()
        if self.module.has_image and not image_prepared:  # e.g. the image branch trained alone
            self._prepare_image_stream()
        self.module.eval()
        return history
