"""One dataclass for every architecture, loss, schedule and ablation setting of SENCA-st."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from senca.clustering.k_selection import K_RANGE
from senca.errors import SencaInputError

__all__ = ["SencaConfig"]

_CHOICES = {
    "fusion": ("concat", "gate"),
    "image_backbone": ("resnet18", "resnet50"),
    "dec_init": ("gmm", "kmeans"),
}


@dataclass
class SencaConfig:
    """Settings of the SENCA-st model and its staged self-supervised training.

    Architecture
        ``hidden_dim`` width of the graph transformer and FFNs; ``latent_dim`` size ``d`` of
        the shared space (``z_g``, ``z_i``); ``gt_layers`` / ``gt_heads`` graph-transformer
        depth and heads; ``ca_heads`` heads of the neighbourhood cross-attention;
        ``dropout`` (0 by default: the embedding is only ever computed for the spots it was
        trained on, so there is no generalisation to regularise, and dropout's noise made
        training restarts disagree; measurements: benchmarks/README.md, "Why the defaults are
        what they are", "[model] dropout"); ``fusion`` ``"concat"`` (embedding ``2d``) or
        ``"gate"`` (learned per-dimension gate, embedding ``d``, starting at weight ``sigmoid(gate_gene_prior)``
        on ``z_g``; 0 by default: no modality is preferred before training).
    Image branch
        ``image_backbone`` ``"resnet18"`` | ``"resnet50"``; ``image_weights`` torchvision-
        format weight file (random init when ``None``); ``epochs_image`` passes of the
        view-agreement loss over all patches (the first epochs of stage 1). 0 by default:
        the texture statistics of the randomly initialised ResNet (BatchNorm re-estimated on
        the section) already describe stain and texture, and the few passes a CPU affords
        add little for their cost (measurements: benchmarks/README.md, section "Why the
        defaults are what they are", "[model] epochs_image");
        raise it with a GPU or pretrained ``image_weights``; ``image_batch_size`` patches per
        self-supervised step;
        ``freeze_image_after_warmup`` caches the ResNet features
        after stage 1 so later stages do not run the CNN; ``aug_*`` strengths of the view
        augmentations (colour jitter kept small: stain differences are part of what tells
        tissues apart, so the views must not teach the ResNet to ignore them).
    Input
        ``n_input_pcs`` leading PCs used (all when ``None``); ``coherence_z``: of those PCs,
        and of the image features, only the spatially coherent ones are used: Moran's I over
        the spatial graph with a z-score above this value (``None``: all). On small noisy
        sections most PCs are spatial noise yet carry most of the variance, and in the
        reconstruction loss they drowned the signal (measurements: benchmarks/README.md,
        section "Why the defaults are what they are", "[model] coherence_z").
        ``target_smoothing_hops``
        times the expression reconstruction target is averaged over each spot's neighbourhood
        (0: reconstruct the raw input); the image features are reconstructed as they are.
    Losses
        ``w_recon`` reconstruction of the ST input from ``z_g`` (from ``h_g`` in stage 1);
        ``w_recon_fused`` reconstruction from the fused embedding; ``w_recon_image``
        reconstruction from ``z_i`` with the same decoder as ``z_g``;
        ``w_recon_image_features`` reconstruction of the (spatially coherent) image features
        from the fused embedding, so that it keeps what only the image tells;
        ``w_image_view``
        agreement of two augmented views of each patch; ``w_contrast`` cross-modal
        InfoNCE (off by default: aligning the gene stream to image features that carry little
        of the expression's structure lowered the ARI, measurements: benchmarks/README.md,
        section "Why the defaults are what they are", "[model] w_contrast"; raise it
        when the image is known to be informative) at temperature ``temperature`` with
        ``n_negatives`` sampled negatives and
        spatial neighbours as extra positives of relative weight ``neighbour_positive_weight``;
        ``w_dec`` DEC-style region loss (Student-t with ``dec_alpha``; sharpened targets
        divided by cluster size to the power ``dec_balance``, 1 = DEC; targets refreshed
        every ``dec_update_interval`` epochs; centres from ``dec_init``) over
        ``n_clusters`` regions (when ``None``, chosen over ``n_clusters_range``, the same range
        as :func:`senca.tl.cluster`'s, by :func:`senca.clustering.select_k`).
    Schedule
        ``epochs_warmup`` (stage 1, branches), ``epochs_shared`` (stage 2, shared
        encoder), ``epochs_regions`` (stage 3, regions), each counted in optimisation
        steps: one step is one pass over a section that fits one batch, and one contiguous
        block of spots (with its halo) on a larger one, so the schedule costs about the same
        at any size; ``lr``, ``weight_decay``;
        ``batch_size`` seed spots per mini-batch (full batch when ``None`` and the
        section has at most ``full_batch_max_spots`` spots; else blocks of 4096); ``seed``; ``num_threads``
        intra-op CPU threads while training / embedding (``None``: torch's setting). One
        thread is the default because the graph operations are small, and more threads were
        slower on a shared machine, ResNet included (measurements: benchmarks/README.md,
        section "Why the defaults are what they are", "[model] num_threads"); raise it on
        an idle many-core machine. ``image_num_threads`` intra-op threads of the ResNet's
        feature pass over the patches (``None``: every core this process may run on):
        convolutions keep the cores busy, and in eval mode they give the same features at any
        thread count; the pipeline gives each restart process its share of the cores when
        restarts train in parallel.
    Ablations (each a different code path)
        ``use_image`` (False: gene branch only); ``use_graph`` (False: MLP instead of the
        graph transformer); ``cross_attention`` (False: concatenate the branch outputs);
        ``shared_encoder`` (False: one cross-attention block per direction);
        ``hierarchical`` (False: spot-level losses only, one stage);
        ``vanilla_contrastive`` (ConGI-like: cross-modal InfoNCE only, one stage).

    :meth:`to_dict` omits ``None`` values so the result can be written as TOML.
    """

    hidden_dim: int = 64
    latent_dim: int = 32
    gt_layers: int = 2
    gt_heads: int = 4
    ca_heads: int = 4
    dropout: float = 0.0
    fusion: str = "gate"
    gate_gene_prior: float = 0.0

    image_backbone: str = "resnet18"
    image_weights: str | None = None
    image_batch_size: int = 64
    epochs_image: int = 0
    freeze_image_after_warmup: bool = True
    aug_crop_scale: float = 0.8
    aug_jitter: float = 0.05

    n_input_pcs: int | None = None
    coherence_z: float | None = 3.0
    target_smoothing_hops: int = 1
    w_recon: float = 1.0
    w_recon_fused: float = 1.0
    w_recon_image: float = 1.0
    w_recon_image_features: float = 1.0
    w_image_view: float = 1.0
    w_contrast: float = 0.0
    temperature: float = 0.5
    n_negatives: int = 256
    neighbour_positive_weight: float = 0.5
    w_dec: float = 0.1
    dec_alpha: float = 1.0
    dec_balance: float = 0.5
    dec_update_interval: int = 5
    dec_init: str = "gmm"
    n_clusters: int | None = None
    n_clusters_range: tuple[int, int] = K_RANGE

    epochs_warmup: int = 60
    epochs_shared: int = 200
    epochs_regions: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int | None = None
    full_batch_max_spots: int = 5000
    seed: int = 0
    num_threads: int | None = 1
    image_num_threads: int | None = None

    use_image: bool = True
    use_graph: bool = True
    cross_attention: bool = True
    shared_encoder: bool = True
    hierarchical: bool = True
    vanilla_contrastive: bool = False

    def __post_init__(self) -> None:
        self.n_clusters_range = tuple(self.n_clusters_range)
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise SencaInputError(f"SencaConfig.{name}={getattr(self, name)!r}: expected one of {allowed}")
        for name in ("hidden_dim", "latent_dim", "gt_layers", "gt_heads", "ca_heads", "image_batch_size", "n_negatives"):
            if getattr(self, name) < 1:
                raise SencaInputError(f"SencaConfig.{name}={getattr(self, name)!r}: expected a positive integer")
        for name in ("epochs_warmup", "epochs_shared", "epochs_regions", "epochs_image", "dec_update_interval", "target_smoothing_hops"):
            if getattr(self, name) < 0:
                raise SencaInputError(f"SencaConfig.{name}={getattr(self, name)!r}: expected >= 0")
        if self.latent_dim % self.ca_heads or self.hidden_dim % self.gt_heads:
            raise SencaInputError(
                "SencaConfig: latent_dim must be divisible by ca_heads and hidden_dim by gt_heads "
                f"(got {self.latent_dim}/{self.ca_heads}, {self.hidden_dim}/{self.gt_heads})"
            )
        if self.n_clusters is not None and self.n_clusters < 2:
            raise SencaInputError(f"SencaConfig.n_clusters={self.n_clusters}: expected >= 2 or None")
        if self.n_input_pcs is not None and self.n_input_pcs < 2:
            raise SencaInputError(f"SencaConfig.n_input_pcs={self.n_input_pcs}: expected >= 2 or None")
        if self.coherence_z is not None and self.coherence_z < 0:
            raise SencaInputError(f"SencaConfig.coherence_z={self.coherence_z}: expected >= 0 or None")
        for name in ("num_threads", "image_num_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SencaInputError(f"SencaConfig.{name}={getattr(self, name)}: expected >= 1 or None")
        if self.batch_size is not None and self.batch_size < 1:
            raise SencaInputError(f"SencaConfig.batch_size={self.batch_size}: expected >= 1 or None")
        if not 0 < self.aug_crop_scale <= 1:
            raise SencaInputError(f"SencaConfig.aug_crop_scale={self.aug_crop_scale}: expected in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the settings, ``None`` values left out (TOML has no null)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SencaConfig:
        """Build a config from :meth:`to_dict` output (missing keys take their defaults).

        Raises
        ------
        SencaInputError
            An unknown key.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SencaInputError(f"SENCA config: unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def replace(self, **changes: Any) -> SencaConfig:
        """Copy with some settings changed (validated like the constructor)."""
        return dataclasses.replace(self, **changes)
