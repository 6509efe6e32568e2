"""Wall time and peak memory of a stage, for the scaling benchmark.

Peak memory is the largest resident set size (RSS) of the whole process tree (the process and every
descendant, e.g. ``data_prep``'s decoding workers or DataLoader workers), summed at each sample, sampled
every ``interval`` seconds by a thread with :mod:`psutil`; ``peak_private_mb`` the same of resident minus
shared pages (memory-mapped files, e.g. the dataset's Arrow files, count in RSS but the OS can drop them). A spike shorter than the interval can be
missed; the interval is 0.1 s.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import psutil

MB = 2**20


def tree_memory(process: psutil.Process) -> tuple[int, int]:
    """``(resident, private)`` bytes of ``process`` and all its descendants (those gone meanwhile count 0).

    ``private``: resident minus shared pages (``rss - shared``: roughly the anonymous memory, leaving out
    memory-mapped files such as a dataset's Arrow files, whose pages the OS can drop and re-read)."""
    resident = private = 0
    for proc in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_info()
            resident += info.rss
            private += info.rss - getattr(info, "shared", 0)
    return resident, private


@dataclass
class Measurement:
    """What :func:`measure` or :func:`run_measured` saw."""

    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    peak_private_mb: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "seconds": round(self.seconds, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "peak_private_mb": round(self.peak_private_mb, 1),
            **self.extra,
        }


class _Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.process, self.interval = psutil.Process(pid), interval
        self.peak = self.peak_private = 0
        self.stopped = threading.Event()

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            resident, private = tree_memory(self.process)  # one pass over the tree per sample
            self.peak, self.peak_private = max(self.peak, resident), max(self.peak_private, private)

    def run(self) -> None:
        while not self.stopped.is_set():
            self.sample()
            self.stopped.wait(self.interval)


@contextlib.contextmanager
def measure(interval: float = 0.1) -> Iterator[Measurement]:
    """Time the ``with`` block and sample this process tree's RSS; fills the yielded Measurement."""
    result = Measurement()
    sampler = _Sampler(os.getpid(), interval)
    sampler.sample()
    sampler.start()
    start = time.perf_counter()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - start
        sampler.stopped.set()
        sampler.join()
        sampler.sample()
        result.peak_rss_mb, result.peak_private_mb = sampler.peak / MB, sampler.peak_private / MB


def run_measured(
    cmd: Sequence[str], log_path: str | os.PathLike, interval: float = 0.1, **kwargs
) -> Measurement:
    """Run ``cmd`` (output to ``log_path``); its wall time and the peak RSS of its process tree.

    Raises:
        subprocess.CalledProcessError: the command failed (its log is at ``log_path``).
    """
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, **kwargs)
        sampler = _Sampler(proc.pid, interval)
        sampler.start()
        code = proc.wait()
        seconds = time.perf_counter() - start
        sampler.stopped.set()
        sampler.join()
    if code != 0:
        raise subprocess.CalledProcessError(code, list(cmd))
    return Measurement(
        seconds=seconds, peak_rss_mb=sampler.peak / MB, peak_private_mb=sampler.peak_private / MB
    )


def load_average() -> float:
    """The 1-minute load average (other work on the machine inflates wall times; the report says it)."""
    return os.getloadavg()[0]
