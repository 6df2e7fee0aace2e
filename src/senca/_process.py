"""Process housekeeping: folders that name their owner's pid, workers that die with their parent,
and the memory that arrays take and that is free for new processes.

A run killed without a chance to clean up (SIGKILL, power loss) leaves its temporary folders
behind; they carry the run's pid so that the next run can tell them from a live run's.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.context
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import scipy.sparse as sp

logger = logging.getLogger(__name__)

# What senca's restart processes import: the model, and through it torch (not the pipeline:
# scanpy and the plots would make every run wait about a second longer for the server).
WORKER_MODULES = ("senca._restart_server",)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user's counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def array_bytes(array: Any) -> int:
    """Bytes held by a dense or scipy-sparse array (0 for ``None``)."""
    if array is None:
        return 0
    if sp.issparse(array):
        return sum(getattr(array, name).nbytes for name in ("data", "indices", "indptr"))
    return int(getattr(array, "nbytes", 0))


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def available_memory() -> int:
    """Bytes of memory free for new processes (``MemAvailable``; the total where that is unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def owned_prefix(stem: str) -> str:
    """Prefix for a temporary folder owned by this process: ``<stem><pid>.``."""
    return f"{stem}{os.getpid()}."


def remove_dead_runs(parent: Path, stem: str, suffix: str = "") -> list[Path]:
    """Remove folders ``<stem><pid>.*<suffix>`` in ``parent`` whose process is gone; return them."""
    pattern = re.compile(re.escape(stem) + r"(\d+)\..*" + re.escape(suffix) + "$")
    removed = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not pid_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                logger.info("removed %s, left by an interrupted run (process %s)", entry, match.group(1))
                removed.append(entry)
    return removed


def _exit_when_orphaned(parent: int, direct: int, interval: float) -> None:
    while os.getppid() == direct and pid_alive(parent):
        time.sleep(interval)
    os._exit(1)


def die_with_parent(parent: int, interval: float = 0.5, via_server: bool = False) -> None:
    """Worker initializer: end this process soon after ``parent`` is gone, however it ended.

    ``parent`` is the process that started the worker. Where a fork server started it on
    ``parent``'s behalf (``via_server``), the server is the direct parent and outlives
    ``parent`` while workers hold its pipe, so a daemon thread watches ``parent`` itself,
    within ``interval`` seconds. On Linux the kernel also sends SIGKILL at once when the direct
    parent ends (``PR_SET_PDEATHSIG``).
    """
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    direct = os.getppid()
    # The parent died before the signal was armed.
    if (direct != parent and not via_server) or not pid_alive(parent):
        os._exit(1)
    threading.Thread(target=_exit_when_orphaned, args=(parent, direct, interval), daemon=True).start()


def workers_may_start() -> bool:
    """Whether worker processes may start: not in a daemon (e.g. a Dask worker), and the main
    module is senca's command or has no file (a worker imports the main module, so a user's
    script without an ``if __name__ == "__main__":`` guard would run again in each)."""
    if multiprocessing.current_process().daemon:
        return False
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None:  # interactive interpreter, Jupyter
        return True
    spec = getattr(main, "__spec__", None)
    return (spec is not None and spec.name.split(".")[0] == "senca") or Path(path).stem == "senca"


def worker_context(preload: tuple[str, ...] = ()) -> multiprocessing.context.BaseContext:
    """Start method for worker processes: a fork server that has imported ``preload``, else spawn.

    A worker forked from a server that imported torch and senca once starts in a fraction of
    a second, where a spawned one imports them again (about 4 CPU seconds each). The server
    is itself a fresh interpreter that runs nothing but the imports, so no thread pool of
    this process is forked. Platforms without ``fork`` (Windows) spawn.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    return context


_server_started = False


def start_worker_server(preload: tuple[str, ...]) -> None:
    """Start the fork server of :func:`worker_context` now, so that it imports ``preload`` while
    this process goes on (a no-op where it runs already or the platform has none)."""
    global _server_started
    if worker_context(preload).get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()
        _server_started = True


def worker_server_started() -> bool:
    """Whether :func:`start_worker_server` has started the fork server: workers then start cheaply."""
    return _server_started


@contextlib.contextmanager
def _main_thread_setting(apply: Callable[[], Any], restore: Callable[[Any], Any]) -> Iterator[None]:
    # Signal handlers and masks belong to the main thread; elsewhere the block runs unchanged.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = apply()
    try:
        yield
    finally:
        restore(previous)


def signal_handler(signum: int, handler: Callable) -> contextlib.AbstractContextManager:
    """Install ``handler`` for ``signum`` during a block (main thread only), then restore the previous one."""
    return _main_thread_setting(lambda: signal.signal(signum, handler), lambda previous: signal.signal(signum, previous))


def signals_held(*signums: int) -> contextlib.AbstractContextManager:
    """Hold ``signums`` during a block, delivered after it: for steps that must not stop halfway."""
    if not hasattr(signal, "pthread_sigmask"):
        return contextlib.nullcontext()
    return _main_thread_setting(lambda: signal.pthread_sigmask(signal.SIG_BLOCK, set(signums)),
                                lambda previous: signal.pthread_sigmask(signal.SIG_SETMASK, previous))
