"""Process housekeeping: folders that name their owner's pid, workers that die with their parent,
and the memory that arrays take and that is free for new processes.

A run killed without a chance to clean up (SIGKILL, power loss) leaves its temporary folders
behind; they carry the run's pid so that the next run can tell them from a live run's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import scipy.sparse as sp

logger = logging.getLogger(__name__)


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


def _exit_when_orphaned(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def die_with_parent(parent: int, interval: float = 0.5) -> None:
    """Worker initializer: end this process soon after ``parent`` is gone, however it ended.

    On Linux the kernel sends SIGKILL at once (``PR_SET_PDEATHSIG``); elsewhere a daemon
    thread notices the new parent id within ``interval`` seconds.
    """
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_exit_when_orphaned, args=(parent, interval), daemon=True).start()


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
