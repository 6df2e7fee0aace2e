"""SENCA model: locality and sharing of the cross-attention, ResNet keys, ablations, API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors

from senca.errors import SencaInputError
from senca.model import (
    SENCA,
    NeighbourhoodCrossAttention,
    SencaConfig,
    SencaModule,
    SharedEncoderBlock,
    load_image_weights,
    resnet18,
    resnet50,
)
from senca.model.layers import masked_norm_linear

# Small and fast: every test trains for a handful of epochs on a few hundred spots.
FAST = dict(
    hidden_dim=32, latent_dim=8, gt_heads=2, ca_heads=2, epochs_warmup=3, epochs_shared=4, epochs_regions=3,
    n_clusters=3, image_batch_size=32,
)

# Tiny tensors: one intra-op thread (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def grid_adata(side: int = 20, n_pcs: int = 12, seed: int = 0) -> AnnData:
    """``side x side`` grid with three vertical bands of distinct mean PCs and a 4-neighbour graph."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    coords = np.c_[xx.ravel(), yy.ravel()].astype(float) * 100.0
    domain = np.minimum(xx.ravel() * 3 // side, 2)
    means = rng.normal(0, 3, size=(3, n_pcs))
    x = means[domain] + rng.normal(0, 1, size=(side * side, n_pcs))
    adata = AnnData(np.zeros((side * side, 5), dtype=np.float32))
    adata.obsm["spatial"] = coords
    adata.obsm["X_pca"] = x.astype(np.float32)
    adata.obs["domain"] = domain.astype(str)
    # Radius just above the spacing: the 4 grid neighbours, no ties to break.
    graph = NearestNeighbors(radius=101.0).fit(coords).radius_neighbors_graph(mode="connectivity").astype(np.float32)
    graph.setdiag(0)
    graph.eliminate_zeros()
    adata.obsp["spatial_connectivities"] = sp.csr_matrix(graph)
    adata.uns["domain_means"] = means
    return adata


def image_features_for(adata: AnnData, dim: int = 10, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    domain = adata.obs["domain"].astype(int).to_numpy()
    return (rng.normal(0, 2, size=(3, dim))[domain] + rng.normal(0, 1, size=(adata.n_obs, dim))).astype(np.float32)


def grid_edges(adata: AnnData) -> torch.Tensor:
    coo = adata.obsp["spatial_connectivities"].tocoo()
    return torch.from_numpy(np.vstack([coo.col, coo.row]).astype(np.int64))


@pytest.fixture(scope="module")
def adata() -> AnnData:
    return grid_adata()


# ---------------------------------------------------------------- cross-attention locality


@pytest.mark.parametrize("layer_cls", [NeighbourhoodCrossAttention, SharedEncoderBlock])
def test_cross_attention_is_local(adata, layer_cls):
    torch.manual_seed(0)
    layer = layer_cls(8, 16, 2) if layer_cls is SharedEncoderBlock else layer_cls(8, 2)
    layer.eval()
    ei = grid_edges(adata)
    n = adata.n_obs
    query, kv = torch.randn(n, 8), torch.randn(n, 8)
    i = 210  # interior spot of the 20 x 20 grid
    neighbours = set(ei[0, ei[1] == i].tolist())
    assert len(neighbours) == 4
    far = next(j for j in range(n) if j not in neighbours and j != i)
    base = layer(query, kv, ei)[i]

    # Random replacements (a constant shift would vanish in the block's LayerNorm).
    kv_far = kv.clone()
    kv_far[far] = 5.0 * torch.randn(8)
    assert torch.equal(layer(query, kv_far, ei)[i], base)  # outside N(i): exactly unchanged

    kv_nb = kv.clone()
    kv_nb[min(neighbours)] = 5.0 * torch.randn(8)
    assert not torch.allclose(layer(query, kv_nb, ei)[i], base)  # a neighbour: changed

    kv_self = kv.clone()
    kv_self[i] = 5.0 * torch.randn(8)  # the spot itself is part of its neighbourhood (self loop)
    assert not torch.allclose(layer(query, kv_self, ei)[i], base)


def test_cross_attention_weights_sum_to_one_over_neighbourhood(adata):
    torch.manual_seed(0)
    layer = NeighbourhoodCrossAttention(8, 2)
    ei = grid_edges(adata)
    # Identity value/output maps and constant values: any convex combination returns the constant.
    with torch.no_grad():
        for lin in (layer.v, layer.out):
            lin.weight.copy_(torch.eye(8))
            lin.bias.zero_()
    kv = torch.ones(adata.n_obs, 8) * 3.0
    out = layer(torch.randn(adata.n_obs, 8), kv, ei)
    assert torch.allclose(out, kv, atol=1e-5)


def test_both_directions_share_parameter_tensors(adata):
    feats = torch.from_numpy(image_features_for(adata))
    module = SencaModule(12, SencaConfig(**FAST), image_mode="features", image_feature_dim=10)
    assert not hasattr(module, "image_block")
    x, ei = torch.from_numpy(adata.obsm["X_pca"]), grid_edges(adata)
    block_params = dict(module.shared.named_parameters())

    def grads_of(key):
        module.zero_grad()
        module(x, ei, feats)[key].pow(2).sum().backward()
        return {name for name, p in block_params.items() if p.grad is not None and p.grad.abs().sum() > 0}

    used_by_gene, used_by_image = grads_of("z_g"), grads_of("z_i")
    assert "attn.q.weight" in used_by_gene and "attn.q.weight" in used_by_image
    assert used_by_gene == used_by_image == set(block_params)
    # Same objects, not copies: the module holds exactly one cross-attention block.
    n_blocks = sum(isinstance(m, SharedEncoderBlock) for m in module.modules())
    assert n_blocks == 1


def test_unshared_encoder_has_separate_parameters(adata):
    module = SencaModule(12, SencaConfig(**FAST, shared_encoder=False), image_mode="features", image_feature_dim=10)
    assert sum(isinstance(m, SharedEncoderBlock) for m in module.modules()) == 2
    shared_ids = {id(p) for p in module.shared.parameters()}
    assert not shared_ids & {id(p) for p in module.image_block.parameters()}


# ---------------------------------------------------------------- ResNet (torchvision keys)

TORCHVISION_RESNET18_KEYS = {
    "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
    "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.1.conv2.weight", "layer2.0.downsample.0.weight",
    "layer2.0.downsample.1.running_var", "layer3.1.bn2.bias", "layer4.1.bn2.weight", "layer4.0.downsample.1.num_batches_tracked",
    "fc.weight", "fc.bias",
}
TORCHVISION_RESNET50_KEYS = {
    "conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.conv3.weight", "layer1.0.bn3.weight",
    "layer1.0.downsample.0.weight", "layer1.0.downsample.1.num_batches_tracked", "layer3.5.bn2.running_var",
    "layer4.2.conv3.weight", "layer4.1.bn2.weight", "fc.weight", "fc.bias",
}


@pytest.mark.parametrize(
    "factory, n_keys, n_params, known, fc_in",
    [
        # torchvision: resnet18 has 122 state-dict entries / 11,689,512 parameters; resnet50 320 / 25,557,032.
        (resnet18, 122, 11_689_512, TORCHVISION_RESNET18_KEYS, 512),
        (resnet50, 320, 25_557_032, TORCHVISION_RESNET50_KEYS, 2048),
    ],
)
def test_resnet_state_dict_matches_torchvision(tmp_path, factory, n_keys, n_params, known, fc_in):
    torch.manual_seed(0)
    model = factory()
    state = model.state_dict()
    assert len(state) == n_keys
    assert known <= set(state)
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert state["fc.weight"].shape == (1000, fc_in)
    assert state["bn1.num_batches_tracked"].dtype == torch.long
    if factory is resnet18:
        assert not any(k.startswith("layer1.0.downsample") for k in state)

    path = tmp_path / "weights.pth"
    torch.save(state, path)
    torch.manual_seed(1)
    other = load_image_weights(factory(), path)
    for key, value in other.state_dict().items():
        assert torch.equal(value, state[key]), key
    model.eval()
    other.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.forward_features(x), other.forward_features(x))
    assert model.forward_features(x).shape == (2, fc_in)


def test_resnet_weights_accept_headless_and_wrapped_files(tmp_path):
    state = resnet18().state_dict()
    headless = {k: v for k, v in state.items() if not k.startswith("fc.")}
    torch.save({"state_dict": {f"module.{k}": v for k, v in headless.items()}}, tmp_path / "w.pth")
    loaded = load_image_weights(resnet18(), tmp_path / "w.pth")
    assert torch.equal(loaded.state_dict()["layer4.1.bn2.weight"], state["layer4.1.bn2.weight"])


def test_bad_image_weights_raise_senca_input_error(tmp_path, adata):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(SencaInputError, match="garbage.pth"):
        load_image_weights(resnet18(), garbage)

    wrong = tmp_path / "resnet50.pth"
    torch.save(resnet50().state_dict(), wrong)
    with pytest.raises(SencaInputError) as err:
        load_image_weights(resnet18(), wrong)
    message = str(err.value)
    assert "resnet50.pth" in message and "missing" in message and "unexpected" in message
    assert "layer1.0.conv3.weight" in message or "layer1.0.bn3" in message or "downsample" in message

    truncated = tmp_path / "truncated.pth"
    state = resnet18().state_dict()
    del state["layer4.1.bn2.weight"]
    torch.save(state, truncated)
    with pytest.raises(SencaInputError, match=r"layer4\.1\.bn2\.weight"):
        load_image_weights(resnet18(), truncated)

    with pytest.raises(SencaInputError, match="not found"):
        load_image_weights(resnet18(), tmp_path / "absent.pth")

    patches = np.zeros((adata.n_obs, 3, 16, 16), np.uint8)
    with pytest.raises(SencaInputError, match="resnet50.pth"):
        SENCA(adata, patches=patches, image_weights=str(wrong), device="cpu", **FAST)


# ---------------------------------------------------------------- API, inputs


def test_missing_inputs_raise_senca_input_error(adata):
    no_pca = adata.copy()
    del no_pca.obsm["X_pca"]
    with pytest.raises(SencaInputError, match="X_pca"):
        SENCA(no_pca)
    no_graph = adata.copy()
    del no_graph.obsp["spatial_connectivities"]
    with pytest.raises(SencaInputError, match="spatial_connectivities"):
        SENCA(no_graph)
    with pytest.raises(SencaInputError, match="patches"):
        SENCA(adata, patches=np.zeros((adata.n_obs, 3, 32, 32), np.float32))
    with pytest.raises(SencaInputError, match="image_features"):
        SENCA(adata, image_features=np.zeros((adata.n_obs - 1, 4)))
    with pytest.raises(SencaInputError, match="X_missing"):
        SENCA(adata, image_features="X_missing")
    with pytest.raises(SencaInputError, match="unknown setting"):
        SENCA(adata, not_a_setting=1)
    with pytest.raises(SencaInputError, match="vanilla_contrastive"):
        SENCA(adata, vanilla_contrastive=True)


def test_config_round_trip_is_toml_safe():
    config = SencaConfig(latent_dim=16, ca_heads=4, n_clusters=None)
    values = config.to_dict()
    assert None not in values.values() and "n_clusters" not in values
    assert all(isinstance(v, (int, float, str, bool, list)) for v in values.values())
    assert SencaConfig.from_dict(values) == config
    with pytest.raises(SencaInputError, match="bogus"):
        SencaConfig.from_dict({**values, "bogus": 1})
    with pytest.raises(SencaInputError, match="fusion"):
        SencaConfig(fusion="sum")


def test_device_auto_is_cpu_without_cuda(adata):
    model = SENCA(adata, **FAST)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert model.device.type == expected


def test_train_writes_embedding_history_and_finds_domains(adata):
    a = adata.copy()
    model = SENCA(a, device="cpu", **{**FAST, "epochs_warmup": 10, "epochs_shared": 30, "epochs_regions": 10})
    model.train(progress_bar=False)
    z = a.obsm["X_senca"]
    assert z.shape == (a.n_obs, 8) and np.isfinite(z).all()
    assert list(model.history) == ["warmup", "shared", "regions"]
    # No image: no cross-modal (neighbourhood-level) term.
    assert set(model.history["regions"].columns) == {"recon", "recon_fused", "dec", "total"}
    assert len(model.history["shared"]) == 30
    # Training reduces the reconstruction error of stage 2.
    shared = model.history["shared"]["recon"]
    assert shared.iloc[-5:].mean() < shared.iloc[:5].mean()
    probs = model.get_region_probabilities()
    assert probs.shape == (a.n_obs, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    labels = GaussianMixture(3, covariance_type="tied", random_state=0).fit_predict((z - z.mean(0)) / z.std(0))
    assert adjusted_rand_score(a.obs["domain"], labels) > 0.8


# ---------------------------------------------------------------- ablations, determinism, save / load


def _embedding(adata, **kw):
    model = SENCA(adata.copy(), image_features=image_features_for(adata), device="cpu", **{**FAST, **kw})
    return model.train(progress_bar=False).get_latent_representation()


@pytest.fixture(scope="module")
def full_embedding(adata):
    return _embedding(adata)


@pytest.mark.parametrize(
    "switch",
    [
        {"use_image": False},
        {"use_graph": False},
        {"cross_attention": False},
        {"shared_encoder": False},
        {"hierarchical": False},
        {"vanilla_contrastive": True},
        {"fusion": "concat"},
    ],
    ids=lambda d: next(iter(d)),
)
def test_each_ablation_runs_and_changes_the_output(adata, full_embedding, switch):
    z = _embedding(adata, **switch)
    assert np.isfinite(z).all() and z.shape[0] == adata.n_obs
    assert z.shape != full_embedding.shape or not np.allclose(z, full_embedding, atol=1e-4)


def test_ablations_change_the_computation_not_only_the_seed(adata):
    config = SencaConfig(**FAST)
    mlp = SencaModule(12, config.replace(use_graph=False), "features", 10)
    assert mlp.num_hops == 1 and not any("TransformerConv" in type(m).__name__ for m in mlp.modules())
    concat = SencaModule(12, config.replace(cross_attention=False), "features", 10)
    assert not hasattr(concat, "shared") and concat.num_hops == config.gt_layers
    gene_only = SencaModule(12, config, "none")
    assert gene_only.embedding_dim == config.latent_dim and not hasattr(gene_only, "image_proj")


def test_same_seed_gives_identical_embeddings_and_labels(adata, full_embedding):
    again = _embedding(adata)
    assert np.array_equal(again, full_embedding)
    lab1 = GaussianMixture(3, covariance_type="tied", random_state=0).fit_predict(full_embedding)
    lab2 = GaussianMixture(3, covariance_type="tied", random_state=0).fit_predict(again)
    assert np.array_equal(lab1, lab2)
    other_seed = _embedding(adata, seed=1)
    assert not np.allclose(other_seed, full_embedding)


def test_precomputed_features_array_equals_obsm_key(adata, full_embedding):
    a = adata.copy()
    a.obsm["X_foundation"] = image_features_for(adata)
    model = SENCA(a, image_features="X_foundation", device="cpu", **FAST)
    assert model.module.image_mode == "features" and model.module.resnet is None
    z = model.train(progress_bar=False).get_latent_representation()
    assert np.array_equal(z, full_embedding)
    assert z.shape[1] == FAST["latent_dim"]  # gated fusion of z_g and z_i


def test_st_input_keeps_only_spatially_coherent_pcs(adata):
    a = adata.copy()
    n_coherent = a.obsm["X_pca"].shape[1]
    noise = np.random.default_rng(3).normal(0, 3, size=(a.n_obs, 6)).astype(np.float32)
    a.obsm["X_pca"] = np.hstack([a.obsm["X_pca"], noise])
    model = SENCA(a, use_image=False, device="cpu", **FAST)
    assert set(model.input_pcs) <= set(range(n_coherent)) and len(model.input_pcs) >= n_coherent - 2
    assert model.data.x.shape[1] == len(model.input_pcs)
    every = SENCA(a, use_image=False, device="cpu", coherence_z=None, **FAST)
    assert np.array_equal(every.input_pcs, np.arange(n_coherent + 6))
    # Pure noise: the two most coherent PCs are kept rather than none.
    a.obsm["X_pca"] = noise
    assert len(SENCA(a, use_image=False, device="cpu", **FAST).input_pcs) == 2


def test_image_stream_reads_only_spatially_coherent_features(adata):
    coherent = image_features_for(adata)
    noise = np.random.default_rng(4).normal(0, 2, size=(adata.n_obs, 5)).astype(np.float32)
    model = SENCA(adata.copy(), image_features=np.hstack([coherent, noise]), device="cpu", **FAST)
    assert model.module.image_keep.sum() == coherent.shape[1] + 5  # all read before training
    model.train(progress_bar=False)
    keep = model.module.image_keep.numpy()
    assert keep[: coherent.shape[1]].all() and not keep[coherent.shape[1]:].any()
    assert model.get_image_features().shape == (adata.n_obs, coherent.shape[1])
    # A noise feature no longer changes the embedding; a coherent one does.
    z = model.get_latent_representation()
    for column, changes in ((coherent.shape[1], False), (0, True)):
        shifted = model.data.image_features.clone()
        shifted[:, column] += 5.0
        original, model.data.image_features = model.data.image_features, shifted
        assert np.array_equal(model.get_latent_representation(), z) != changes
        model.data.image_features = original


def test_masked_norm_linear_is_the_masked_layers_with_their_gradients():
    """Reading only the kept columns gives the function and gradients of LayerNorm + Linear on
    the zero-masked input, dropped columns included (they still enter the norm's statistics)."""
    torch.manual_seed(0)
    d = 300
    norm, linear = torch.nn.LayerNorm(d), torch.nn.Linear(d, 16)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_(0.0, 0.3)
    x = torch.randn(50, d) * 1.5 + 0.4
    columns = torch.randperm(d)[:90].sort().values
    mask = torch.zeros(d)
    mask[columns] = 1.0
    params = [norm.weight, norm.bias, linear.weight, linear.bias]
    results = []
    for compute in (lambda: linear(norm(x * mask)), lambda: masked_norm_linear(x, columns, norm, linear)):
        out = compute()
        grads = torch.autograd.grad(out.pow(2).sum(), params)
        results.append((out, grads))
    (expected, expected_grads), (got, got_grads) = results
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)
    assert expected_grads[1][~mask.bool()].abs().max() > 0  # dropped columns do get gradients


def test_save_load_gives_the_same_embedding(tmp_path, adata):
    a = adata.copy()
    feats = image_features_for(adata)
    model = SENCA(a, image_features=feats, device="cpu", **FAST).train(progress_bar=False)
    z = model.get_latent_representation()
    model.save(tmp_path / "m")
    with pytest.raises(SencaInputError, match="overwrite"):
        model.save(tmp_path / "m")
    loaded = SENCA.load(tmp_path / "m", a, image_features=feats, device="cpu")
    assert np.array_equal(loaded.get_latent_representation(), z)
    assert np.array_equal(loaded.input_pcs, model.input_pcs)
    assert np.allclose(loaded.get_region_probabilities(), model.get_region_probabilities())
    assert loaded.config == model.config and set(loaded.history) == set(model.history)
    with pytest.raises(SencaInputError, match="image_features"):
        SENCA.load(tmp_path / "m", a, device="cpu")


def test_resnet_branch_trains_and_reloads_from_cached_features(tmp_path):
    a = grid_adata(side=8)
    rng = np.random.default_rng(0)
    domain = a.obs["domain"].astype(int).to_numpy()
    colours = np.array([[200, 80, 150], [120, 60, 200], [240, 200, 220]], np.uint8)
    patches = (colours[domain][:, :, None, None] + rng.integers(0, 20, (a.n_obs, 3, 16, 16))).astype(np.uint8)
    model = SENCA(a, patches=patches, device="cpu", **{**FAST, "epochs_warmup": 2, "epochs_shared": 2, "epochs_regions": 1,
                                                         "epochs_image": 1})
    assert model.module.image_mode == "resnet"
    model.train(progress_bar=False)
    assert "image_view" in model.history["warmup"].columns
    assert model.data.image_features.shape == (a.n_obs, model.module.resnet.texture_dim)  # cached, frozen after warm-up
    assert not any(p.requires_grad for p in model.module.resnet.parameters())
    z = model.get_latent_representation()
    model.save(tmp_path / "r")
    assert np.array_equal(SENCA.load(tmp_path / "r", a, device="cpu").get_latent_representation(), z)
    assert np.allclose(SENCA.load(tmp_path / "r", a, patches=patches, device="cpu").get_latent_representation(), z, atol=1e-5)


@pytest.mark.parametrize("patch_px", [16, 64])
def test_resnet_features_do_not_depend_on_image_threads(patch_px):
    """The ResNet's feature pass takes every free core by default; its features (and so the regions) must not change."""
    a = grid_adata(side=6)
    patches = np.random.default_rng(3).integers(0, 255, (a.n_obs, 3, patch_px, patch_px)).astype(np.uint8)
    threads_before = torch.get_num_threads()
    features = []
    for threads in (1, 3):
        model = SENCA(a, patches=patches, device="cpu", **{**FAST, "epochs_warmup": 1, "epochs_shared": 1,
                                                             "epochs_regions": 0, "image_num_threads": threads})
        model.train(progress_bar=False)
        features.append(model.data.image_features)
        assert torch.get_num_threads() == threads_before
    assert torch.equal(features[0], features[1])
    with pytest.raises(SencaInputError, match="image_num_threads"):
        SencaConfig(image_num_threads=0)


def test_training_and_loading_on_one_cpu_thread_do_not_import_torchdynamo(tmp_path):
    # TorchDynamo costs about 1.5 s to import, in every restart process and in the one that
    # gathers the restarts; nothing senca does on the CPU needs it (torch.optim and the
    # deterministic-algorithms flag would import it; a ResNet drawn on the meta device did).
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import numpy as np
from test_model import FAST, grid_adata
from senca.model import SENCA
a = grid_adata(side=6)
patches = np.random.default_rng(0).integers(0, 255, (a.n_obs, 3, 16, 16)).astype(np.uint8)
model = SENCA(a, patches=patches, device="cpu", **{{**FAST, "epochs_warmup": 1, "epochs_shared": 1}})
model.train(progress_bar=False)
model.save({str(tmp_path / "m")!r}, save_anndata=True)
loaded = SENCA.load({str(tmp_path / "m")!r}, device="cpu")
print(loaded.module.image_mode, loaded.n_regions, "torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["resnet", str(FAST["n_clusters"]), "False"], out.stdout + out.stderr


def test_the_model_layer_imports_neither_scanpy_nor_the_layers_above():
    # scanpy takes seconds to import and only the marker test needs it; the model sits below the
    # pipeline and the command, so importing it must not pull them in.
    code = ("import sys, senca.model; "
            "print(sorted(m for m in ('scanpy', 'senca.pipeline', 'senca.cli.commands', 'senca.cohort') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
