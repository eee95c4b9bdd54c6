"""What else the machine did during a measurement: memory of the server, CPU of everyone else."""

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil

# Above this many cores of CPU taken by other processes, a latency figure is not trustworthy on 2 cores.
NOISY_CORES = 0.3


def _tree(pid: int) -> list[psutil.Process]:
    proc = psutil.Process(pid)
    with contextlib.suppress(psutil.Error):
        return [proc, *proc.children(recursive=True)]
    return [proc]


def _status_kb(pid: int, fields: tuple[str, ...]) -> dict[str, int]:
    """Fields of /proc/PID/status in kB (VmHWM, RssAnon, RssFile ...), 0 when unreadable."""
    out = dict.fromkeys(fields, 0)
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in out:
                out[key] = int(line.split()[1])
    return out


class RssSampler(threading.Thread):
    """Samples a process's resident memory (children included) until stopped; keeps the peaks."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.every = every
        self.peak = self.peak_anon = self.samples = 0
        self._stop_event = threading.Event()

    def rss(self) -> int:
        """Current resident bytes of the process and all its descendants."""
        total = 0
        for p in _tree(self.pid):
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def run(self) -> None:
        """Sample until `stop`."""
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self.rss())
            # Anonymous memory is what the process allocated; file-backed pages (the mmap'd vectors) can be dropped.
            self.peak_anon = max(self.peak_anon, _status_kb(self.pid, ("RssAnon",))["RssAnon"] * 1024)
            self.samples += 1
            self._stop_event.wait(self.every)

    def stop(self) -> dict[str, Any]:
        """Stop sampling; peaks in MB (the kernel's high-water mark of the main process counts too)."""
        self._stop_event.set()
        self.join()
        hwm = _status_kb(self.pid, ("VmHWM",))["VmHWM"] * 1024
        return {
            "peak_rss_mb": round(max(self.peak, hwm) / 2**20),
            "peak_anon_mb": round(self.peak_anon / 2**20),
            "rss_samples": self.samples,
        }


def _busy() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _own(pids: tuple[int, ...]) -> float:
    procs = {p.pid: p for pid in pids for p in _tree(pid)}
    total = 0.0
    for p in procs.values():
        with contextlib.suppress(psutil.Error):
            c = p.cpu_times()
            # Children this process has waited for (the `citeqa ask` runs) count as ours too.
            total += c.user + c.system + c.children_user + c.children_system
    return total


class Background:
    """Cores used by processes other than ours (this one and `pids`) while the block runs."""

    def __init__(self, *pids: int) -> None:
        self.pids = (os.getpid(), *pids)
        self.cores = 0.0
        self.own_cores = 0.0

    def __enter__(self) -> "Background":
        self._t0, self._busy0, self._own0 = time.perf_counter(), _busy(), _own(self.pids)
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t0
        own = _own(self.pids) - self._own0
        self.cores = round(max(0.0, _busy() - self._busy0 - own) / wall, 2)
        self.own_cores = round(own / wall, 2)

    @property
    def noisy(self) -> bool:
        """Whether other processes took enough CPU to distort the figure."""
        return self.cores > NOISY_CORES


def wait_quiet(max_wait: float = 45.0, window: float = 1.0) -> float:
    """Wait (at most `max_wait` s) for a `window` in which other processes use under NOISY_CORES; return their cores."""
    deadline = time.perf_counter() + max_wait
    while True:
        with Background() as background:
            time.sleep(window)
        if not background.noisy or time.perf_counter() > deadline:
            return background.cores
