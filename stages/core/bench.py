"""Latency measured fairly on a shared, noisy machine: candidates timed in alternating blocks, one run."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

# When a timing cannot be trusted (#20): the interquartile range of its rounds' medians is more than
# MAX_SPREAD of the overall median, or other processes (and the hypervisor's steal) used more than MAX_OTHER_CPU of
# the machine's CPU time while it ran. Such a figure is recorded, marked unreliable, never the headline.
MAX_SPREAD = 0.20
MAX_OTHER_CPU = 0.15


def _machine_busy_s() -> Optional[float]:
    """CPU seconds all processes (and steal) have used since boot, from /proc/stat; None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class MachineShare:
    """The share of the machine's CPU that other processes (and the hypervisor's steal) used while a
    block ran, by the rule ``paired_timing`` applies: ``with MachineShare() as share: ...``, then
    ``share.other`` (None where /proc/stat is missing) and ``share.why`` (empty when it is within
    MAX_OTHER_CPU)."""

    def __enter__(self) -> "MachineShare":
        self._start = (_machine_busy_s(), time.process_time(), time.monotonic())
        return self

    def __exit__(self, *exc: Any) -> None:
        (busy0, own0, wall0), (busy1, own1, wall1) = self._start, (_machine_busy_s(), time.process_time(),
                                                                    time.monotonic())
        self.other: Optional[float] = None
        if busy0 is not None and busy1 is not None and wall1 > wall0:
            self.other = max(0.0, (busy1 - busy0) - (own1 - own0)) / ((wall1 - wall0) * (os.cpu_count() or 1))
        self.why = ([f"other processes used {100 * self.other:.0f} % of the machine meanwhile "
                     f"(limit {100 * MAX_OTHER_CPU:.0f} %)"] if self.other is not None and self.other > MAX_OTHER_CPU
                    else [])


def paired_timing(fns: dict[str, Callable[[], Any]], warmup: int, runs: int, rounds: int = 5) -> dict[str, Any]:
    """Median ms per call of each candidate, measured in alternating blocks within one run, with the
    conditions it was measured under: each candidate's spread over the rounds, the share of the
    machine other processes used meanwhile, and whether the figures are ``reliable``.

    Blocks (not call-by-call interleaving) because the libraries' thread pools spin after a call:
    on a 2-core machine, ORT's spinning threads would otherwise be timed as PyTorch's latency.
    Alternating rounds still spread slow periods of a shared vCPU over every candidate.
    """
    times: dict[str, list[list[float]]] = {name: [] for name in fns}
    per_round = max(1, runs // rounds)
    with MachineShare() as share:
        _rounds(fns, times, warmup, rounds, per_round)
    ms = {name: 1e3 * float(np.median(np.concatenate(blocks))) for name, blocks in times.items()}
    # run-to-run spread: the interquartile range of the rounds' medians, relative to the median (one odd
    # round, such as a neighbour's burst, moves it little; a drift over the run moves it)
    spread = {name: float(np.subtract(*np.percentile([np.median(b) for b in blocks], [75, 25]))
                          / np.median(np.concatenate(blocks))) for name, blocks in times.items()}
    other = share.other
    why = [f"{name}'s rounds spread by {100 * s:.0f} % (interquartile range; limit {100 * MAX_SPREAD:.0f} %)"
           for name, s in spread.items() if s > MAX_SPREAD] + share.why
    return {"ms": ms, "spread": {k: round(v, 4) for k, v in spread.items()},
            "other_cpu_share": round(other, 4) if other is not None else None, "cpus": os.cpu_count(),
            "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "reliable": not why, "unreliable_because": why}


def _rounds(fns: dict[str, Callable[[], Any]], times: dict[str, list[list[float]]], warmup: int, rounds: int,
            per_round: int) -> None:
    """paired_timing's alternating blocks: each round, each candidate warmed up, then timed per call."""
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(max(1, warmup // rounds)):
                fn()
            block = []
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                block.append(time.perf_counter() - start)
            times[name].append(block)


def paired_latency(fns: dict[str, Callable[[], Any]], warmup: int, runs: int, rounds: int = 5) -> dict[str, float]:
    """paired_timing's medians alone (ms per call)."""
    return paired_timing(fns, warmup, runs, rounds)["ms"]
