"""Training pieces: losses against brute force, augmentations, subgraph mini-batches, stages."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from anndata import AnnData
from sklearn.neighbors import NearestNeighbors

from senca.model import SENCA, SencaConfig, SencaModule
from senca.training import (
    AdamW,
    PatchAugmenter,
    SencaData,
    SubgraphSampler,
    dec_loss,
    dec_target,
    embed,
    neighbour_info_nce,
    nt_xent,
    stage_plan,
    student_t_assignment,
)
from senca.training.trainer import neighbourhood_mean

FAST = dict(hidden_dim=32, latent_dim=8, gt_heads=2, ca_heads=2, epochs_warmup=2, epochs_shared=3, epochs_regions=2, n_clusters=3)

# Tiny tensors: one intra-op thread (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def grid(side: int = 16, n_pcs: int = 10, seed: int = 0) -> AnnData:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    coords = np.c_[xx.ravel(), yy.ravel()].astype(float)
    domain = np.minimum(xx.ravel() * 3 // side, 2)
    adata = AnnData(np.zeros((side * side, 3), dtype=np.float32))
    adata.obsm["spatial"] = coords
    adata.obsm["X_pca"] = (rng.normal(0, 3, (3, n_pcs))[domain] + rng.normal(0, 1, (side * side, n_pcs))).astype(np.float32)
    graph = NearestNeighbors(radius=1.01).fit(coords).radius_neighbors_graph(mode="connectivity").astype(np.float32)
    graph.setdiag(0)
    graph.eliminate_zeros()
    adata.obsp["spatial_connectivities"] = sp.csr_matrix(graph)
    return adata


def edges_of(adata: AnnData) -> torch.Tensor:
    coo = adata.obsp["spatial_connectivities"].tocoo()
    return torch.from_numpy(np.vstack([coo.col, coo.row]).astype(np.int64))


# ---------------------------------------------------------------- losses


def _brute_force_nce(a, b, anchors, edge_index, negatives, tau, w):
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    total = []
    for i in anchors.tolist():
        # Neighbours enter (as positives, hence also in the denominator) only with a positive weight.
        nbrs = edge_index[0, edge_index[1] == i].tolist() if w > 0 else []
        pos = [a[i] @ b[i] / tau] + [a[i] @ b[j] / tau for j in nbrs]
        neg = [a[i] @ b[m] / tau for m in negatives.tolist()]
        log_denom = torch.logsumexp(torch.stack(pos + neg), 0)
        self_term = pos[0] - log_denom
        if nbrs:
            nbr_term = torch.stack([p - log_denom for p in pos[1:]]).mean()
            total.append(-(self_term + w * nbr_term) / (1 + w))
        else:
            total.append(-self_term)
    return torch.stack(total).mean()


@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0])
def test_neighbour_info_nce_matches_brute_force(weight):
    torch.manual_seed(0)
    adata = grid(side=6)
    ei = edges_of(adata)
    a, b = torch.randn(adata.n_obs, 5), torch.randn(adata.n_obs, 5)
    anchors = torch.tensor([0, 7, 14, 20, 35])
    negatives = torch.tensor([3, 9, 11, 28, 30, 33])
    got = neighbour_info_nce(a, b, anchors, ei, negatives, temperature=0.3, neighbour_weight=weight)
    expected = 0.5 * (
        _brute_force_nce(a, b, anchors, ei, negatives, 0.3, weight) + _brute_force_nce(b, a, anchors, ei, negatives, 0.3, weight)
    )
    assert torch.allclose(got, expected, atol=1e-5)


def test_info_nce_rewards_aligned_modalities():
    torch.manual_seed(0)
    a = torch.randn(50, 8)
    idx = torch.arange(50)
    aligned = neighbour_info_nce(a, a + 0.05 * torch.randn(50, 8), idx, None, idx, 0.2, 0.0)
    shuffled = neighbour_info_nce(a, a[torch.randperm(50)], idx, None, idx, 0.2, 0.0)
    assert aligned < shuffled


def test_nt_xent_prefers_matching_views():
    torch.manual_seed(0)
    v = torch.randn(32, 16)
    assert nt_xent(v, v + 0.01 * torch.randn(32, 16)) < nt_xent(v, torch.randn(32, 16))


def test_dec_target_is_sharper_than_assignment():
    torch.manual_seed(0)
    z, centres = torch.randn(100, 4), torch.randn(3, 4) * 2
    q = student_t_assignment(z, centres)
    p = dec_target(q)
    assert torch.allclose(q.sum(1), torch.ones(100)) and torch.allclose(p.sum(1), torch.ones(100))
    entropy = lambda m: -(m * m.log()).sum(1).mean()  # noqa: E731
    assert entropy(p) < entropy(q)
    assert dec_loss(q, p) > 0
    assert torch.isclose(dec_loss(p, p), torch.tensor(0.0), atol=1e-6)


def test_neighbourhood_mean_averages_over_self_and_neighbours():
    adata = grid(side=5)
    x = torch.arange(adata.n_obs, dtype=torch.float32).unsqueeze(1)
    out = neighbourhood_mean(x, edges_of(adata), hops=1)
    # Spot 12 is the centre of a 5 x 5 grid: itself and 7, 11, 13, 17.
    assert out[12, 0].item() == pytest.approx((12 + 7 + 11 + 13 + 17) / 5)
    assert torch.equal(neighbourhood_mean(x, edges_of(adata), hops=0), x)


# ---------------------------------------------------------------- augmentation


def test_augmenter_is_reproducible_and_geometric_ops_keep_pixels():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    aug = PatchAugmenter(crop_scale=0.8, jitter=0.2)
    a1 = aug(x, torch.Generator().manual_seed(3))
    a2 = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a1, a2) and a1.shape == x.shape
    assert not torch.equal(a1, aug(x, torch.Generator().manual_seed(4)))
    # No crop, no jitter: only flips / 90-degree turns, which permute pixels.
    plain = PatchAugmenter(crop_scale=1.0, jitter=0.0)(x, torch.Generator().manual_seed(5))
    reference = PatchAugmenter.plain(x)
    for i in range(6):
        assert torch.allclose(plain[i].flatten().sort().values, reference[i].flatten().sort().values, atol=1e-5)
    rotated_any = any(not torch.allclose(plain[i], reference[i], atol=1e-5) for i in range(6))
    assert rotated_any


# ---------------------------------------------------------------- subgraph mini-batches


def test_sampler_covers_every_seed_once_with_bounded_subgraphs():
    adata = grid(side=40)
    ei = edges_of(adata)
    sampler = SubgraphSampler(ei, adata.n_obs, num_hops=2, batch_size=20)
    batches = list(sampler.batches(np.random.default_rng(0)))
    seeds = torch.cat([b.nodes[b.seeds] for b in batches])
    assert len(batches) == len(sampler) == 80
    assert torch.equal(seeds.sort().values, torch.arange(adata.n_obs))
    # Memory grows with the batch, not the section: at most 13 spots (a 2-hop ball of the
    # 4-neighbour grid) per seed.
    assert max(b.nodes.numel() for b in batches) <= 20 * 13 < adata.n_obs / 4
    for b in batches:
        assert b.edge_index.max() < b.nodes.numel()


def test_whole_section_batch_reads_per_spot_tensors_without_copying():
    adata = grid(side=6)
    ei = edges_of(adata)
    [whole] = list(SubgraphSampler(ei, adata.n_obs, num_hops=2).batches())
    values = torch.randn(adata.n_obs, 3)
    assert whole.whole and whole.rows(values) is values and whole.rows(values, local=True) is values
    # A block: the seeds' rows, by global index or within the block's nodes.
    block = SubgraphSampler(ei, adata.n_obs, num_hops=2, batch_size=5).subgraph(torch.tensor([7, 3, 20]))
    assert not block.whole
    assert torch.equal(block.rows(values), values[[7, 3, 20]])
    assert torch.equal(block.rows(values[block.nodes], local=True), values[[7, 3, 20]])


def test_adamw_is_torchs_foreach_adamw_bit_for_bit():
    # Parameters that first get gradients later (a stage that starts using them) and a group
    # added mid-way (the region centres) count their own steps, as in torch.optim.
    def run(own: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        first, second = torch.nn.Linear(7, 5), torch.nn.Linear(5, 3)
        centres = torch.nn.Parameter(torch.randn(4, 3))
        params = [*first.parameters(), *second.parameters()]
        start = [p.detach().clone() for p in [*params, centres]]
        if own:
            opt = AdamW(params, lr=1e-2, weight_decay=1e-2)
        else:
            opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2, foreach=True)
        generator = torch.Generator().manual_seed(1)
        for step in range(30):
            if step == 15:
                opt.add_param_group([centres] if own else {"params": [centres]})
            h = first(torch.randn(16, 7, generator=generator))
            out = second(h) if step >= 5 else h[:, :3]
            loss = out.pow(2).mean() + (centres.pow(2).sum() if step >= 15 else 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert not any(torch.equal(a, p) for a, p in zip(start, [*params, centres]))  # every one moved
        return [p.detach().clone() for p in [*params, centres]]

    ours, theirs = run(own=True), run(own=False)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    with pytest.raises(ValueError, match="more than one group"):
        AdamW(ours[:1], lr=1e-3).add_param_group(ours[:1])


def test_contiguous_blocks_keep_the_halo_to_the_rim():
    """Seeds of a batch are a compact block, so its 2-hop halo is a rim, not 13 spots per seed."""
    adata = grid(side=64)
    ei = edges_of(adata)
    sampler = SubgraphSampler(ei, adata.n_obs, num_hops=2, batch_size=256, coordinates=adata.obsm["spatial"])
    batches = list(sampler.batches(np.random.default_rng(1)))
    assert torch.equal(torch.cat([b.nodes[b.seeds] for b in batches]).sort().values, torch.arange(adata.n_obs))
    ratios = [b.nodes.numel() / b.seeds.numel() for b in batches if b.seeds.numel() == 256]
    # A 16 x 16 block gains at most 2 * 4 * 16 + 8 rim spots (~1.6x); random seeds would pull in
    # most of their 13-spot balls (~10x).
    assert max(ratios) < 2.0
    random_seeds = torch.from_numpy(np.sort(np.random.default_rng(0).choice(adata.n_obs, 256, replace=False)))
    assert sampler.subgraph(random_seeds).nodes.numel() / 256 > 5
    # The subgraph's edges are exactly the section's edges among its nodes.
    b = batches[0]
    global_edges = {(int(u), int(v)) for u, v in ei.t()}
    local = {(int(b.nodes[u]), int(b.nodes[v])) for u, v in b.edge_index.t()}
    inside = set(b.nodes.tolist())
    assert local == {(u, v) for u, v in global_edges if u in inside and v in inside}


def test_step_stream_moves_block_boundaries_between_passes():
    adata = grid(side=32)
    sampler = SubgraphSampler(edges_of(adata), adata.n_obs, num_hops=1, batch_size=100, coordinates=adata.obsm["spatial"])
    stream = sampler.steps(np.random.default_rng(0))
    first = [frozenset(next(stream).nodes.tolist()) for _ in range(len(sampler))]
    second = [frozenset(next(stream).nodes.tolist()) for _ in range(len(sampler))]
    assert set(first) != set(second)


@pytest.mark.parametrize("image", [False, True])
def test_subgraph_embedding_equals_full_graph_embedding(image):
    adata = grid(side=14)
    torch.manual_seed(0)
    x = torch.from_numpy(adata.obsm["X_pca"])
    feats = torch.randn(adata.n_obs, 6) if image else None
    module = SencaModule(10, SencaConfig(**FAST), "features" if image else "none", 6 if image else None)
    data = SencaData(x, edges_of(adata), image_features=feats)
    full = embed(module, data, SubgraphSampler(data.edge_index, data.n_obs, module.num_hops), torch.device("cpu"))
    batched = embed(module, data, SubgraphSampler(data.edge_index, data.n_obs, module.num_hops, 17), torch.device("cpu"))
    assert torch.allclose(full, batched, atol=1e-5)
    # One hop too few is not exact: the receptive field really is num_hops.
    short = embed(module, data, SubgraphSampler(data.edge_index, data.n_obs, module.num_hops - 1, 17), torch.device("cpu"))
    assert not torch.allclose(full, short, atol=1e-5)


def test_mini_batch_training_runs_and_records_history():
    adata = grid(side=16)
    model = SENCA(adata, device="cpu", batch_size=40, **FAST).train(progress_bar=False)
    assert model.history["shared"].shape[0] == 3
    assert np.isfinite(adata.obsm["X_senca"]).all()
    assert model.get_latent_representation().shape == (adata.n_obs, 8)


def test_region_stage_and_select_k_rescale_the_embedding_once(monkeypatch):
    from senca.clustering import global_scale
    from senca.training import trainer

    seen = []

    def spy(x, *args, **kwargs):
        seen.append(np.array(x))
        return select_k(x, *args, **kwargs)

    select_k = trainer.select_k
    monkeypatch.setattr(trainer, "select_k", spy)
    model = SENCA(grid(side=12), device="cpu", **{**FAST, "n_clusters": None}).train(progress_bar=False)
    (x,) = seen
    # select_k is given the embedding itself, not one rescaled already, and rescales it as the
    # region stage did (one definition: global_scale).
    centre, factor = global_scale(x)
    assert np.abs(centre).max() > 1e-3
    np.testing.assert_allclose(model.module.emb_mean.numpy(), centre, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.module.emb_std.numpy(), factor, rtol=1e-6)
    assert model.n_regions == model.k_selection["k"]


# ---------------------------------------------------------------- stages


def test_stage_plan_follows_config_and_ablations():
    config = SencaConfig(epochs_warmup=5, epochs_shared=7, epochs_regions=3)
    assert stage_plan(config) == [("warmup", 5), ("shared", 7), ("regions", 3)]
    assert stage_plan(config.replace(hierarchical=False)) == [("warmup", 5), ("spot", 10)]
    assert stage_plan(config.replace(vanilla_contrastive=True)) == [("warmup", 5), ("contrastive", 10)]


def test_stage_losses_follow_the_levels():
    adata = grid(side=12)
    feats = np.random.default_rng(0).normal(size=(adata.n_obs, 6)).astype(np.float32)
    # The neighbourhood-level term is off by default (w_contrast=0); switched on, it joins stages 2-3.
    full = SENCA(adata.copy(), image_features=feats, device="cpu", **FAST, w_contrast=0.02).train(progress_bar=False).history
    assert set(full["warmup"].columns) == {"recon", "total"}
    shared = {"recon", "recon_fused", "recon_image", "recon_image_features", "contrast"}
    assert set(full["shared"].columns) == shared | {"total"}
    assert set(full["regions"].columns) == shared | {"dec", "total"}
    single = SENCA(adata.copy(), image_features=feats, device="cpu", hierarchical=False, **FAST).train(progress_bar=False).history
    assert set(single["spot"].columns) == {"recon", "recon_fused", "recon_image", "recon_image_features", "total"}
    vanilla = SENCA(adata.copy(), image_features=feats, device="cpu", vanilla_contrastive=True, **FAST).train(progress_bar=False).history
    assert set(vanilla["contrastive"].columns) == {"contrast", "total"}
    zero = SENCA(adata.copy(), image_features=feats, device="cpu", **FAST, w_recon_image=0.0,
                 w_recon_image_features=0.0).train(progress_bar=False).history
    assert set(zero["shared"].columns) == {"recon", "recon_fused", "total"}
