"""Faults and interrupts: --out never touches the inputs, a full disk or a kill leaves nothing half-written.

The kill tests run ``senca`` in a child process and signal it at a phase (restart training with
two worker processes, writing the outputs); they check the exit code, that the workers and the
temporary folders are gone, and that ``--out`` holds nothing or the complete previous outputs.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import senca.outputs as outputs
from senca._process import pid_alive, remove_dead_runs
from senca.cli.main import main
from senca.errors import SencaInputError
from senca.settings import RunSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
import faults  # noqa: E402

SRC = faults.SRC


# ---- --out against the inputs --------------------------------------------------------------

def test_out_that_is_contains_or_lies_inside_an_input(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    section = data / "s.h5ad"
    section.write_text("x")
    for out, problem in [(data, "it contains the input"), (section, "it is the input"),
                         (data / "s.h5ad" / "o", "it lies inside the input"), (tmp_path, "it contains the input")]:
        with pytest.raises(SencaInputError, match=rf"not usable as --out: {problem}"):
            outputs.check_output_dir(out, force=True, inputs=[str(section)])
    with pytest.raises(SencaInputError, match=r"it lies inside the input"):
        outputs.check_output_dir(data / "out", force=True, inputs=[data])
    assert outputs.check_output_dir(tmp_path / "elsewhere", force=True, inputs=[section, None]) == tmp_path / "elsewhere"


def test_cli_refuses_out_over_its_input_and_keeps_it(tmp_path, capsys):
    folder = tmp_path / "her2st"
    (folder / "ST-cnts").mkdir(parents=True)
    (folder / "ST-cnts" / "C1.tsv.gz").write_bytes(b"user data")
    code = main(["run", str(folder), "--sample", "C1", "--force", "--out", str(folder)])
    assert code == 2
    assert "not usable as --out: it is the input" in capsys.readouterr().err
    assert (folder / "ST-cnts" / "C1.tsv.gz").read_bytes() == b"user data"
    config = tmp_path / "c.toml"
    config.write_text("seed = 1\n")
    assert main(["run", str(folder), "--sample", "C1", "--config", str(config), "--force", "--out", str(tmp_path)]) == 2
    assert "it contains the input" in capsys.readouterr().err and config.read_text() == "seed = 1\n"


# ---- writing -------------------------------------------------------------------------------

def small_result():
    adata = ad.AnnData(sp.csr_matrix(np.ones((5, 3), np.float32)))
    return SimpleNamespace(adata=adata, metrics={})


def fake_writer(payload: bytes = b"ok"):
    def write_all(result, settings, folder, title, save_model=False):
        for name in outputs.OUTPUT_FILES:
            (folder / name).write_bytes(payload)
    return write_all


def test_symlinked_out_keeps_the_link_and_fills_its_target(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "_write_all", fake_writer())
    target = tmp_path / "real"
    target.mkdir()
    (target / "old.txt").write_text("old")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(SencaInputError, match=r"link: output folder exists and is not empty"):
        outputs.write_outputs(small_result(), RunSettings(), link, "t")
    outputs.write_outputs(small_result(), RunSettings(), link, "t", force=True)
    assert link.is_symlink() and link.resolve() == target
    assert sorted(p.name for p in target.iterdir()) == sorted(outputs.OUTPUT_FILES)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "not-yet")
    outputs.write_outputs(small_result(), RunSettings(), dangling, "t")
    assert dangling.is_symlink() and (tmp_path / "not-yet" / "metrics.json").is_file()
    assert not list(tmp_path.glob(".*partial"))


def test_unwritable_parent_found_before_any_work(tmp_path, capsys):
    if os.access("/proc", os.W_OK) and Path("/proc/self").exists():
        unwritable = Path("/proc/senca-out/o")  # not writable even for root
    else:
        pytest.skip("no /proc to serve as an unwritable folder")
    with pytest.raises(SencaInputError, match=r"senca-out/o: cannot write in /proc"):
        outputs.check_output_dir(unwritable, force=False)
    # The CLI stops there, before reading the (missing) input.
    assert main(["run", str(tmp_path / "missing.h5ad"), "--out", str(unwritable)]) == 2
    assert "cannot write in /proc" in capsys.readouterr().err


def test_disk_full_while_writing_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def full(result, settings, folder, title, save_model=False):
        (folder / "regions.csv").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "_write_all", full)
    out = tmp_path / "out"
    with pytest.raises(SencaInputError, match=r"out: the disk filled up while writing the outputs \(No space left on device\); nothing was written"):
        outputs.write_outputs(small_result(), RunSettings(), out, "t")
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "regions.csv").write_text("previous")
    with pytest.raises(SencaInputError, match="disk filled up"):
        outputs.write_outputs(small_result(), RunSettings(), out, "t", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "regions.csv").read_text() == "previous"


def test_too_little_free_space_found_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "_write_all", fake_writer())
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: SimpleNamespace(free=60 * 2**20, total=0, used=0))
    monkeypatch.setattr(outputs, "_estimated_bytes", lambda adata: 70 * 2**20)
    with pytest.raises(SencaInputError, match=r"out: 60 MiB free on its disk, the outputs may need up to 70 MiB"):
        outputs.write_outputs(small_result(), RunSettings(), tmp_path / "out", "t")
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: SimpleNamespace(free=1024, total=0, used=0))
    with pytest.raises(SencaInputError, match=r"out: 0 MiB free on its disk; the outputs need at least 50 MiB"):
        outputs.check_output_dir(tmp_path / "out", force=False)
    assert list(tmp_path.iterdir()) == []


def test_real_full_disk_on_a_small_tmpfs(tmp_path, monkeypatch):
    """A 1 MiB tmpfs, where the kernel itself says ENOSPC (to h5py too); needs the right to mount."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")
    try:
        def write_all(result, settings, folder, title, save_model=False):
            big = ad.AnnData(np.random.default_rng(0).random((600, 600)).astype(np.float32))
            big.write_h5ad(folder / "senca.h5ad")  # 1.4 MB, uncompressed

        monkeypatch.setattr(outputs, "_write_all", write_all)
        with pytest.raises(SencaInputError, match=r"out: 1 MiB free on its disk; the outputs need at least 50 MiB"):
            outputs.check_output_dir(mount / "out", force=True)
        monkeypatch.setattr(outputs, "_estimated_bytes", lambda adata: 0)  # reach the disk for real
        monkeypatch.setattr(outputs, "MIN_FREE_BYTES", 0)
        (mount / "out").mkdir()
        (mount / "out" / "kept.txt").write_text("previous outputs")
        with pytest.raises(SencaInputError, match=r"out: the disk filled up while writing the outputs"):
            outputs.write_outputs(small_result(), RunSettings(), mount / "out", "t", force=True)
        assert sorted(p.name for p in mount.iterdir()) == ["out"]
        assert [p.name for p in (mount / "out").iterdir()] == ["kept.txt"]
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_leftovers_of_killed_runs_are_cleaned_by_the_next_run(tmp_path):
    dead = 2**22 + 12345  # above the usual pid_max: no such process
    assert not pid_alive(dead) and pid_alive(os.getpid())
    stale = tmp_path / f".out.{dead}.abc.partial"
    live = tmp_path / f".out.{os.getpid()}.def.partial"
    other = tmp_path / f".other.{dead}.ghi.partial"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "regions.csv").write_text("x")
    previous = tmp_path / ".out.previous"
    previous.mkdir()
    (previous / "regions.csv").write_text("the user's last outputs")
    outputs.check_output_dir(tmp_path / "out", force=True)
    assert not stale.exists() and live.exists() and other.exists()
    # The run was killed between moving the old outputs aside and moving the new ones in: restored.
    assert (tmp_path / "out" / "regions.csv").read_text() == "the user's last outputs" and not previous.exists()
    temp = tmp_path / f"senca-restarts-{dead}.xyz"
    temp.mkdir()
    assert remove_dead_runs(tmp_path, "senca-restarts-") == [temp]


