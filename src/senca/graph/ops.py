"""Edge-list operations on ``(2, E)`` ``edge_index`` tensors, in plain PyTorch.

Row 0 of ``edge_index`` holds the source (neighbour ``j``), row 1 the target (spot ``i``), as in
PyTorch Geometric. The model needs only these few operations; written here they spare every run,
and every restart process, the import of a graph library (seconds per process).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["add_self_loops", "edge_index_to_scipy", "remove_self_loops", "scatter_sum", "segment_softmax", "to_undirected"]


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
    size = (num_nodes,) + tuple(src.shape[1:])
    src_max = src.new_zeros(size).scatter_reduce_(0, _broadcast(index, src), src.detach(), reduce="amax",
                                                  include_self=False)
    out = (src - src_max.index_select(0, index)).exp()
    out_sum = scatter_sum(out, index, num_nodes) + 1e-16
    return out / out_sum.index_select(0, index)


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
