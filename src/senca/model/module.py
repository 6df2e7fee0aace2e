"""The SENCA-st network: ST branch, image branch, shared encoder, fusion, decoders, DEC head."""

from __future__ import annotations

import torch
from torch import nn

from senca.model._config import SencaConfig
from senca.model.layers import GatedFusion, GraphTransformer, MLPEncoder, SharedEncoderBlock, masked_norm_linear
from senca.model.resnet import build_resnet, load_image_weights
from senca.training.losses import student_t_assignment

__all__ = ["SencaModule"]

IMAGE_MODES = ("none", "resnet", "features")


class SencaModule(nn.Module):
    """SENCA-st as one :class:`torch.nn.Module`.

    Parameters
    ----------
    n_input
        ST input features per spot (PCs).
    config
        Architecture and ablation settings.
    image_mode
        ``"none"`` (no image), ``"resnet"`` (patches through a ResNet) or ``"features"``
        (precomputed per-spot image features).
    image_feature_dim
        Size of the precomputed image features (``image_mode="features"`` only).

    Notes
    -----
    :meth:`forward` returns ``h_g`` / ``h_i`` (branch outputs), ``z_g`` / ``z_i`` (shared
    space) and ``embedding`` (their fusion, ``X_senca``). Without an image, the shared block
    runs gene <- gene over the neighbourhood, and the embedding is ``z_g``.
    """

    def __init__(self, n_input: int, config: SencaConfig, image_mode: str = "none", image_feature_dim: int | None = None):
        super().__init__()
        if image_mode not in IMAGE_MODES:
            raise ValueError(f"image_mode must be one of {IMAGE_MODES}")
        self.config = config
        self.image_mode = image_mode
        d, hidden = config.latent_dim, config.hidden_dim
        if config.use_graph:
            self.gene_encoder = GraphTransformer(n_input, hidden, d, config.gt_layers, config.gt_heads, config.dropout)
        else:
            self.gene_encoder = MLPEncoder(n_input, hidden, d, config.gt_layers, config.dropout)

        self.resnet = None
        if image_mode == "resnet":
            self.resnet = build_resnet(config.image_backbone)
            if config.image_weights is not None:
                load_image_weights(self.resnet, config.image_weights)
            image_feature_dim = self.resnet.texture_dim
            # Per-feature standardisation of the texture statistics over the section's spots,
            # set when the ResNet is frozen (identity until then); saved with the weights.
            self.register_buffer("image_mean", torch.zeros(image_feature_dim))
            self.register_buffer("image_std", torch.ones(image_feature_dim))
            # SimCLR projection head, used only by the view-agreement loss.
            self.view_head = nn.Sequential(nn.Linear(image_feature_dim, hidden), nn.GELU(), nn.Linear(hidden, d))
        if image_mode != "none":
            # 1 for the image features the model reads, 0 for the others; set from the
            # section's spatial coherence by the trainer (all read until then).
            self.register_buffer("image_keep", torch.ones(image_feature_dim))
            self.image_proj = nn.Sequential(
                nn.LayerNorm(image_feature_dim),
                nn.Linear(image_feature_dim, hidden),
                nn.GELU(),
                nn.Dropout(config.dropout),
                nn.Linear(hidden, d),
                nn.LayerNorm(d),
            )
        self.image_feature_dim = image_feature_dim

        if config.cross_attention:
            self.shared = SharedEncoderBlock(d, hidden, config.ca_heads, config.dropout)
            if not config.shared_encoder and image_mode != "none":
                self.image_block = SharedEncoderBlock(d, hidden, config.ca_heads, config.dropout)

        has_image = image_mode != "none"
        if has_image and config.fusion == "gate":
            self.fusion = GatedFusion(d, config.gate_gene_prior)
            self.embedding_dim = d
        else:
            self.embedding_dim = 2 * d if has_image else d
        self.gene_decoder = nn.Linear(d, n_input)
        self.fused_decoder = nn.Linear(self.embedding_dim, n_input)
        if has_image:
            self.image_decoder = nn.Linear(self.embedding_dim, image_feature_dim)

        # DEC centres live in the centred embedding space, rescaled by one global factor.
        self.register_buffer("emb_mean", torch.zeros(self.embedding_dim))
        self.register_buffer("emb_std", torch.ones(self.embedding_dim))
        self.centres: nn.Parameter | None = None

    @property
    def num_hops(self) -> int:
        """Graph hops that influence one spot's embedding (receptive field)."""
        return (self.config.gt_layers if self.config.use_graph else 0) + (1 if self.config.cross_attention else 0)

    @property
    def has_image(self) -> bool:
        return self.image_mode != "none"

    def image_backbone_features(self, patches: torch.Tensor) -> torch.Tensor:
        """ResNet texture statistics of normalised float patches ``(B, 3, P, P)``, standardised.

        Mean and standard deviation of every stage's feature maps
        (:meth:`~senca.model.resnet.ResNet.forward_texture`), not only the globally pooled last
        stage: the statistics describe tissue texture and stain even for a randomly
        initialised or briefly trained ResNet, and the early stages keep the fine detail of a
        small patch. The standardisation is the one set by :meth:`fit_image_standardisation`.
        """
        return (self.resnet.forward_texture(patches) - self.image_mean) / self.image_std

    @torch.no_grad()
    def fit_image_standardisation(self, features: torch.Tensor) -> torch.Tensor:
        """Standardise the image features over the spots and keep the scaling for later calls.

        Each feature is standardised, then each level of the texture pyramid (pixels, stem,
        ``layer1`` ... ``layer4``) is scaled by ``1 / sqrt(its size)`` so that every level has
        the same total variance: otherwise the six stain statistics of the pixels would be
        drowned by the 1024 of ``layer4``, though stain is often what tells tissues apart.

        Parameters
        ----------
        features
            :meth:`image_backbone_features` of every spot (under the current scaling).

        Returns
        -------
        ``features`` rescaled. Features that hardly vary (e.g. the standard deviation of a
        stage one pixel wide) are only centred, so noise is not blown up.
        """
        features = features * self.image_std + self.image_mean
        mean = features.mean(0)
        std = features.std(0)
        std = torch.where(std > 1e-3 * std.max().clamp(min=1e-12), std, torch.ones_like(std))
        level_size = torch.repeat_interleave(
            torch.tensor(self.resnet.texture_levels, dtype=std.dtype, device=std.device),
            torch.tensor(self.resnet.texture_levels, device=std.device),
        )
        std = std * level_size.sqrt()
        self.image_mean.copy_(mean)
        self.image_std.copy_(std)
        return (features - mean) / std

    def view_projection(self, features: torch.Tensor) -> torch.Tensor:
        """SimCLR projection of pooled ResNet features."""
        return self.view_head(features)

    def project_image(self, image_features: torch.Tensor) -> torch.Tensor:
        """Image branch output ``h_i`` from the features ``image_keep`` marks (the others read as zero)."""
        columns = torch.nonzero(self.image_keep).squeeze(1)
        if columns.numel() == self.image_feature_dim:
            return self.image_proj(image_features)
        norm, linear, *rest = self.image_proj
        h = masked_norm_linear(image_features, columns, norm, linear)
        for layer in rest:
            h = layer(h)
        return h

    def encode_gene(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """ST branch output ``h_g``."""
        return self.gene_encoder(x, edge_index)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, image_features: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Encode a (sub)graph.

        Parameters
        ----------
        x
            ``(n, n_input)`` ST input.
        edge_index
            ``(2, E)`` spatial graph without self loops.
        image_features
            ``(n, f)`` pooled ResNet features or precomputed image features; required when
            the module has an image branch.
        """
        h_g = self.encode_gene(x, edge_index)
        out = {"h_g": h_g}
        if not self.has_image:
            z_g = self.shared(h_g, h_g, edge_index) if self.config.cross_attention else h_g
            out.update(z_g=z_g, embedding=z_g)
            return out
        h_i = self.project_image(image_features)
        if self.config.cross_attention:
            image_block = self.shared if self.config.shared_encoder else self.image_block
            # Each stream attends over the other modality of the neighbourhood and over its own:
            # where the image says nothing about a region, the gene stream still pools the
            # neighbours' expression (as without an image) instead of pooling image noise.
            z_g = self.shared(h_g, (h_i, h_g), edge_index)  # gene <- image (+ gene) of the neighbourhood
            z_i = image_block(h_i, (h_g, h_i), edge_index)  # image <- gene (+ image) of the neighbourhood
        else:
            z_g, z_i = h_g, h_i
        fused = self.fusion(z_g, z_i) if hasattr(self, "fusion") else torch.cat([z_g, z_i], dim=-1)
        out.update(h_i=h_i, z_g=z_g, z_i=z_i, embedding=fused)
        return out

    def init_centres(self, centres: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set DEC centres (in the centred, globally rescaled embedding space) and that rescaling."""
        self.emb_mean.copy_(mean)
        self.emb_std.copy_(std)
        self.centres = nn.Parameter(centres.clone().to(self.emb_mean.device))

    def standardise(self, embedding: torch.Tensor) -> torch.Tensor:
        return (embedding - self.emb_mean) / self.emb_std

    def soft_assignment(self, embedding: torch.Tensor) -> torch.Tensor:
        """DEC soft assignment of spots to the region centres."""
        return student_t_assignment(self.standardise(embedding), self.centres, self.config.dec_alpha)
