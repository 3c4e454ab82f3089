"""Latency measured fairly on a shared, noisy machine: candidates timed in alternating blocks, one run."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


def paired_latency(fns: dict[str, Callable[[], Any]], warmup: int, runs: int, rounds: int = 5) -> dict[str, float]:
    """Median ms per call of each candidate, measured in alternating blocks within one run.

    Blocks (not call-by-call interleaving) because the libraries' thread pools spin after a call:
    on a 2-core machine, ORT's spinning threads would otherwise be timed as PyTorch's latency.
    Alternating rounds still spread slow periods of a shared vCPU over every candidate.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(max(1, warmup // rounds)):
                fn()
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}
