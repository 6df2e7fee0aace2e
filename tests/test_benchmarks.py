"""The benchmark harness (benchmarks/): protocol, aggregation, Wilcoxon table, report, figures, one child run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import HER2ST, require  # noqa: E402
from senca.errors import SencaInputError  # noqa: E402

from benchmarks import protocol  # noqa: E402
from benchmarks.figures import SectionMaps, draw_grid, label_colours, region_colours  # noqa: E402
from benchmarks.methods import METHODS, ablation_changes, senca_settings  # noqa: E402
from benchmarks.run import fingerprint  # noqa: E402
from benchmarks.report import (  # noqa: E402
    ReportContext,
    aggregate,
    render_markdown,
    bootstrap_interval,
    wilcoxon_tests,
    write_results_json,
)


def _record(method, section, seed, ari, nmi=0.5, seconds=10.0, peak=500.0, dataset=None, status="ok"):
    dataset = dataset or ("dlpfc" if section.isdigit() else "her2st")
    return {"method": method, "dataset": dataset, "section": section, "seed": seed, "status": status,
            "ari": ari, "nmi": nmi, "seconds": seconds, "peak_mb": peak}


def test_aggregate_follows_the_results_schema():
    records = [
        _record("senca", "A1", 0, 0.5, seconds=10, peak=400),
        _record("senca", "A1", 1, 0.7, seconds=30, peak=600),
        _record("senca", "A1", 2, 0.6, seconds=20, peak=500),
        _record("senca", "151510", 0, 0.4),
        _record("pca-gmm", "A1", 0, 0.2),
        _record("pca-gmm", "A1", 1, 0.9, status="failed"),  # failures are not aggregated
    ]
    results = aggregate(records)
    assert set(results) == {"her2st", "dlpfc"}
    a1 = results["her2st"]["senca"]["A1"]
    assert set(a1) == {"ari", "ari_std", "nmi", "seconds", "peak_mb"}
    assert a1["ari"] == pytest.approx(0.6)
    assert a1["ari_std"] == pytest.approx(0.1)  # sample standard deviation over seeds
    assert a1["seconds"] == 20 and a1["peak_mb"] == 600  # median seconds, max memory
    assert results["her2st"]["pca-gmm"]["A1"] == {"ari": 0.2, "ari_std": 0.0, "nmi": 0.5, "seconds": 10.0,
                                                  "peak_mb": 500.0}
    assert results["dlpfc"]["senca"]["151510"]["ari"] == pytest.approx(0.4)


def test_results_json_is_ordered_by_protocol(tmp_path):
    records = [_record("senca", s, 0, 0.1) for s in ("H1", "151510", "A1", "C1")]
    path = tmp_path / "results.json"
    write_results_json(aggregate(records), path)
    data = json.loads(path.read_text())
    assert list(data) == ["her2st", "dlpfc"]
    assert list(data["her2st"]["senca"]) == ["A1", "C1", "H1"]


def test_wilcoxon_pairs_sections_and_handles_degenerate_cases():
    sections = ["A1", "B1", "C1", "D1", "E1", "F1", "G2", "H1", "151510"]
    records = [_record("senca", s, 0, 0.5 + 0.01 * i) for i, s in enumerate(sections)]
    records += [_record("worse", s, 0, 0.1) for s in sections]
    records += [_record("same", s, 0, 0.5 + 0.01 * i) for i, s in enumerate(sections)]
    records += [_record("few", s, 0, 0.9) for s in ("A1", "B1")]
    methods = ["senca", "worse", "same", "few", "none"]
    tests = {t.method: t for t in wilcoxon_tests(aggregate(records), "senca", methods)}
    assert "senca" not in tests
    worse = tests["worse"]
    assert len(worse.sections) == 9 and worse.wins == 9 and worse.losses == 0
    assert worse.p_value == pytest.approx(2 / 2**9)  # exact two-sided p: all 9 differences positive
    assert math.isnan(tests["same"].p_value) and "zero" in tests["same"].note
    assert tests["few"].losses == 2 and "only 2" in tests["few"].note
    assert tests["none"].sections == [] and "no section" in tests["none"].note
    # every difference is 0.4 + 0.01 i: the interval lies inside their range, around their mean
    assert 0.4 <= worse.ci_low < worse.mean_difference < worse.ci_high <= 0.48
    assert tests["same"].ci_low == tests["same"].ci_high == 0.0


def test_bootstrap_interval_is_reproducible_and_narrows_with_agreement():
    spread = np.array([-0.14, 0.04, 0.12, 0.08, 0.03, -0.02, 0.01, 0.09, 0.02])
    low, high = bootstrap_interval(spread)
    assert (low, high) == bootstrap_interval(spread)
    assert low < spread.mean() < high and low < 0 < high  # one large loss: the lead may be nil
    steady = np.full(9, spread.mean()) + np.linspace(-0.005, 0.005, 9)
    steady_low, steady_high = bootstrap_interval(steady)
    assert 0 < steady_low and steady_high - steady_low < (high - low) / 5


def test_region_colours_follow_the_matched_label():
    truth = pd.Series(["tumour", "tumour", "stroma", "stroma"], index=list("abcd"))
    regions = pd.Series(["1", "1", "0", "0"], index=list("abcd"))
    colours = label_colours(["tumour", "stroma"])
    out = region_colours(truth, regions, colours)
    assert list(out) == [colours["tumour"]] * 2 + [colours["stroma"]] * 2
    # a spot the method dropped gets no colour
    assert region_colours(truth, regions.drop("d"), colours)[3] == "none"


def test_fingerprint_changes_with_value_and_file(tmp_path):
    file = tmp_path / "source.py"
    file.write_text("a = 1\n")
    key = fingerprint({"seed": 0}, [file])
    assert key == fingerprint({"seed": 0}, [file])
    assert key != fingerprint({"seed": 1}, [file])
    file.write_text("a = 2\n")
    assert key != fingerprint({"seed": 0}, [file])


def test_sections_and_methods_cover_the_issue():
    assert [s.name for s in protocol.SECTIONS] == ["A1", "B1", "C1", "D1", "E1", "F1", "G2", "H1", "151510", "151673", "151674"]
    assert [s.name for s in protocol.SECTIONS if s.image] == ["A1"]
    assert {"senca", "pca-gmm", "pca-gmm-smooth", "leiden", "spagcn", "stagate", "graphst", "banksy", "senca-st-only",
            "senca-image-only", "senca-no-cross-attention", "senca-vanilla-contrastive"} == set(METHODS)
    with pytest.raises(ValueError, match="unknown section"):
        protocol.get_section("Z9")


def test_senca_settings_use_the_defaults_and_quick_scales_epochs():
    from senca.settings import RunSettings

    full = senca_settings("full", quick=False)
    assert full.to_dict() == RunSettings().to_dict()
    quick = senca_settings("st-only", quick=True).model
    default = RunSettings().model
    total = default.epochs_warmup + default.epochs_shared + default.epochs_regions
    assert quick.epochs_warmup + quick.epochs_shared + quick.epochs_regions == max(total // 10, 3)
    assert quick.use_image is False
    assert ablation_changes("image-only") == {}
    with pytest.raises(KeyError):
        ablation_changes("no-such-ablation")
    # the cache key follows the hyper-parameters
    method = METHODS["senca"]
    assert method.params(True) != method.params(False)
    assert "image_only_regions" in METHODS["senca-image-only"].params(False)["switches"]


def test_peer_cache_keys_depend_on_no_senca_model_or_clustering_code():
    repo = Path(__file__).resolve().parents[1]
    for name in ("spagcn", "stagate", "graphst"):
        files = {str(path.relative_to(repo)) for path in METHODS[name].source_files()}
        assert {f"benchmarks/peers/{name}.py", "benchmarks/peers/common.py", "src/senca/io/st.py"} <= files
        assert not [f for f in files if f.startswith("benchmarks/peers/") and name not in f and "common" not in f]
        assert not [f for f in files if f.startswith(("src/senca/clustering", "src/senca/model", "src/senca/graph"))]
    senca_files = {str(path.relative_to(repo)) for path in METHODS["senca"].source_files()}
    assert "src/senca/model/_config.py" in senca_files and "src/senca/pipeline.py" in senca_files


def test_mclust_eee_separates_two_blobs():
    from benchmarks.peers.common import mclust_eee, spot_pitch

    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 0.3, (40, 3)), rng.normal(3, 0.3, (40, 3))])
    labels = mclust_eee(x, 2, seed=0)
    assert len(set(labels[:40])) == 1 and len(set(labels[40:])) == 1 and labels[0] != labels[-1]
    grid = np.array([(x, y) for x in range(5) for y in range(4)], dtype=float) * 200
    assert spot_pitch(grid) == pytest.approx(200)


def test_score_prediction_leaves_out_undetermined_and_dropped_spots():
    import anndata as ad

    obs = pd.DataFrame({"label": pd.Categorical(["a", "a", "b", "b", "undetermined", None])},
                       index=[f"s{i}" for i in range(6)])
    adata = ad.AnnData(obs=obs)
    assert protocol.n_clusters(adata) == 2
    pred = pd.Series(["1", "1", "2", "2", "1", "2"], index=obs.index)
    scores = protocol.score_prediction(adata, pred)
    assert scores == {"ari": 1.0, "nmi": 1.0, "n_scored": 4, "n_regions": 2}
    # a dropped spot is not scored; a wrong one lowers the score
    scores = protocol.score_prediction(adata, pd.Series(["1", "2", "2"], index=["s0", "s1", "s2"]))
    assert scores["n_scored"] == 3 and scores["ari"] < 1


def test_report_renders_tables_tests_and_settings(tmp_path):
    sections = ["A1", "B1", "151510"]
    records = [_record("senca", s, seed, 0.5 + 0.1 * seed) for s in sections for seed in (0, 1)]
    records += [_record("pca-gmm", s, seed, 0.2) for s in sections for seed in (0, 1)]
    records += [_record("senca-st-only", "A1", seed, 0.3) for seed in (0, 1)]
    ctx = ReportContext(command="python benchmarks/run.py --sections A1 B1 151510", quick=False, seeds=[0, 1],
                        methods=["pca-gmm", "spagcn", "senca-st-only", "senca"], sections=sections,
                        reference="senca", params={"senca": {"settings": {"lr": 0.001}}},
                        not_run={"spagcn": "not installed"}, not_applicable={"senca-st-only": ["B1", "151510"]},
                        failed=[{"method": "pca-gmm", "section": "C1", "seed": 0, "error": "boom"}],
                        figures=["regions.png"], versions={"python": "3.11", "machine": "x86_64, 2 CPU cores"},
                        section_info={"A1": {"k": 5, "n_scored": 341}})
    text = render_markdown(aggregate(records), ctx)
    assert "python benchmarks/run.py --sections A1 B1 151510" in text
    assert "| A1 | 0.200 ± 0.000 | 0.300 ± 0.000 | 0.550 ± 0.071 |" in text
    assert "| B1 | 0.200 ± 0.000 | n/a | 0.550 ± 0.071 |" in text
    assert "| B1 | 10 s / 500 MB | n/a | 10 s / 500 MB |" in text
    assert "**HER2ST mean** | **0.200** | **0.300** (1/2) | **0.550** |" in text
    assert text.index("HER2ST mean") < text.index("| 151510 |") < text.index("DLPFC mean")
    assert "| **DLPFC mean** | **0.200** | n/a |" not in text  # a mean never shows where no section ran
    assert "| **mean, all 3 sections** | **0.200** | **0.300** (1/3) | **0.550** |" in text
    assert "spagcn**: not run — not installed" in text and "boom" in text
    assert "| pca-gmm | only 3 section(s): p cannot fall below 0.05 | 3 | 0.350 | 0.350 to 0.350 | 3/0 | 0.2500 |" in text
    assert "| A1 | her2st | st | yes | 5 | 341 |" in text
    assert '"lr": 0.001' in text and "![regions](regions.png)" in text


def test_draw_grid_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    xy = np.array([(x, y) for x in range(12) for y in range(10)], dtype=float) * 100
    names = [f"s{i}" for i in range(len(xy))]
    truth = pd.Series(np.where(xy[:, 0] < 600, "invasive cancer", "adipose tissue"), index=names, dtype=object)
    truth.iloc[:5] = "undetermined"
    noisy = pd.Series(np.where(rng.random(len(xy)) < 0.9, (xy[:, 0] < 600).astype(int), 2).astype(str), index=names)
    image = (np.full((400, 500, 3), 200, np.uint8), 0.3)
    maps = [SectionMaps("X1", xy, truth, {"senca": noisy}, {"senca": 0.71}, image=image),
            SectionMaps("X2", xy, truth, {}, {})]
    path = draw_grid(maps, ["pca-gmm", "senca"], tmp_path / "grid.png", with_image=True)
    assert path.stat().st_size > 10_000
    from PIL import Image

    width, height = Image.open(path).size
    assert width > height  # 4 columns, 2 rows


@pytest.mark.realdata
def test_one_child_run_end_to_end_on_c1(tmp_path):
    """``run.py --quick`` on one small section with the cheapest baseline: the harness, not the method."""
    require(HER2ST / "ST-cnts" / "C1.tsv.gz")
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    command = [sys.executable, str(repo / "benchmarks" / "run.py"), "--quick", "--sections", "C1", "--methods",
               "pca-gmm", "--out", str(out), "--cache", str(tmp_path / "cache")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    c1 = results["her2st"]["pca-gmm"]["C1"]
    assert -1 <= c1["ari"] <= 1 and 0 <= c1["nmi"] <= 1
    assert c1["seconds"] > 0 and c1["peak_mb"] > 50
    text = (out / "RESULTS.md").read_text()
    assert "--quick --sections C1 --methods pca-gmm" in text and "Quick check" in text
    assert (out / "regions.png").is_file()
    cached = list((tmp_path / "cache" / "her2st" / "C1" / "pca-gmm").glob("seed0-quick-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["regions"]


def test_image_only_regions_cluster_the_image_features_of_the_full_model():
    """The image-only ablation is the full model's (warm-up-trained, frozen) image branch, clustered."""
    import dataclasses

    import anndata as ad
    from sklearn.decomposition import PCA

    from senca.clustering import cluster
    from senca.pipeline import image_only_regions, run_section
    from senca.settings import RunSettings
    from senca.simulation import simulate_tissue

    adata = simulate_tissue(n_spots=200, n_genes=400, seed=0)
    settings = RunSettings()
    settings.preprocessing = dataclasses.replace(settings.preprocessing, n_top_genes=200, n_comps=10)
    settings.image = dataclasses.replace(settings.image, patch_px=16)
    settings.model = settings.model.replace(epochs_warmup=1, epochs_image=1, epochs_shared=1, epochs_regions=0,
                                            hidden_dim=32, latent_dim=8, image_batch_size=100)
    # One restart: the property is per training run (restarts combine such runs alike).
    settings.clustering = dataclasses.replace(settings.clustering, k=3, restarts=1)
    regions = image_only_regions(adata.copy(), settings)
    assert regions.index.isin(adata.obs_names).all() and regions.nunique() <= 3

    full = run_section(adata.copy(), settings)
    view = full.adata
    view.obsm["X_image"] = PCA(30, random_state=0).fit_transform(full.model.get_image_features())
    cluster(view, use_rep="X_image", n_clusters=3, refine=True, seed=0, key_added="image_region")
    pd.testing.assert_series_equal(regions.astype(str), view.obs["image_region"].astype(str), check_names=False)

    no_image = ad.AnnData(X=adata.X.copy(), obs=adata.obs.copy(), var=adata.var.copy(),
                          obsm={"spatial": adata.obsm["spatial"]})
    with pytest.raises(SencaInputError, match="no H&E image"):
        image_only_regions(no_image, settings)


