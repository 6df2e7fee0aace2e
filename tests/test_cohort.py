"""Cohorts: the manifest, region matching, and runs on a real Dask LocalCluster (processes)."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

from senca.cohort import match_sections, read_manifest, run_cohort
from senca.errors import SencaInputError
from senca.settings import RunSettings, read_toml
from senca.simulation import simulate_tissue

# Short schedule, no image, one restart: the tests exercise the cohort machinery, not the model.
FAST = """seed = 0
[preprocessing]
n_comps = 15
[clustering]
restarts = 1
[model]
use_image = false
epochs_warmup = 2
epochs_shared = 4
epochs_regions = 1
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sections")
    for seed in range(3):
        simulate_tissue(n_spots=200, seed=seed).write_h5ad(folder / f"s{seed}.h5ad")
    (folder / "broken.h5ad").write_text("not an h5ad file")
    (folder / "fast.toml").write_text(FAST)
    return folder


def fast_settings(data) -> RunSettings:
    return RunSettings.from_dict(read_toml(data / "fast.toml"))


# --- manifest -----------------------------------------------------------------------------

def test_manifest_csv_and_toml(data):
    (data / "m.csv").write_text("path,group,patient\ns0.h5ad,her2,P1\ns1.h5ad,her2,P2\n")
    sections = read_manifest(data / "m.csv")
    assert [s.name for s in sections] == ["s0", "s1"] and sections[1].patient == "P2"
    assert sections[0].input.path == str((data / "s0.h5ad").resolve())
    (data / "m.toml").write_text('[[section]]\npath = "s0.h5ad"\nname = "first"\n[[section]]\npath = "s1.h5ad"\n')
    assert [s.name for s in read_manifest(data / "m.toml")] == ["first", "s1"]


@pytest.mark.parametrize("text, message", [
    ("path,colour\ns0.h5ad,red\n", r"line 2, field 'colour': unknown field"),
    ("path,image_scale\ns0.h5ad,abc\n", r"line 2, field 'image_scale': got 'abc'; expected a positive number"),
    ("path\ns0.h5ad\nmissing.h5ad\n", r"line 3, field 'path': .*missing.h5ad does not exist"),
    ("path,name\ns0.h5ad,a\ns1.h5ad,a\n", r"line 3, field 'name': 'a' is used by line 2 too"),
    ("path,name\ns0.h5ad,a/b\n", r"line 2, field 'name': 'a/b' cannot name an output folder"),
    ("group\nx\n", r"line 2, field 'path': missing"),
    ("path,format\ns0.h5ad,zarr\n", r"field 'format': got 'zarr'"),
])
def test_manifest_errors_name_file_row_and_field(data, text, message):
    (data / "bad.csv").write_text(text)
    with pytest.raises(SencaInputError, match=message) as err:
        read_manifest(data / "bad.csv")
    assert str(data / "bad.csv") in str(err.value)


def test_manifest_toml_errors(data):
    (data / "bad.toml").write_text('[[section]]\npath = "s0.h5ad"\nimage_scale = -1\n')
    with pytest.raises(SencaInputError, match=r"bad.toml: \[\[section\]\] 1, field 'image_scale': got -1"):
        read_manifest(data / "bad.toml")


# --- matching -----------------------------------------------------------------------------

def test_matching_recovers_permuted_regions():
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(300)]
    truth = rng.normal(0, 1, (4, 300))
    profiles = {}
    orders = {"a": [0, 1, 2, 3], "b": [2, 0, 3, 1], "c": [3, 2, 1]}  # c lacks truth region 0
    for name, order in orders.items():
        noisy = truth[order] + rng.normal(0, 0.5, (len(order), 300))
        profiles[name] = pd.DataFrame(noisy, index=[str(i) for i in range(len(order))], columns=genes)
    table = match_sections(profiles)
    ids = {(r.section, r.region): r.cohort_region for r in table.itertuples()}
    for name, order in orders.items():
        for region, true in enumerate(order):
            # the same true region gets the same cohort id in every section
            assert ids[(name, str(region))] == ids[("a", str(orders["a"].index(true)))]
    assert (table["correlation"] > 0.5).all()


