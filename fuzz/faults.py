"""Kill and disk-full scenarios for ``senca run``, measured in child processes (Linux: reads /proc).

    PYTHONPATH=src python fuzz/faults.py [--results fuzz/FAULTS.md]

Each scenario runs the real command on a simulated 200-spot section and reports what a user
would find afterwards: the exit code, seconds from the signal to the exit, worker processes still
running, temporary and partial folders left, and the state of ``--out``. ``tests/test_faults.py``
runs the same scenarios and asserts on them.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Runs the real command; with SENCA_TEST_HOLD_WRITE it stops after the outputs are written into
# the staging folder, before they are moved into place, so that a signal lands there.
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


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def servers_of(pid: int) -> list[int]:
    """The multiprocessing fork servers among ``pid``'s children."""
    return [child for child in children(pid) if "multiprocessing.forkserver" in _cmdline(child)]


def workers_of(pid: int) -> list[int]:
    """The worker processes started for ``pid``: spawned children, or children of its fork server."""
    spawned = [child for child in children(pid) if "spawn_main" in _cmdline(child)]
    return spawned + [worker for server in servers_of(pid) for worker in children(server)]


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_for(condition, timeout: float, what: str):
    """Poll ``condition`` until it returns something true; raise after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def make_section(folder: Path) -> Path:
    """A simulated 200-spot section with its H&E image, as .h5ad."""
    from senca.simulation import simulate_tissue

    path = folder / "sim.h5ad"
    simulate_tissue(n_spots=200, seed=0).write_h5ad(path)
    return path


def start(folder: Path, args: list[str], hold_write: bool = False) -> subprocess.Popen:
    """``senca`` in a child process whose temporary folders go to ``folder/tmp``."""
    (folder / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "TMPDIR": str(folder / "tmp")}
    if hold_write:
        env["SENCA_TEST_HOLD_WRITE"] = "1"
    # A shell starts background jobs with SIGINT ignored, and children inherit that: restore it.
    return subprocess.Popen([sys.executable, "-c", DRIVER, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _leftovers(folder: Path) -> dict:
    return {"restart folders left": len(list((folder / "tmp").glob("senca-restarts-*"))),
            "partial folders left": len(list(folder.glob(".out.*.partial")))}


def signal_during_training(folder: Path, section: Path, signum: int) -> dict:
    """Signal ``senca run --jobs 2`` while its two restart workers train."""
    proc = start(folder, ["run", str(section), "--out", str(folder / "out"), "--restarts", "2", "--jobs", "2", "-q"])
    try:
        wait_for(lambda: list((folder / "tmp").glob("senca-restarts-*")), 240, "the restart folder")
        workers = wait_for(lambda: workers_of(proc.pid), 120, "restart workers")
        servers = servers_of(proc.pid)  # a fork server, which must end with them
        time.sleep(3)  # the workers are starting or training
        sent = time.monotonic()
        proc.send_signal(signum)
        code = proc.wait(timeout=120)
        stopped = time.monotonic() - sent
        try:
            wait_for(lambda: not any(map(running, workers + servers)), 30, "workers to end")
        except TimeoutError:
            pass
        alive = sum(map(running, workers + servers))
    finally:
        proc.kill()
    return {"exit code": code, "seconds to exit": round(stopped, 1), "workers": len(workers),
            "fork servers": len(servers), "workers still running": alive, "message": proc.stderr.read().strip().splitlines()[-1:],
            "out exists": (folder / "out").exists(), **_leftovers(folder)}


def kill_parent_during_training(folder: Path, section: Path) -> dict:
    """SIGKILL ``senca run --jobs 2`` (no clean-up can run), then see the workers go and the next run clean up."""
    from senca._process import remove_dead_runs

    proc = start(folder, ["run", str(section), "--out", str(folder / "out"), "--restarts", "2", "--jobs", "2", "-q"])
    try:
        wait_for(lambda: list((folder / "tmp").glob("senca-restarts-*")), 240, "the restart folder")
        workers = wait_for(lambda: workers_of(proc.pid), 120, "restart workers")
        servers = servers_of(proc.pid)
        time.sleep(2)
        sent = time.monotonic()
        proc.kill()
        proc.wait(timeout=30)
    finally:
        proc.kill()
    try:
        wait_for(lambda: not any(map(running, workers + servers)), 30, "orphaned workers to end")
        gone = round(time.monotonic() - sent, 1)
    except TimeoutError:
        gone = None
    left = _leftovers(folder)
    removed = remove_dead_runs(folder / "tmp", "senca-restarts-")
    return {"exit code": proc.returncode, "workers": len(workers), "fork servers": len(servers),
            "seconds until the workers ended": gone, "workers still running": sum(map(running, workers + servers)),
            **left,
            "restart folders removed by the next run": len(removed)}


def signal_while_writing(folder: Path, section: Path, signum: int) -> dict:
    """Signal ``senca run --force`` after its outputs are staged, before they replace the previous ones."""
    from senca.outputs import check_output_dir

    out = folder / "out"
    out.mkdir()
    (out / "regions.csv").write_text("previous outputs")
    proc = start(folder, ["run", str(section), "--out", str(out), "--force", "--restarts", "1", "--epochs", "2",
                          "--k", "3", "-q"], hold_write=True)
    try:
        line = proc.stdout.readline().strip()
        if line != "WRITTEN":
            raise RuntimeError(f"the run did not reach the writing step: {proc.stderr.read()[-2000:]}")
        staged = len(list(folder.glob(".out.*.partial")))
        sent = time.monotonic()
        proc.send_signal(signum)
        code = proc.wait(timeout=120)
        stopped = time.monotonic() - sent
    finally:
        proc.kill()
    kept = (out / "regions.csv").read_text() == "previous outputs" and len(list(out.iterdir())) == 1
    left = _leftovers(folder)
    check_output_dir(out, force=True)  # what the next run does first
    return {"exit code": code, "seconds to exit": round(stopped, 1), "partial folders while writing": staged,
            "previous outputs intact": kept, **left,
            "partial folders after the next run's check": len(list(folder.glob(".out.*.partial")))}


def full_disk(folder: Path, section: Path) -> dict | None:
    """``senca run`` into a 1 MiB tmpfs (needs the right to mount; None where there is none)."""
    mount = folder / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        return None
    try:
        proc = start(folder, ["run", str(section), "--out", str(mount / "out"), "--restarts", "1", "--epochs", "2",
                              "--k", "3", "-q"])
        _, err = proc.communicate(timeout=600)
        return {"exit code": proc.returncode, "message": err.strip().splitlines()[-1:],
                "left on the disk": sorted(p.name for p in mount.iterdir())}
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=None, help="write the results as markdown to this file")
    args = parser.parse_args()
    scenarios = [
        ("SIGTERM during training, --jobs 2", lambda f, s: signal_during_training(f, s, signal.SIGTERM)),
        ("SIGINT during training, --jobs 2", lambda f, s: signal_during_training(f, s, signal.SIGINT)),
        ("SIGKILL of the parent during training, --jobs 2", kill_parent_during_training),
        ("SIGTERM while writing the outputs (--force over previous outputs)", lambda f, s: signal_while_writing(f, s, signal.SIGTERM)),
        ("SIGKILL while writing the outputs (--force over previous outputs)", lambda f, s: signal_while_writing(f, s, signal.SIGKILL)),
        ("--out on a 1 MiB tmpfs (full disk)", full_disk),
    ]
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        section = make_section(Path(tmp))
        for name, scenario in scenarios:
            with tempfile.TemporaryDirectory() as folder:
                result = scenario(Path(folder), section)
            text = "not run: cannot mount a tmpfs here" if result is None else "; ".join(f"{k}: {v}" for k, v in result.items())
            lines.append(f"- **{name}**: {text}")
            print(lines[-1], flush=True)
    if args.results:
        args.results.write_text("# Kill and disk-full results\n\n`PYTHONPATH=src python fuzz/faults.py "
                                + " ".join(sys.argv[1:]) + "` (simulated 200-spot section).\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