def test_parallel_restarts_give_the_sequential_result():
    import dataclasses

    from senca.errors import SencaInputError
    from senca.pipeline import run_section
    from senca.settings import RunSettings
    from senca.simulation import simulate_tissue

    adata = simulate_tissue(n_spots=200, n_genes=400, seed=1)  # with its H&E image: the ResNet path
    settings = RunSettings()
    settings.device = "cpu"
    settings.preprocessing = dataclasses.replace(settings.preprocessing, n_top_genes=200, n_comps=10)
    settings.model = settings.model.replace(epochs_warmup=2, epochs_shared=3, epochs_regions=2, hidden_dim=32,
                                            latent_dim=8)
    settings.clustering = dataclasses.replace(settings.clustering, k=3, restarts=3)
    sequential = run_section(adata.copy(), settings, progress=False)
    parallel = run_section(adata.copy(), dataclasses.replace(settings, clustering=dataclasses.replace(
        settings.clustering, restart_jobs=2)), progress=False)
    assert sequential.metrics["image"] == parallel.metrics["image"] == "patches"
    assert sequential.metrics["restart_jobs"] == 1 and parallel.metrics["restart_jobs"] == 2
    assert parallel.metrics["peak_memory_restart_process_mb"] > 0
    assert np.array_equal(sequential.adata.obsm["X_senca"], parallel.adata.obsm["X_senca"])
    assert sequential.adata.obs["senca_region"].equals(parallel.adata.obs["senca_region"])
    assert sequential.model.config.seed == parallel.model.config.seed
    # the model that came back from its process embeds as it did there
    assert np.array_equal(parallel.model.get_latent_representation(), parallel.adata.obsm["X_senca"])
    with pytest.raises(SencaInputError, match="restart_jobs"):
        run_section(adata.copy(), dataclasses.replace(settings, clustering=dataclasses.replace(
            settings.clustering, restart_jobs=0)), progress=False)


