"""Mini-batches over spatial subgraphs: seed spots + their k-hop neighbourhood.

Losses are computed on the seeds only; the k-hop neighbourhood (k = the number of
message-passing layers in front of the loss) makes each seed's output exact, so memory
grows with the batch size, not with the section.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.utils import k_hop_subgraph

__all__ = ["SubgraphBatch", "SubgraphSampler"]


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
    """

    nodes: torch.Tensor
    edge_index: torch.Tensor
    seeds: torch.Tensor


class SubgraphSampler:
    """Split the spots into seed batches and return each with its k-hop subgraph.

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
    """

    def __init__(self, edge_index: torch.Tensor, n_nodes: int, num_hops: int, batch_size: int | None = None):
        self.edge_index = edge_index
        self.n_nodes = n_nodes
        self.num_hops = num_hops
        self.batch_size = n_nodes if batch_size is None else min(batch_size, n_nodes)

    @property
    def full_batch(self) -> bool:
        return self.batch_size >= self.n_nodes

    def __len__(self) -> int:
        return -(-self.n_nodes // self.batch_size)

    def subgraph(self, seeds: torch.Tensor) -> SubgraphBatch:
        """The k-hop subgraph around global ``seeds``."""
        if self.full_batch and seeds.numel() == self.n_nodes:
            return SubgraphBatch(torch.arange(self.n_nodes), self.edge_index, seeds)
        nodes, sub_edges, mapping, _ = k_hop_subgraph(
            seeds, self.num_hops, self.edge_index, relabel_nodes=True, num_nodes=self.n_nodes
        )
        return SubgraphBatch(nodes, sub_edges, mapping)

    def batches(self, rng: np.random.Generator | None = None) -> Iterator[SubgraphBatch]:
        """Yield batches covering every spot once; shuffled when ``rng`` is given."""
        order = np.arange(self.n_nodes) if rng is None else rng.permutation(self.n_nodes)
        for start in range(0, self.n_nodes, self.batch_size):
            seeds = torch.from_numpy(np.sort(order[start : start + self.batch_size]))
            yield self.subgraph(seeds)
