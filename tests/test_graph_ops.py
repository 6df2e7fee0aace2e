"""The edge-list operations and the graph attention layer against dense references."""

import math

import numpy as np
import pytest
import torch

from senca.graph import ops
from senca.graph.ops import (
    add_self_loops,
    edge_attention,
    edge_index_to_scipy,
    remove_self_loops,
    scatter_sum,
    segment_softmax,
    to_undirected,
)
from senca.model.layers import GraphAttentionConv


def _random_graph(n=40, e=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (2, e), generator=g), n


def test_scatter_sum_matches_a_dense_incidence_product():
    ei, n = _random_graph()
    src = torch.randn(ei.shape[1], 3, 2)
    incidence = torch.zeros(n, ei.shape[1])
    incidence[ei[1], torch.arange(ei.shape[1])] = 1.0
    expected = (incidence @ src.reshape(ei.shape[1], -1)).reshape(n, 3, 2)
    assert torch.allclose(scatter_sum(src, ei[1], n), expected, atol=1e-5)


def test_segment_softmax_normalises_over_each_targets_edges_only():
    ei, n = _random_graph()
    scores = torch.randn(ei.shape[1], 4) * 10  # large scores: the per-target maximum keeps exp finite
    alpha = segment_softmax(scores, ei[1], n)
    sums = scatter_sum(alpha, ei[1], n)
    has_edges = torch.bincount(ei[1], minlength=n) > 0
    assert torch.allclose(sums[has_edges], torch.ones_like(sums[has_edges]), atol=1e-5)
    assert torch.all(sums[~has_edges] == 0)
    # Edge e's weight is exp(score_e) / sum of exp over the edges with the same target.
    e = 7
    same = ei[1] == ei[1, e]
    expected = scores[e].exp() / scores[same].exp().sum(0)
    assert torch.allclose(alpha[e], expected, atol=1e-5)


def test_self_loops_and_undirected_edges():
    ei = torch.tensor([[0, 1, 1, 2, 3], [1, 0, 1, 3, 3]])
    assert remove_self_loops(ei).tolist() == [[0, 1, 2], [1, 0, 3]]
    looped = add_self_loops(ei, 5)
    assert looped.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4], [1, 0, 3, 0, 1, 2, 3, 4]]
    und = to_undirected(torch.tensor([[0, 2, 0], [1, 1, 1]]), 3)
    assert und.tolist() == [[0, 1, 1, 2], [1, 0, 2, 1]]  # both directions, each once, sorted
    m = edge_index_to_scipy(und, 3).toarray()
    assert np.array_equal(m, m.T) and m.sum() == 4 and m[0, 1] == 1


def test_graph_attention_equals_dense_masked_attention():
    torch.manual_seed(0)
    ei, n = _random_graph(n=30, e=150, seed=1)
    ei = to_undirected(remove_self_loops(ei), n)
    layer = GraphAttentionConv(8, 4, heads=2)
    x = torch.randn(n, 8)
    out = layer(x, ei)
    adjacency = torch.zeros(n, n, dtype=torch.bool)
    adjacency[ei[1], ei[0]] = True  # row: target i, column: source j
    q = layer.lin_query(x).view(n, 2, 4)
    k = layer.lin_key(x).view(n, 2, 4)
    v = layer.lin_value(x).view(n, 2, 4)
    heads = []
    for h in range(2):
        scores = (q[:, h] @ k[:, h].T) / math.sqrt(4)
        weights = torch.softmax(scores.masked_fill(~adjacency, float("-inf")), dim=1).nan_to_num(0.0)
        heads.append(weights @ v[:, h])
    expected = torch.cat(heads, dim=1) + layer.lin_skip(x)
    assert torch.allclose(out, expected, atol=1e-5)
    # Gradients reach every weight.
    out.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def _attention_by_autograd(query, key, value, src, dst):
    """The plain composition edge_attention replaces: per-edge gathers, segment softmax, scatter."""
    scores = (query[dst] * key[src]).sum(-1) / math.sqrt(query.shape[2])
    alpha = segment_softmax(scores, dst, query.shape[0])
    return scatter_sum(value[src] * alpha.unsqueeze(-1), dst, query.shape[0])


@pytest.mark.parametrize("chunk", [7, 4096])  # several chunks per pass, and one
def test_edge_attention_equals_the_plain_composition(monkeypatch, chunk):
    monkeypatch.setattr(ops, "_ATTENTION_CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    n, tokens, e = 20, 45, 160
    src = torch.randint(0, tokens, (e,), generator=g)
    dst = torch.randint(0, n - 2, (e,), generator=g)  # the last two targets have no edges
    query, key, value = (torch.randn(size, 3, 4, generator=g, requires_grad=True) for size in (n, tokens, tokens))
    out = edge_attention(query, key, value, src, dst)
    expected = _attention_by_autograd(query, key, value, src, dst)
    assert torch.equal(out, expected)  # the same arithmetic in the same order
    assert torch.all(out[n - 2:] == 0)
    grad_out = torch.randn(n, 3, 4, generator=g)
    grads = torch.autograd.grad(out, (query, key, value), grad_out)
    expected_grads = torch.autograd.grad(expected, (query, key, value), grad_out)
    for got, want in zip(grads, expected_grads):
        assert torch.equal(got, want)  # autograd's formulas, in its order


def test_edge_attention_gradient_matches_finite_differences(monkeypatch):
    monkeypatch.setattr(ops, "_ATTENTION_CHUNK", 5)
    g = torch.Generator().manual_seed(1)
    n, e = 8, 30
    src, dst = torch.randint(0, n, (e,), generator=g), torch.randint(0, n, (e,), generator=g)
    inputs = tuple(torch.randn(n, 2, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: edge_attention(q, k, v, src, dst), inputs)