def test_run_section_combines_restarts_into_one_consensus():
    import dataclasses

    from senca.errors import SencaInputError
    from senca.pipeline import run_section
    from senca.settings import RunSettings
    from senca.simulation import simulate_tissue

    adata = simulate_tissue(n_spots=200, n_genes=400, seed=0)
    settings = RunSettings()
    settings.preprocessing = dataclasses.replace(settings.preprocessing, n_top_genes=200, n_comps=10)
    settings.model = settings.model.replace(epochs_warmup=2, epochs_shared=3, epochs_regions=2, hidden_dim=32,
                                            latent_dim=8, use_image=False)
    settings.clustering = dataclasses.replace(settings.clustering, k=3, restarts=3)
    result = run_section(adata.copy(), settings, progress=False)
    assert result.metrics["restarts"] == 3 and -1 <= result.metrics["restart_agreement"] <= 1
    assert np.array_equal(result.adata.obsm["X_senca"], result.model.get_latent_representation())
    assert result.model.config.seed in (0, 1000, 2000)
    confidence = result.adata.obs["senca_region_confidence"]
    assert confidence.between(0, 1).all() and result.adata.obs["senca_region"].nunique() <= 3
    single = run_section(adata.copy(), dataclasses.replace(settings, clustering=dataclasses.replace(
        settings.clustering, restarts=1)), progress=False)
    assert single.metrics["restarts"] == 1 and single.metrics["restart_agreement"] is None
    with pytest.raises(SencaInputError, match="restarts"):
        run_section(adata.copy(), dataclasses.replace(settings, clustering=dataclasses.replace(
            settings.clustering, restarts=0)), progress=False)


