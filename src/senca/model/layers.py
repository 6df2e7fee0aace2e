"""Layers of SENCA-st, all O(spots + edges) in memory.

- :class:`GraphAttentionConv` multi-head dot-product attention of each spot over its neighbours.
- :class:`GraphTransformer` ST branch (layers of :class:`GraphAttentionConv`, residual).
- :class:`MLPEncoder` the "no graph" ablation of the ST branch.
- :class:`NeighbourhoodCrossAttention` sparse cross-attention of one modality over the other
  modality's features on each spot's neighbourhood N(i) + {i}.
- :class:`SharedEncoderBlock` cross-attention + FFN, residual, LayerNorm; one instance serves
  both directions (gene <- image, image <- gene).
- :class:`GatedFusion` learned per-dimension gate between ``z_g`` and ``z_i``.
- :func:`masked_norm_linear` a LayerNorm and a linear layer over features of which only some
  columns are read, at the cost of those columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from senca.graph.ops import add_self_loops, edge_attention

__all__ = ["GraphAttentionConv", "GraphTransformer", "MLPEncoder", "NeighbourhoodCrossAttention", "SharedEncoderBlock", "GatedFusion",
           "masked_norm_linear"]


class GraphAttentionConv(nn.Module):
    """Graph transformer convolution (Shi et al. 2021; PyTorch Geometric's ``TransformerConv``).

    ``out_i = W_skip x_i + concat_h sum_{j in N(i)} softmax_j(q_i . k_j / sqrt(c)) v_j`` with
    ``q = W_query x``, ``k = W_key x``, ``v = W_value x`` split into ``heads`` heads of ``c``
    channels. Scores are computed per edge and normalised per target spot: O(edges) memory.
    Parameter names and initialisation follow ``TransformerConv`` (concatenated heads, root
    weight, no edge features).

    Parameters
    ----------
    in_dim
        Input features per spot.
    head_dim
        Channels ``c`` per head; the output has ``heads * head_dim``.
    heads
        Attention heads.
    """

    def __init__(self, in_dim: int, head_dim: int, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        width = heads * head_dim
        self.lin_key = nn.Linear(in_dim, width)
        self.lin_query = nn.Linear(in_dim, width)
        self.lin_value = nn.Linear(in_dim, width)
        self.lin_skip = nn.Linear(in_dim, width)
        # Initialised a second time, in this order, as TransformerConv does: the same seed
        # gives the same weights as the PyTorch Geometric layer.
        for linear in (self.lin_key, self.lin_query, self.lin_value, self.lin_skip):
            linear.reset_parameters()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        query = self.lin_query(x).view(-1, self.heads, self.head_dim)
        key = self.lin_key(x).view(-1, self.heads, self.head_dim)
        value = self.lin_value(x).view(-1, self.heads, self.head_dim)
        out = edge_attention(query, key, value, edge_index[0], edge_index[1])
        return out.view(-1, self.heads * self.head_dim) + self.lin_skip(x)


class GraphTransformer(nn.Module):
    """Graph transformer over a spatial graph (pre-LayerNorm residual layers).

    ``h = h + Dropout(GELU(TransformerConv(LN(h))))`` repeated ``n_layers`` times after an
    input projection, then a linear projection to ``out_dim``. The residual stream is never
    normalised itself, so a spot's distance from the section mean (how strongly it expresses
    a programme) survives into the output; a final LayerNorm would put every spot on a
    sphere and scatter weak-signal spots across it.

    Parameters
    ----------
    in_dim
        Input features per spot (e.g. number of PCs).
    hidden_dim
        Width of the attention layers (split over ``heads``).
    out_dim
        Output size.
    n_layers
        Number of attention layers (= hops of context).
    heads
        Attention heads per layer.
    dropout
        Dropout on the input and after each layer.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, n_layers: int = 2, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.input = nn.Linear(in_dim, hidden_dim)
        self.convs = nn.ModuleList(
            GraphAttentionConv(hidden_dim, hidden_dim // heads, heads) for _ in range(n_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(n_layers))
        self.output = nn.Linear(hidden_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = self.input(self.dropout(x))
        for conv, norm in zip(self.convs, self.norms):
            h = h + self.dropout(self.act(conv(norm(h), edge_index)))
        return self.output(h)


class MLPEncoder(nn.Module):
    """The "no graph" ablation: same shape as :class:`GraphTransformer`, no message passing."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, n_layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.input = nn.Linear(in_dim, hidden_dim)
        self.layers = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(n_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(n_layers))
        self.output = nn.Linear(hidden_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor | None = None) -> torch.Tensor:
        h = self.input(self.dropout(x))
        for layer, norm in zip(self.layers, self.norms):
            h = h + self.dropout(self.act(layer(norm(h))))
        return self.output(h)


class NeighbourhoodCrossAttention(nn.Module):
    """Multi-head attention of ``query`` spots over ``key_value`` features of their neighbourhood.

    For every spot ``i`` the attention runs over ``j in N(i) + {i}`` only: scores are computed
    per edge and normalised per target spot (:func:`senca.graph.ops.edge_attention`). Memory
    is O(spots x dim + edges x heads); no spots x spots matrix is formed.

    Parameters
    ----------
    dim
        Feature size of both inputs and of the output.
    heads
        Attention heads (``dim`` must be divisible by ``heads``).
    """

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, query: torch.Tensor, key_value: torch.Tensor | Sequence[torch.Tensor], edge_index: torch.Tensor
    ) -> torch.Tensor:
        """Attend.

        Parameters
        ----------
        query
            ``(n, dim)`` features of the attending modality.
        key_value
            ``(n, dim)`` features of the attended modality, or several such tensors: then each
            neighbour contributes one token per tensor and one softmax runs over all of them.
        edge_index
            ``(2, E)`` spatial graph, row 0 the neighbour ``j`` (source), row 1 the spot ``i``
            (target); self loops are added here so that ``i`` also sees its own features.

        Returns
        -------
        ``(n, dim)`` attention output per spot.
        """
        n = query.shape[0]
        tokens = torch.cat(list(key_value)) if isinstance(key_value, (list, tuple)) else key_value
        edge_index = add_self_loops(edge_index, n)
        # Token t of spot j sits at row t * n + j of ``tokens``.
        src = torch.cat([edge_index[0] + t * n for t in range(tokens.shape[0] // n)])
        dst = edge_index[1].repeat(tokens.shape[0] // n)
        q = self.q(query).view(n, self.heads, self.head_dim)
        k = self.k(tokens).view(-1, self.heads, self.head_dim)
        v = self.v(tokens).view(-1, self.heads, self.head_dim)
        return self.out(edge_attention(q, k, v, src, dst).reshape(n, -1))


class SharedEncoderBlock(nn.Module):
    """Pre-LayerNorm transformer block: neighbourhood cross-attention, then FFN, each residual.

    ``h = query + attn(LN_q(query), LN_kv(key_value)); z = h + FFN(LN(h))``. SENCA applies ONE
    instance in both directions, so gene <- image and image <- gene share every weight. The
    LayerNorms sit on the branch inputs (which also puts the two modalities on one scale);
    the residual stream stays unnormalised, as in :class:`GraphTransformer`.
    """

    def __init__(self, dim: int, hidden_dim: int, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.attn = NeighbourhoodCrossAttention(dim, heads)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, dim))
        self.norm_ffn = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, query: torch.Tensor, key_value: torch.Tensor | Sequence[torch.Tensor], edge_index: torch.Tensor
    ) -> torch.Tensor:
        kv = [self.norm_kv(t) for t in key_value] if isinstance(key_value, (list, tuple)) else self.norm_kv(key_value)
        h = query + self.dropout(self.attn(self.norm_q(query), kv, edge_index))
        return h + self.dropout(self.ffn(self.norm_ffn(h)))


class GatedFusion(nn.Module):
    """``z = g * z_g + (1 - g) * z_i`` with ``g = sigmoid(W [z_g, z_i] + b)`` per dimension.

    ``gene_prior`` initialises ``b`` so that training starts at ``g = sigmoid(gene_prior)``;
    the image then gains weight only where it helps the losses.
    """

    def __init__(self, dim: int, gene_prior: float = 0.0):
        super().__init__()
        self.gate = nn.Linear(2 * dim, dim)
        nn.init.constant_(self.gate.bias, gene_prior)

    def forward(self, z_g: torch.Tensor, z_i: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([z_g, z_i], dim=-1)))
        return g * z_g + (1 - g) * z_i


def masked_norm_linear(features: torch.Tensor, columns: torch.Tensor, norm: nn.LayerNorm, linear: nn.Linear) -> torch.Tensor:
    """``linear(norm(features * mask))``, where ``mask`` zeroes every column but ``columns``, read from ``columns`` alone.

    The zeroed columns still count in the LayerNorm: as zeros in its mean and variance, and
    through its affine output ``beta_j - mean * gamma_j / std``, which the linear layer sums in
    closed form. So the function and its gradients are those of the masked layers, but a call
    costs in proportion to the columns read (the image stream reads the spatially coherent
    third of its texture features).

    Parameters
    ----------
    features
        ``(n, d)`` input; the columns outside ``columns`` are ignored (read as zero).
    columns
        Indices of the columns read.
    norm, linear
        A ``LayerNorm(d)`` with affine parameters and a ``Linear(d, out)``.

    Returns
    -------
    ``(n, out)``.
    """
    d = features.shape[-1]
    x = features.index_select(-1, columns)
    mean = x.sum(-1, keepdim=True) / d
    var = (x.pow(2).sum(-1, keepdim=True) / d - mean.pow(2)).clamp(min=0)
    scaled_weight = linear.weight * norm.weight  # (out, d): the linear layer after the norm's scale
    out = (x @ scaled_weight.index_select(1, columns).T - mean * scaled_weight.sum(1)) * torch.rsqrt(var + norm.eps)
    return out + linear.weight @ norm.bias + linear.bias
