"""Throughput measurement: warm-up, then the median of timed repeats (these machines are noisy)."""

from __future__ import annotations

import statistics
import time


def timed_calls(run, warmup: int, calls: int, min_seconds: float) -> list[float]:
    """Seconds per call of `run()`: `warmup` untimed calls, then at least `calls` timed ones, continuing
    until `min_seconds` of timing have passed (so very fast calls get enough samples)."""
    for _ in range(warmup):
        run()
    times = []
    start = time.perf_counter()
    while len(times) < calls or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times


def throughput(run, samples_per_call: int, warmup: int = 2, repeats: int = 5, min_seconds: float = 0.0) -> dict:
    """Samples/s of `run()` (one call = `samples_per_call` samples): median over `repeats` timed calls
    (more while `min_seconds` have not passed). Returns samples_per_s, median_s (seconds), repeats, batch."""
    times = timed_calls(run, warmup, repeats, min_seconds)
    median = statistics.median(times)
    return {"samples_per_s": samples_per_call / median, "median_s": median, "repeats": len(times),
            "batch": samples_per_call}


def end_to_end(run_feeds, tokenizer, text_a, text_b, batch: int, max_length: int, pad_to_max: bool,
               uses_token_types: bool, repeats: int = 3) -> float:
    """Samples/s from raw text to labels: the fast tokenizer on batches of `batch` rows (padded to each
    batch's longest row, or to max_length), the engine (`run_feeds`), argmax. What a server sees."""
    from .data import tokenize

    rows = len(text_a)

    def run():
        for s in range(0, rows, batch):
            feeds = tokenize(tokenizer, text_a[s:s + batch], text_b[s:s + batch] if text_b else None,
                             max_length=max_length, pad_to_max=pad_to_max, uses_token_types=uses_token_types)
            run_feeds(feeds).argmax(1)

    return throughput(run, rows, warmup=1, repeats=repeats)["samples_per_s"]


def latency(run, calls: int = 50, min_seconds: float = 1.0) -> dict:
    """Per-call latency of `run()` in milliseconds: p50, p90, p99 and mean over at least `calls` calls
    (and at least `min_seconds`), after one warm-up call."""
    import numpy as np

    times = [1000 * t for t in timed_calls(run, 1, calls, min_seconds)]
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(np.mean(times)),
            "calls": len(times)}
