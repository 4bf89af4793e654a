"""Throughput measurement: warm-up, then the median of timed repeats (these machines are noisy)."""

from __future__ import annotations

import statistics
import time


def throughput(run, samples_per_call: int, warmup: int = 2, repeats: int = 5, min_seconds: float = 0.0) -> dict:
    """Samples/s of `run()` (one call = `samples_per_call` samples): median over `repeats` timed calls.

    Keeps timing past `repeats` until `min_seconds` have been spent, so very fast calls get enough samples.
    """
    for _ in range(warmup):
        run()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"samples_per_s": samples_per_call / median, "median_s": median, "repeats": len(times),
            "batch": samples_per_call}