def test_reused_entries_fill_only_what_was_not_run(tmp_path):
    from benchmarks.run import merge_results, reused_results

    previous = tmp_path / "results.json"
    old = [_record("stagate", s, 0, 0.3) for s in ("A1", "B1", "151510")] + [_record("senca", "A1", 0, 0.1)]
    write_results_json(aggregate(old), previous)
    sections = [protocol.get_section(s) for s in ("A1", "151510", "151673")]
    reused = reused_results(previous, ["stagate"], sections)
    assert reused == {"her2st": {"stagate": {"A1": aggregate(old)["her2st"]["stagate"]["A1"]}},
                      "dlpfc": {"stagate": {"151510": aggregate(old)["dlpfc"]["stagate"]["151510"]}}}
    merged = merge_results(aggregate([_record("senca", "A1", 0, 0.7)]), reused)
    assert merged["her2st"]["senca"]["A1"]["ari"] == pytest.approx(0.7)  # what ran now is kept
    assert merged["dlpfc"]["stagate"]["151510"]["ari"] == pytest.approx(0.3)
    assert "151673" not in merged["dlpfc"]["stagate"] and "B1" not in merged["her2st"]["stagate"]


def _scale_run(n_spots: int, seconds: float, mb: float) -> dict:
    return {"n_spots": n_spots, "image": False, "seconds": {"preprocess": seconds / 2, "train": seconds / 2},
            "senca_seconds": seconds, "cpu_seconds": {"preprocess": seconds / 4, "train": seconds / 4},
            "senca_cpu_seconds": seconds / 2, "phase_peak_mb": {"preprocess": mb, "train": mb / 2}, "peak_mb": mb,
            "load_average": {"start": 1.0, "end": 2.0, "mean": 1.5}, "settings": {"restarts": 3}}


