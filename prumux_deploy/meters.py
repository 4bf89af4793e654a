"""Peak memory while a block runs: this process's resident host memory (PeakRSS) or PyTorch's GPU allocator
(PeakCudaMemory), and what a bench run's peak_mib means on each device."""

from __future__ import annotations

import os
import threading
import time

import torch


class PeakRSS:
    """Samples this process's resident set size while a block runs; reports the peak above the start."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self.start = interval, 0, 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


class PeakCudaMemory:
    """Peak GPU memory PyTorch's allocator held above the start while a block runs (torch.cuda's peak
    statistics), MiB: what a PyTorch row on a GPU costs (host RSS would say nothing about it)."""

    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.start = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        self.peak = torch.cuda.max_memory_allocated()

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def peak_memory_meaning(device: str) -> str:
    """What a run's peak_mib measures on `device` (recorded in the result's protocol)."""
    if device == "cuda":
        return ("PyTorch rows: peak GPU memory of PyTorch's allocator above the start; ONNX Runtime rows: not "
                "measured (its GPU arena is invisible to PyTorch, and host memory would mislead)")
    return "growth of this process's resident host memory while the backend runs"