# --- runs on a real LocalCluster -----------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    dask = pytest.importorskip("dask")
    from distributed import Client, LocalCluster

    # No retries: a task whose worker dies fails at once (Dask's default retries it 3 times);
    # no task queued behind a running one (as senca's local cluster).
    with dask.config.set({"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.worker-saturation": 1.0}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster)
        yield client
        try:
            client.close()
            cluster.close()
        except TimeoutError:  # a slow shutdown on a loaded machine is not what these tests check
            pass


def test_local_cluster_workers_allocate_like_a_plain_process():
    """Dask's nanny would start workers with MALLOC_TRIM_THRESHOLD_=65536 (every freed tensor handed
    back to the kernel, half a training run's CPU in page faults); senca's local cluster does not."""
    import os

    pytest.importorskip("distributed")
    from senca.cohort.run import local_client

    if "MALLOC_TRIM_THRESHOLD_" in os.environ:
        pytest.skip("MALLOC_TRIM_THRESHOLD_ is set in this environment; workers inherit it")
    client = local_client(workers=1)
    try:
        environ = client.run(lambda: {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")})
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    assert list(environ.values()) == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}]


def test_tasks_give_the_resnet_pass_the_workers_threads_not_every_core(client):
    """Two one-thread workers on one machine: each ResNet pass takes one thread, not both cores."""
    from senca.cohort.run import _within_worker

    def on_worker(settings):
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            threads = _within_worker(settings).model.image_num_threads
        return threads, [str(w.message) for w in caught]

    settings = RunSettings()
    assert settings.model.image_num_threads is None  # every core, for a process on its own
    assert client.submit(on_worker, settings, pure=False).result() == (1, [])  # no deprecated Dask API either
    given = settings.model.replace(image_num_threads=3)
    chosen = client.submit(_within_worker, RunSettings(model=given), pure=False).result()
    assert chosen.model.image_num_threads == 3  # a user's number is kept
    assert _within_worker(settings) is settings  # outside a worker nothing changes


def _manifest(data, names, path):
    path.write_text("path,name\n" + "".join(f"{data / n}.h5ad,{n}\n" for n in names))
    return read_manifest(path)


def test_broken_section_is_reported_the_rest_finish_and_resume(data, client, tmp_path):
    sections = _manifest(data, ["s0", "s1", "broken"], tmp_path / "m.csv")
    out = tmp_path / "out"
    result = run_cohort(sections, out, fast_settings(data), client, mode="independent", progress=False)
    assert result.failed == ["broken"]
    status = pd.read_csv(out / "status.csv").set_index("section")
    assert status.loc["broken", "status"] == "failed" and "cannot read as .h5ad" in status.loc["broken", "error"]
    assert "broken" in (out / "report.html").read_text()
    for name in ("s0", "s1"):
        assert (out / "sections" / name / "report.html").is_file()
    regions = pd.read_csv(out / "regions.csv", dtype=str)
    assert set(regions["section"]) == {"s0", "s1"} and regions["cohort_region"].notna().all()
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores["section"]) == {"s0", "s1"} and (scores["ari"] > 0.2).all()
    stamp = (out / "sections" / "s0" / "senca.h5ad").stat().st_mtime_ns

    # the broken input is fixed: the rerun runs it and keeps the others untouched
    (data / "broken.h5ad").unlink()
    simulate_tissue(n_spots=200, seed=2).write_h5ad(data / "broken.h5ad")
    try:
        again = run_cohort(sections, out, fast_settings(data), client, mode="independent", progress=False)
    finally:
        (data / "broken.h5ad").write_text("not an h5ad file")
    assert again.failed == []
    assert dict(zip(again.status["section"], again.status["status"])) == {"s0": "kept", "s1": "kept", "broken": "done"}
    assert (out / "sections" / "s0" / "senca.h5ad").stat().st_mtime_ns == stamp
    # other settings in the same folder are refused rather than mixed in
    other = fast_settings(data)
    other.seed = 1
    with pytest.raises(SencaInputError, match="holds a run with other settings"):
        run_cohort(sections, out, other, client, mode="independent", progress=False)


