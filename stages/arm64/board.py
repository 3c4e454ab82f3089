"""The device-true run: one artifact on its board's emulated CPU, through the runtime the board installs.

evaluate calls ``run`` for every build whose target names a ``cpu``: the model's declared board subset
of the gold set (``model.board_inputs``, evenly spaced; all of it when the set is smaller) goes through
the arm64 userland of rootfs.py, on that CPU (qemu-user, a /proc/cpuinfo that describes it), and the
outputs come back for the verdict (stages/core/budget.py, ``verdict``). Each run mounts what it needs
in a mount namespace of its own, in a work folder of its own, so builds side by side do not meet.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import rootfs

WORKER = Path(__file__).with_name("worker.py")
LABELLED_MIN_AGREEMENT = 0.98  # decisions the board must share with the reference execution (labelled sets)


def subset(size: int, n: int) -> list[int]:
    """The gold inputs the emulated board runs: ``n`` of ``size``, evenly spaced across the set (its sources
    and variants are in order, so the first n would be a few sources only); all of them when n >= size."""
    if n >= size:
        return list(range(size))
    return sorted({int(i) for i in np.linspace(0, size - 1, n).round()})


def run(folder: Path, artifact: str, inputs: np.ndarray, cpu: str, label: str) -> dict[str, Any]:
    """``inputs`` (the board's own input format, one per row) through ``folder/artifact`` on the emulated
    ``cpu``. Returns {"ran": True, "outputs", "backend", "backend_version", "emulator", "emulated_ms_per_input"},
    or {"ran": False, "reason"} on a machine that cannot emulate (the caller says so; no numbers)."""
    reason = rootfs.why_not_here()
    if reason:
        return {"ran": False, "reason": reason}
    from .verify import setup

    started = time.monotonic()
    root, venv, _ = setup()
    inside = f"/opt/edgebuild/work/{label}-{os.getpid()}"
    work = root / inside.lstrip("/")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(folder, work)
    try:
        shutil.copy(WORKER, work / "worker.py")
        np.save(work / "inputs.npy", inputs)
        (work / "jobs.json").write_text(json.dumps([{"artifact": f"{inside}/{artifact}", "inputs": f"{inside}/inputs.npy",
                                                    "outputs": f"{inside}/outputs.npy", "verify": False}]))
        out = rootfs.run_isolated(root, [f"{venv}/bin/python", f"{inside}/worker.py", f"{inside}/jobs.json"], cpu=cpu,
                                  timeout=3600)
        info = json.loads(out.strip().splitlines()[-1])[0]
        outputs = np.load(work / "outputs.npy")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"ran": True, "outputs": outputs, "backend": info["backend"], "backend_version": info["backend_version"],
            "emulator": rootfs.qemu_version(), "cpuinfo_part": rootfs.CPUINFO[cpu]["part"],
            "emulated_ms_per_input": round(info["emulated_ms_per_input"], 2),
            "wall_s": round(time.monotonic() - started, 1)}


def reproduces(labelled: bool, reference_agreement: float, max_abs_diff: float, atol: Optional[float],
               n: int) -> Optional[str]:
    """None when the emulated board reproduced the reference execution that judged the whole gold set,
    else why not. A labelled set's decisions must agree (LABELLED_MIN_AGREEMENT); a fidelity set's inputs
    are ambiguous (MobileNetV2: float's median top-1 probability 0.26), so a near-tie may flip between
    CPUs, and its outputs must instead stay within the golden tolerance."""
    if labelled and reference_agreement < LABELLED_MIN_AGREEMENT:
        return (f"decisions agree with the reference execution on {reference_agreement:.3f} of {n} inputs "
                f"(< {LABELLED_MIN_AGREEMENT})")
    if not labelled and atol is not None and max_abs_diff > atol:
        return f"outputs differ from the reference execution by {max_abs_diff:.3g} > golden atol {atol:.3g}"
    return None


def device_true(cfg: Any, layout: Any, inputs: list[np.ndarray], reference: np.ndarray, judged: np.ndarray,
                accepted: list[set[int]], ids: list[str], atol: Optional[float]) -> dict[str, Any]:
    """evaluate's device-true section for a target with a ``cpu``: the model's board subset of the gold set
    run on that emulated CPU, scored against float (the budget's quantities, each with n and interval) and
    against ``judged`` (the execution that ran the whole set), whose reproduction it checks."""
    from stages.core import budget as budget_rule
    from stages.core.metrics import wilson
    from stages.core.tasks import params_of, scoring

    cpu, model = cfg.target.cpu, cfg.model
    picked = subset(len(inputs), model.board_inputs)
    got = run(layout.artifact.parent, layout.artifact.name, np.stack([inputs[i] for i in picked]), cpu,
              f"{model.name}-{cfg.target.name}-{cfg.quant.name}")
    if not got["ran"]:
        return {"ran": False, "cpu": cpu, "reason": got["reason"]}
    task, params = scoring(model.task), params_of(model)
    outputs = got.pop("outputs").reshape((len(picked), *judged.shape[1:]))
    ref, jud = reference[picked], judged[picked]
    acc, sub_ids = [accepted[i] for i in picked], [ids[i] for i in picked]
    n = len(picked)
    agreeing = int(np.asarray(task.agrees(jud, outputs, sub_ids, params), bool).sum())
    max_abs = float(np.abs(jud.astype(np.float64) - outputs).max())
    section = {"ran": True, "cpu": cpu, **got, "n": n, "of": len(inputs),
               "subset": f"model.board_inputs = {model.board_inputs}: evenly spaced across the gold set"
                         + (" (all of it)" if n == len(inputs) else ""),
               "artifact": task.score(outputs, acc, sub_ids, params),
               "quantities": budget_rule.measure(model.budget, task, ref, outputs, acc, sub_ids, params),
               "reference_agreement": {"value": agreeing / n, "k": agreeing, "n": n, "ci95": wilson(agreeing, n),
                                       "max_abs_diff": max_abs, "golden_atol": atol}}
    section["resolves_budget"] = budget_rule.resolves(model.budget, section["quantities"])
    section["mismatch"] = reproduces(model.gold.labelled, agreeing / n, max_abs, atol, n)
    return section
