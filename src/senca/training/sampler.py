"""Mini-batches over spatial subgraphs: a contiguous block of seed spots + its k-hop halo.

Losses are computed on the seeds only; the halo of k hops (k = the number of message-passing
layers in front of the loss) makes each seed's output exact. Seeds of one batch are a
spatially contiguous block (consecutive spots along a Z-order curve of their coordinates), so
the halo is only the block's rim: nodes per batch stay within a small factor of the seeds,
whatever the section's size. Randomly chosen seeds would instead pull in the multi-hop
neighbourhoods of spots all over the section.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SubgraphBatch", "SubgraphSampler", "z_order"]

# Bits per axis of the Z-order key: 2^16 cells per axis resolve any section's spot grid.
_MORTON_BITS = 16


@dataclass
class SubgraphBatch:
    """One mini-batch.

    Attributes
    ----------
    nodes
        Global indices of the subgraph's spots (seeds first is NOT guaranteed).
    edge_index
        ``(2, E_sub)`` edges among ``nodes``, relabelled to ``0..len(nodes)-1``.
    seeds
        Local indices (into ``nodes``) of the seed spots that carry the loss.
    whole
        The batch is the whole section in order (``nodes`` and ``seeds`` are ``0..n-1``), so
        indexing a per-spot tensor by them would only copy it.
    """

    nodes: torch.Tensor
    edge_index: torch.Tensor
    seeds: torch.Tensor
    whole: bool = False

    def rows(self, values: torch.Tensor, local: bool = False) -> torch.Tensor:
        """The rows of a per-spot tensor for this batch's seeds: of the section's ``values`` by
        global index, or (``local``) of a tensor over the batch's ``nodes``."""
        if self.whole:
            return values
        return values[self.seeds] if local else values[self.nodes[self.seeds]]


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """Insert a zero bit between the low 16 bits of each value (Morton encoding of one axis)."""
    v = v.astype(np.uint64) & np.uint64(0xFFFF)
    for shift, mask in ((8, 0x00FF00FF), (4, 0x0F0F0F0F), (2, 0x33333333), (1, 0x55555555)):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def z_order(coordinates: np.ndarray) -> np.ndarray:
    """Spot order along a Z-order (Morton) curve: consecutive spots are spatial neighbours.

    Parameters
    ----------
    coordinates
        ``(n, 2)`` spot positions.

    Returns
    -------
    A permutation of ``0..n-1``; any run of consecutive entries covers a compact patch of tissue.
    """
    xy = np.asarray(coordinates, dtype=np.float64)[:, :2]
    lo, span = xy.min(axis=0), np.ptp(xy, axis=0)
    scale = (2**_MORTON_BITS - 1) / np.where(span > 0, span, 1.0)
    cells = np.floor((xy - lo) * scale).astype(np.int64)
    key = _spread_bits(cells[:, 0]) | (_spread_bits(cells[:, 1]) << np.uint64(1))
    return np.argsort(key, kind="stable")


class SubgraphSampler:
    """Split the spots into contiguous seed blocks and return each with its k-hop halo.

    Parameters
    ----------
    edge_index
        ``(2, E)`` spatial graph (both directions).
    n_nodes
        Number of spots.
    num_hops
        Receptive field of the model in graph hops.
    batch_size
        Seed spots per batch; ``None`` or ``>= n_nodes`` gives one full-graph batch.
    coordinates
        ``(n_nodes, 2)`` spot positions that order the seeds into contiguous blocks; without
        them the graph's own breadth-first order is used.
    """

    def __init__(self, edge_index: torch.Tensor, n_nodes: int, num_hops: int, batch_size: int | None = None,
                 coordinates: np.ndarray | None = None):
        self.edge_index = edge_index
        self.n_nodes = n_nodes
        self.num_hops = num_hops
        self.batch_size = n_nodes if batch_size is None else min(batch_size, n_nodes)
        src = edge_index[0].numpy()
        order = np.argsort(src, kind="stable")
        self._neighbours = edge_index[1].numpy()[order]
        self._rowptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n_nodes))])
        self._order = z_order(coordinates) if coordinates is not None else self._breadth_first_order()

    @property
    def full_batch(self) -> bool:
        return self.batch_size >= self.n_nodes

    def __len__(self) -> int:
        return -(-self.n_nodes // self.batch_size)

    def _breadth_first_order(self) -> np.ndarray:
        import scipy.sparse as sp
        from scipy.sparse.csgraph import reverse_cuthill_mckee

        graph = sp.csr_matrix((np.ones(self._neighbours.size), self._neighbours, self._rowptr),
                              shape=(self.n_nodes, self.n_nodes))
        return np.asarray(reverse_cuthill_mckee(graph, symmetric_mode=True))

    def _neighbours_of(self, nodes: np.ndarray) -> np.ndarray:
        starts, ends = self._rowptr[nodes], self._rowptr[nodes + 1]
        counts = ends - starts
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        return self._neighbours[offsets + np.arange(counts.sum())]

    def subgraph(self, seeds: torch.Tensor) -> SubgraphBatch:
        """The k-hop subgraph around global ``seeds``: O(edges of the subgraph), not of the section."""
        if self.full_batch and seeds.numel() == self.n_nodes:
            nodes = torch.arange(self.n_nodes)
            return SubgraphBatch(nodes, self.edge_index, seeds, whole=torch.equal(seeds, nodes))
        seed_array = seeds.numpy()
        inside = np.zeros(self.n_nodes, dtype=bool)
        inside[seed_array] = True
        frontier = seed_array
        for _ in range(self.num_hops):
            reached = np.unique(self._neighbours_of(frontier))
            frontier = reached[~inside[reached]]
            inside[frontier] = True
        nodes = np.flatnonzero(inside)
        local = np.full(self.n_nodes, -1, dtype=np.int64)
        local[nodes] = np.arange(nodes.size)
        src = np.repeat(nodes, self._rowptr[nodes + 1] - self._rowptr[nodes])
        dst = self._neighbours_of(nodes)
        keep = inside[dst]
        edge_index = torch.from_numpy(np.vstack([local[src[keep]], local[dst[keep]]]))
        return SubgraphBatch(torch.from_numpy(nodes), edge_index, torch.from_numpy(local[seed_array]))

    def batches(self, rng: np.random.Generator | None = None) -> Iterator[SubgraphBatch]:
        """Yield batches covering every spot once.

        With ``rng`` the block boundaries move by a random offset along the curve and the
        blocks come in random order, so a spot is not always on the same block's rim.
        """
        if self.full_batch:
            yield self.subgraph(torch.arange(self.n_nodes))
            return
        order = self._order
        starts = np.arange(0, self.n_nodes, self.batch_size)
        if rng is not None:
            order = np.roll(order, -int(rng.integers(self.batch_size)))
            starts = rng.permutation(starts)
        for start in starts:
            seeds = torch.from_numpy(np.sort(order[start : start + self.batch_size]))
            yield self.subgraph(seeds)

    def steps(self, rng: np.random.Generator) -> Iterator[SubgraphBatch]:
        """An endless stream of batches, one pass over the section after another."""
        while True:
            yield from self.batches(rng)
