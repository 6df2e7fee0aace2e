"""Edge-list operations on ``(2, E)`` ``edge_index`` tensors, in plain PyTorch.

Row 0 of ``edge_index`` holds the source (neighbour ``j``), row 1 the target (spot ``i``), as in
PyTorch Geometric. The model needs only these few operations; written here they spare every run,
and every restart process, the import of a graph library (seconds per process).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["add_self_loops", "edge_attention", "edge_index_to_scipy", "remove_self_loops", "scatter_sum", "segment_softmax", "to_undirected"]


def _broadcast(index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``index`` (one entry per row of ``src``) expanded to the shape of ``src``, as scatter wants it."""
    return index.view((-1,) + (1,) * (src.dim() - 1)).expand_as(src)


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum the rows of ``src`` into ``dim_size`` rows by ``index`` (row ``e`` goes to ``index[e]``)."""
    return src.new_zeros((dim_size,) + tuple(src.shape[1:])).scatter_add_(0, _broadcast(index, src), src)


def segment_softmax(src: torch.Tensor, index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Softmax of ``src`` (one score per edge, any trailing shape) over the edges of each target.

    The per-target maximum is subtracted first (numerical stability); a target without edges
    gets none.
    """
    exp, total = _softmax_terms(src, index, num_nodes)
    return exp / total


def _softmax_terms(src: torch.Tensor, index: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator and denominator of :func:`segment_softmax`, the denominator gathered back to the edges."""
    size = (num_nodes,) + tuple(src.shape[1:])
    src_max = src.new_zeros(size).scatter_reduce_(0, _broadcast(index, src), src.detach(), reduce="amax",
                                                  include_self=False)
    exp = (src - src_max.index_select(0, index)).exp()
    return exp, (scatter_sum(exp, index, num_nodes) + 1e-16).index_select(0, index)


def remove_self_loops(edge_index: torch.Tensor) -> torch.Tensor:
    """``edge_index`` without its edges ``(i, i)``."""
    return edge_index[:, edge_index[0] != edge_index[1]]


def add_self_loops(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``edge_index`` with exactly one self loop per node: its other edges in their order, then ``(i, i)`` for every ``i``."""
    loops = torch.arange(num_nodes, dtype=edge_index.dtype, device=edge_index.device)
    return torch.cat([remove_self_loops(edge_index), torch.stack([loops, loops])], dim=1)


def to_undirected(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Both directions of every edge, each once, sorted by source then target."""
    row = torch.cat([edge_index[0], edge_index[1]])
    col = torch.cat([edge_index[1], edge_index[0]])
    key = torch.unique(row * num_nodes + col, sorted=True)
    return torch.stack([key // num_nodes, key % num_nodes])


def edge_index_to_scipy(edge_index: torch.Tensor, num_nodes: int) -> sp.coo_matrix:
    """``num_nodes x num_nodes`` sparse matrix with a 1 at ``(source, target)`` of every edge."""
    row, col = edge_index.cpu().numpy()
    return sp.coo_matrix((np.ones(row.shape[0], dtype=np.float32), (row, col)), shape=(num_nodes, num_nodes))


# Edges per chunk of the fused attention: a chunk's (edges, heads, channels) tensors stay in the
# CPU cache (about 1 MB each at 64 channels) instead of streaming through memory.
_ATTENTION_CHUNK = 4096


class _EdgeAttention(torch.autograd.Function):
    """Forward and backward of :func:`edge_attention`, chunked over the edges.

    Autograd would keep every per-edge tensor (gathered queries, keys and values, their
    products) for the backward pass: several ``(edges, heads, channels)`` arrays per layer,
    written out and read back from memory, which made a training step memory-bound. Here only
    the per-node inputs and the ``(edges, heads)`` softmax terms are kept; the per-edge
    products are formed chunk by chunk, in cache, in both passes. Both passes do autograd's
    arithmetic on the plain composition in the same order (the backward formulas of each
    operation as torch defines them), so values and gradients are the same to the bit and
    training follows the same path.
    """

    @staticmethod
    def forward(ctx, query, key, value, src, dst):
        n, _, channels = query.shape
        scale = math.sqrt(channels)
        scores = query.new_empty(src.shape[0], query.shape[1])
        for s, d, out in zip(src.split(_ATTENTION_CHUNK), dst.split(_ATTENTION_CHUNK), scores.split(_ATTENTION_CHUNK)):
            torch.div((query.index_select(0, d) * key.index_select(0, s)).sum(-1), scale, out=out)
        exp, total = _softmax_terms(scores, dst, n)  # segment_softmax, keeping what its backward pass needs
        alpha = exp / total
        result = query.new_zeros(query.shape)
        for s, d, a in zip(src.split(_ATTENTION_CHUNK), dst.split(_ATTENTION_CHUNK), alpha.split(_ATTENTION_CHUNK)):
            result.index_add_(0, d, value.index_select(0, s) * a.unsqueeze(-1))
        ctx.save_for_backward(query, key, value, src, dst, exp, total, alpha)
        return result

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, src, dst, exp, total, alpha = ctx.saved_tensors
        n, _, channels = query.shape
        grad_out = grad_out.contiguous()
        chunks = list(zip(src.split(_ATTENTION_CHUNK), dst.split(_ATTENTION_CHUNK)))
        grad_value = torch.zeros_like(value)
        grad_alpha = torch.empty_like(alpha)
        for (s, d), a, g_a in zip(chunks, alpha.split(_ATTENTION_CHUNK), grad_alpha.split(_ATTENTION_CHUNK)):
            g = grad_out.index_select(0, d)
            torch.sum(g * value.index_select(0, s), -1, out=g_a)
            grad_value.index_add_(0, s, g * a.unsqueeze(-1))
        # alpha = exp / total, total = (sum of exp over the target) gathered back to the edges;
        # autograd's divisor gradient recomputes exp / total, which is alpha to the bit.
        grad_total = -grad_alpha * (alpha / total)
        grad_exp = grad_alpha / total + exp.new_zeros(n, exp.shape[1]).index_add_(0, dst, grad_total).index_select(0, dst)
        grad_scores = (grad_exp * exp) / math.sqrt(channels)
        grad_query = torch.zeros_like(query)
        grad_key = torch.zeros_like(key)
        for (s, d), g_s in zip(chunks, grad_scores.split(_ATTENTION_CHUNK)):
            g_s = g_s.unsqueeze(-1)
            grad_query.index_add_(0, d, g_s * key.index_select(0, s))
            grad_key.index_add_(0, s, g_s * query.index_select(0, d))
        return grad_query, grad_key, grad_value, None, None


def edge_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Multi-head dot-product attention of each target over its edges.

    ``out_i = sum_{e: dst_e = i} softmax_e(q_i . k_{src_e} / sqrt(c)) v_{src_e}``, the softmax
    over the edges of each target (a target without edges gets zeros). Works like the plain
    composition of gathers, :func:`segment_softmax` and :func:`scatter_sum`, but never holds
    per-edge feature arrays: O(nodes x heads x c + edges x heads) memory, and far less memory
    traffic, which is what bounds a CPU training step.

    Parameters
    ----------
    query
        ``(n, heads, c)`` one query per target.
    key, value
        ``(t, heads, c)`` one key and value per source token.
    src, dst
        ``(E,)`` source token and target of every edge.

    Returns
    -------
    ``(n, heads, c)``.
    """
    return _EdgeAttention.apply(query.contiguous(), key.contiguous(), value.contiguous(), src, dst)