def test_scale_growth_exponents_recover_known_power_laws():
    from benchmarks.scale import _markdown, growth_exponents

    sizes = [20_000, 100_000, 1_000_000]
    runs = [_scale_run(n, 3.0 * (n / 1000) ** 1.1, 500.0 * (n / 1000) ** 0.8) for n in sizes]
    runs.append({**_scale_run(5_000, 1.0, 1.0)})  # below the slope's range: left out
    runs.append({**_scale_run(20_000, 1e6, 1e6), "image": True})  # with an image: left out
    runs.append({"n_spots": 50_000, "image": False, "error": "exit 1"})  # failed: left out
    growth = growth_exponents(runs)
    assert growth["sizes"] == sizes
    assert growth["time"] == pytest.approx(1.1, abs=1e-3) and growth["cpu_time"] == pytest.approx(1.1, abs=1e-3)
    assert growth["memory"] == pytest.approx(0.8, abs=1e-3)
    assert growth["phase_time"]["train"] == pytest.approx(1.1, abs=1e-3)
    assert growth["phase_memory"]["preprocess"] == pytest.approx(0.8, abs=1e-3)
    text = _markdown({"command": "python benchmarks/scale.py", "machine": "m", "epochs": None, "runs": runs,
                      "growth_exponent": growth})
    assert "wall time 1.1, CPU time 1.1, peak memory 0.8" in text
    assert "failed: exit 1" in text and "1.5 (1.0 / 2.0)" in text and "restarts 3" in text


def test_scale_phase_stats_take_peak_and_cpu_within_each_phase():
    from benchmarks.scale import _phase_stats

    samples = [(t, 100.0 + (500.0 if 2 <= t <= 3 else 0.0), 0.5 * t) for t in np.arange(0, 10.01, 0.5)]
    peaks, cpu = _phase_stats(samples, {"a": (0.0, 4.0), "b": (4.0, 10.0)})
    assert peaks == {"a": 600.0, "b": 100.0}
    assert cpu == {"a": 2.0, "b": 3.0}
