"""The build profile: where a build's time goes, recorded by every stage run beside its stamp
(``.stamps/<stage>.profile.json``, which DVC ignores, so outputs stay byte-reproducible).

A run records its wall time from the process's start: ``startup`` (the interpreter, imports, Hydra,
the config, the upstream check), ``work`` (the stage itself) and, inside it, any ``phase(...)`` a stage
marks (evaluate: float model, artifact, latency). ``slowest(root)`` reads them all back for
`python -m stages.report` and the end of `python -m stages.build`.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Iterator, Optional

_PHASES: dict[str, float] = {}


def process_age_s() -> Optional[float]:
    """Seconds since this process started (Linux: /proc/self/stat), or None elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - started)
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time a part of a stage's work; the stage's profile lists it."""
    start = time.monotonic()
    try:
        yield
    finally:
        _PHASES[name] = _PHASES.get(name, 0.0) + time.monotonic() - start


@contextlib.contextmanager
def stage_run(stage: str, path: Path) -> Iterator[None]:
    startup = process_age_s()
    _PHASES.clear()
    start = time.monotonic()
    try:
        yield
    finally:
        work = time.monotonic() - start
        record_run(path, stage, work, dict(_PHASES), startup)


def record_run(path: Path, stage: str, work_s: float, phases_s: dict[str, float], startup_s: Optional[float] = None) -> None:
    """Write one run's profile record to ``path`` (a ``.stamps/<name>.profile.json``), atomically; a
    profile that cannot be written never fails the build."""
    record = {"stage": stage, "startup_s": round(startup_s, 2) if startup_s is not None else None,
              "work_s": round(work_s, 2), "wall_s": round((startup_s or 0.0) + work_s, 2),
              "phases_s": {k: round(v, 2) for k, v in phases_s.items()}, "finished": time.time()}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)


def read_all(root: Path) -> list[dict]:
    """Every stage run's profile under an artifact tree, with the build it belongs to."""
    rows = []
    for path in sorted(root.glob("_build/**/.stamps/*.profile.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        record["build"] = path.parent.parent.relative_to(root / "_build").as_posix()
        rows.append(record)
    return rows


def slowest(root: Path, top: int = 10) -> tuple[list[dict], float]:
    """The ``top`` slowest stage runs and the total wall time of all of them."""
    rows = read_all(root)
    return sorted(rows, key=lambda r: -r["wall_s"])[:top], sum(r["wall_s"] for r in rows)


def table_lines(root: Path, top: int = 10) -> list[str]:
    rows, total = slowest(root, top)
    if not rows:
        return []
    lines = [f"build profile: {len(read_all(root))} stage runs, {total / 60:.1f} min of stage wall time; slowest:"]
    for r in rows:
        phases = ", ".join(f"{k} {v:.1f}" for k, v in r["phases_s"].items())
        lines.append(f"  {r['wall_s']:7.1f} s  {r['stage']:9s} {r['build']}  (startup {r['startup_s']}, work "
                     f"{r['work_s']}{'; ' + phases if phases else ''})")
    return lines