def test_settings_checked_before_any_data_is_read(tmp_path, capsys):
    missing = str(tmp_path / "missing.h5ad")
    out = str(tmp_path / "o")
    config = tmp_path / "c.toml"
    cases = [
        (["--seed", "-1"], "flags: seed = -1; expected an integer from 0 to 2**32 - 1"),
        (["--device", "bogus"], "flags: device = 'bogus'; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        (["--jobs", "0"], "[clustering] restart_jobs = 0; expected 'auto' or an integer >= 1"),
        (["--k", "1"], "[clustering] k = 1; expected at least 2 regions"),
        (["--patch-spots", "-2"], "[image] patch_spots = -2.0"),
    ]
    import torch
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "device = 'cuda', but CUDA is not available on this machine"))
    for flags, message in cases:
        assert main(["run", missing, "--out", out, *flags]) == 2, flags
        assert message in capsys.readouterr().err, flags
    for text, message in [("[clustering]\nk = \"5\"\n", "[clustering] k = '5'; expected an integer or unset"),
                          ("seed = 1.5\n", "seed = 1.5; expected an integer"),
                          ("[model]\nlr = -0.1\n", "[model] lr = -0.1; expected a positive learning rate"),
                          ("[model]\nlr = nan\n", "[model] lr = nan; expected a finite number"),
                          ("[model]\nhidden_dim = 0\n", "[model]: SencaConfig.hidden_dim=0: expected a positive integer"),
                          ("[input]\nimage_scale = 0.0\n", "[input] image_scale = 0.0; expected a positive number")]:
        config.write_text(text)
        assert main(["run", missing, "--out", out, "--config", str(config)]) == 2, text
        err = capsys.readouterr().err
        assert f"{config}" in err and message in err, (text, err)
    assert not (tmp_path / "o").exists()