def test_joint_restarts_train_as_tasks_with_the_regions_of_one_process(data, client, tmp_path):
    """The joint model's restarts are Dask tasks spread over the workers; the regions are those
    of the same restarts trained one after another in this process."""
    from distributed import get_task_stream

    from senca.cohort.run import LIBRARY_KEY, section_settings
    from senca.io import concat_sections
    from senca.pipeline import REGION_KEY, load_section, run_section

    sections = _manifest(data, ["s0", "s1"], tmp_path / "m.csv")
    settings = fast_settings(data)
    settings.clustering.restarts = 3
    with get_task_stream(client) as stream:
        result = run_cohort(sections, tmp_path / "out", settings, client, mode="joint", progress=False)
    assert result.failed == []
    restarts = [task for task in stream.data if str(task["key"]).startswith("senca-restart-")]
    assert len(restarts) == 3

    joined = concat_sections({s.name: load_section(section_settings(settings, s)) for s in sections}, library_key=LIBRARY_KEY)
    expected = run_section(joined, settings, progress=False, library_key=LIBRARY_KEY).adata.obs
    regions = pd.read_csv(tmp_path / "out" / "regions.csv", dtype=str)
    cohort = pd.Series(regions["region"].to_numpy(), index=regions["section"] + ":" + regions["spot"])
    assert len(cohort) == len(expected)
    assert (cohort.loc[expected.index].to_numpy() == expected[REGION_KEY].astype(str).to_numpy()).all()


def _kill_a_busy_worker(client, prefix: str, killed: list) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        busy = [worker for worker, keys in client.processing().items() if any(str(k).startswith(prefix) for k in keys)]
        if busy:
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(busy[0])
            return
        time.sleep(0.2)


def test_killed_worker_leaves_the_rest_finished_and_resumable(data, client, tmp_path):
    sections = _manifest(data, ["s0", "s1", "s2"], tmp_path / "m.csv")
    out = tmp_path / "out"
    killed: list = []
    killer = threading.Thread(target=_kill_a_busy_worker, args=(client, "senca-section-", killed))
    killer.start()
    result = run_cohort(sections, out, fast_settings(data), client, mode="independent", progress=False)
    killer.join()
    assert killed, "no worker was busy with a section"
    assert 1 <= len(result.failed) < 3  # the section(s) on the killed worker; the rest finished
    status = pd.read_csv(out / "status.csv").set_index("section")
    assert all("KilledWorker" in status.loc[name, "error"] for name in result.failed)
    finished = [n for n in ("s0", "s1", "s2") if n not in result.failed]
    assert all((out / "sections" / n / "senca.h5ad").is_file() for n in finished)
    again = run_cohort(sections, out, fast_settings(data), client, mode="independent", progress=False)
    assert again.failed == []
    assert set(again.status.loc[again.status["status"] == "kept", "section"]) == set(finished)
    assert not list((out / "sections").glob(".*.partial"))


def test_cli_joint_mode_on_a_scheduler_address(data, client, tmp_path):
    from senca.cli.main import main

    _manifest(data, ["s0", "s1", "broken"], tmp_path / "m.csv")
    out = tmp_path / "joint"
    argv = ["cohort", str(tmp_path / "m.csv"), "--out", str(out), "--mode", "joint", "--scheduler",
            client.scheduler.address, "--config", str(data / "fast.toml"), "-q"]
    assert main(argv) == 3  # one section failed, the others finished
    regions = pd.read_csv(out / "regions.csv", dtype=str)
    # one clustering over both sections: cohort ids are the joint model's own regions
    assert (regions["region"] == regions["cohort_region"]).all()
    assert set(regions["section"]) == {"s0", "s1"}
    config = (out / "sections" / "s0" / "config.toml").read_text()
    assert "epochs_shared = 4" in config
    stamp = (out / "sections" / "s0" / "senca.h5ad").stat().st_mtime_ns
    assert main(argv) == 3  # resumed: the joint run over the readable sections is kept
    assert (out / "sections" / "s0" / "senca.h5ad").stat().st_mtime_ns == stamp


def test_cli_bad_manifest_and_flags_exit_2_before_any_work(data, tmp_path, capsys):
    from senca.cli.main import main

    (tmp_path / "m.csv").write_text(f"path,colour\n{data / 's0.h5ad'},red\n")
    assert main(["cohort", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "m.csv: line 2, field 'colour': unknown field" in capsys.readouterr().err
    (tmp_path / "m.csv").write_text(f"path\n{data / 's0.h5ad'}\n")
    assert main(["cohort", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"), "--jobs", "2"]) == 2
    assert "use --workers" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
