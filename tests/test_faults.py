"""Faults and interrupts: --out never touches the inputs, a full disk or a kill leaves nothing half-written.

The kill tests run ``senca`` in a child process and signal it at a phase (restart training with
two worker processes, writing the outputs); they check the exit code, that the workers and the
temporary folders are gone, and that ``--out`` holds nothing or the complete previous outputs.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
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

SRC = Path(__file__).resolve().parents[1] / "src"


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
    def write_all(result, settings, folder, title):
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
    def full(result, settings, folder, title):
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
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: SimpleNamespace(free=1024, total=2048, used=1024))
    with pytest.raises(SencaInputError, match=r"out: 0 MiB free on its disk, the outputs may need up to 50 MiB"):
        outputs.write_outputs(small_result(), RunSettings(), tmp_path / "out", "t")
    assert list(tmp_path.iterdir()) == []


def test_real_full_disk_on_a_small_tmpfs(tmp_path, monkeypatch):
    """A 1 MiB tmpfs, where the kernel itself says ENOSPC (to h5py too); needs the right to mount."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")
    try:
        def write_all(result, settings, folder, title):
            big = ad.AnnData(np.random.default_rng(0).random((600, 600)).astype(np.float32))
            big.write_h5ad(folder / "senca.h5ad")  # 1.4 MB, uncompressed

        monkeypatch.setattr(outputs, "_write_all", write_all)
        monkeypatch.setattr(outputs, "_estimated_bytes", lambda adata: 0)  # reach the disk for real
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
        (["--jobs", "0"], "[clustering] restart_jobs = 0; expected an integer >= 1"),
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

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find child processes")


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid) and fields.get("State", "").strip()[:1] != "Z":
            found.append(int(status.parent.name))
    return found


def workers_of(pid: int) -> list[int]:
    """The spawned worker processes among ``pid``'s children."""
    found = []
    for child in children(pid):
        try:
            if "spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
                found.append(child)
        except OSError:
            continue
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_for(condition, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def section(tmp_path_factory):
    from senca.simulation import simulate_tissue
    path = tmp_path_factory.mktemp("section") / "sim.h5ad"
    simulate_tissue(n_spots=200, seed=0).write_h5ad(path)
    return path


# The driver runs the real command; with SENCA_TEST_HOLD_WRITE it stops after the outputs are
# written into the staging folder, before they are moved into place, so that a signal lands there.
DRIVER = textwrap.dedent("""
    import os, sys, time
    import senca.outputs as outputs
    if os.environ.get("SENCA_TEST_HOLD_WRITE"):
        write_all = outputs._write_all
        def held(*args):
            write_all(*args)
            print("WRITTEN", flush=True)
            time.sleep(600)
        outputs._write_all = held
    from senca.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def start(tmp_path, args, hold_write=False):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    if hold_write:
        env["SENCA_TEST_HOLD_WRITE"] = "1"
    return subprocess.Popen([sys.executable, "-c", DRIVER, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@linux_only
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_parallel_training_ends_workers_and_leaves_nothing(tmp_path, section, signum, code):
    out = tmp_path / "out"
    proc = start(tmp_path, ["run", str(section), "--out", str(out), "--restarts", "2", "--jobs", "2", "-q"])
    try:
        wait_for(lambda: list((tmp_path / "tmp").glob("senca-restarts-*")), 240, "the restart folder")
        workers = wait_for(lambda: workers_of(proc.pid), 120, "restart workers")
        time.sleep(3)  # the workers are importing torch or training
        proc.send_signal(signum)
        returncode = proc.wait(timeout=60)  # a hang guard, not a speed requirement
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert returncode == code, err
    assert ("terminated" if signum == signal.SIGTERM else "interrupted") in err
    wait_for(lambda: not any(map(running, workers)) or None, 30, "workers to end")
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    assert not list((tmp_path / "tmp").glob("senca-restarts-*"))


@linux_only
def test_workers_die_with_a_killed_parent(tmp_path, section):
    proc = start(tmp_path, ["run", str(section), "--out", str(tmp_path / "out"), "--restarts", "2", "--jobs", "2", "-q"])
    try:
        wait_for(lambda: list((tmp_path / "tmp").glob("senca-restarts-*")), 240, "the restart folder")
        workers = wait_for(lambda: workers_of(proc.pid), 120, "restart workers")
        time.sleep(2)
        proc.kill()  # SIGKILL: no clean-up can run in the parent
        proc.wait(timeout=30)
    finally:
        proc.kill()
    wait_for(lambda: not any(map(running, workers)) or None, 30, "orphaned workers to end")
    leftover = list((tmp_path / "tmp").glob("senca-restarts-*"))
    assert leftover  # nothing could remove it ...
    assert remove_dead_runs(tmp_path / "tmp", "senca-restarts-") == leftover  # ... until the next run


@linux_only
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_kill_while_writing_outputs(tmp_path, section, signum):
    out = tmp_path / "out"
    out.mkdir()
    (out / "regions.csv").write_text("previous outputs")
    proc = start(tmp_path, ["run", str(section), "--out", str(out), "--force", "--restarts", "1", "--epochs", "2",
                            "--k", "3", "-q"], hold_write=True)
    try:
        assert proc.stdout.readline().strip() == "WRITTEN", proc.stderr.read() if proc.poll() is not None else ""
        assert len(list(tmp_path.glob(".out.*.partial"))) == 1
        proc.send_signal(signum)
        returncode = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert returncode == (143 if signum == signal.SIGTERM else -signal.SIGKILL)
    assert (out / "regions.csv").read_text() == "previous outputs" and len(list(out.iterdir())) == 1
    if signum == signal.SIGKILL:  # the partial folder of the killed run is left ...
        assert len(list(tmp_path.glob(".out.*.partial"))) == 1
        outputs.check_output_dir(out, force=True)  # ... and the next run removes it
    assert not list(tmp_path.glob(".out.*"))


def test_die_with_parent_exits_an_orphan(tmp_path):
    """The worker initializer ends a process whose parent is gone (here: a parent id it never had)."""
    code = subprocess.run([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                           "from senca._process import die_with_parent; die_with_parent(1, 0.1); time.sleep(30)", str(SRC)],
                          timeout=60).returncode
    assert code == 1