# ---- signals -------------------------------------------------------------------------------
# The scenarios live in fuzz/faults.py, which also measures them for fuzz/FAULTS.md.

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find child processes")


@pytest.fixture(scope="module")
def section(tmp_path_factory):
    return faults.make_section(tmp_path_factory.mktemp("section"))


@linux_only
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_parallel_training_ends_workers_and_leaves_nothing(tmp_path, section, signum, code):
    result = faults.signal_during_training(tmp_path, section, signum)
    assert result["exit code"] == code, result
    assert result["message"] == [f"senca: {'terminated' if code == 143 else 'interrupted'}; no outputs were written"]
    assert result["workers"] >= 1 and result["workers still running"] == 0  # the second may still be starting
    assert result["fork servers"] == 1  # the workers forked from it; it ended too
    assert not result["out exists"] and result["partial folders left"] == 0 and result["restart folders left"] == 0


@linux_only
def test_workers_die_with_a_killed_parent(tmp_path, section):
    result = faults.kill_parent_during_training(tmp_path, section)
    assert result["exit code"] == -signal.SIGKILL and result["workers"] >= 1
    assert result["seconds until the workers ended"] is not None and result["workers still running"] == 0
    assert result["fork servers"] == 1
    # nothing could remove the restart folder, until the next run
    assert result["restart folders left"] == 1 and result["restart folders removed by the next run"] == 1


@linux_only
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_kill_while_writing_outputs(tmp_path, section, signum):
    result = faults.signal_while_writing(tmp_path, section, signum)
    assert result["exit code"] == (143 if signum == signal.SIGTERM else -signal.SIGKILL), result
    assert result["partial folders while writing"] == 1 and result["previous outputs intact"]
    # SIGTERM cleans up at once; after SIGKILL the partial folder stays until the next run
    assert result["partial folders left"] == (0 if signum == signal.SIGTERM else 1)
    assert result["partial folders after the next run's check"] == 0


def test_die_with_parent_via_a_server_exits_when_the_starter_is_gone(tmp_path):
    """A worker forked by a server has the server as its parent; it watches the process that asked for it."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    code = subprocess.run([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                           f"from senca._process import die_with_parent; die_with_parent({dead.pid}, 0.1, via_server=True);"
                           "time.sleep(30)", str(SRC)], timeout=60).returncode
    assert code == 1
    alive = os.getpid()  # this test's process lives on: the worker runs to its end
    code = subprocess.run([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                           f"from senca._process import die_with_parent; die_with_parent({alive}, 0.1, via_server=True);"
                           "time.sleep(0.5)", str(SRC)], timeout=60).returncode
    assert code == 0


def test_die_with_parent_exits_an_orphan(tmp_path):
    """The worker initializer ends a process whose parent is gone (here: a parent id it never had)."""
    code = subprocess.run([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                           "from senca._process import die_with_parent; die_with_parent(1, 0.1); time.sleep(30)", str(SRC)],
                          timeout=60).returncode
    assert code == 1


def test_restart_server_keeps_its_imports_from_the_collector():
    """The restart processes' fork server freezes what its imports made, so its exit does not walk
    them (about a second) while it still holds the caller's output; the caller's objects stay collectable."""
    script = ("import gc, sys; sys.path.insert(0, sys.argv[1]);"
              "from concurrent.futures import ProcessPoolExecutor;"
              "from senca._process import WORKER_MODULES, worker_context;"
              "pool = ProcessPoolExecutor(1, mp_context=worker_context(WORKER_MODULES));"
              "print(pool.submit(gc.get_freeze_count).result(), gc.get_freeze_count()); pool.shutdown()")
    out = subprocess.run([sys.executable, "-c", script, str(SRC)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    in_worker, in_caller = map(int, out.stdout.split())
    assert in_worker > 10_000  # torch alone makes far more objects than this
    assert in_caller == 0
