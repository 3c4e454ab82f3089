"""build: every default artifact (`dvc repro`), with both cores busy.

    python -m stages.build            # what `python3 -m stages.bootstrap build` runs
    python -m stages.build --jobs 1   # one `dvc repro`, nothing side by side

DVC runs one process's stages one after another, but it lets go of the workspace's lock while a
stage's command runs, and it takes a write lock on a stage's outputs and read locks on its
dependencies. So `dvc repro` processes on disjoint subgraphs can share one workspace, each
recording its own stages in dvc.lock (read, merged and rewritten under the lock). The subgraphs
here are the models: each model's builds (`evaluate@...`, `prepare@...`) share nothing with
another model's (each model has its own compose stage: DVC write-locks a stage's outputs even to
see that it is up to date, so a shared one made jobs collide on it). Up to ``--jobs`` of them run at
once, the costliest first (heavy stages, such as a
training, take turns: stages/core/pipeline.py, ``heavy_slot``), while the arm64
userland (which needs no artifact) is set up; then the whole-project stages run, one after
another (faces alone first: it times the tracking app; then arm64), and a last plain `dvc repro` runs what is left (the report) and checks that
everything is up to date. What it records is what a serial `dvc repro` records: the same stages,
the same byte-reproducible outputs (tests/test_build.py).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import yaml

from stages.core.log import cli
from stages.core.layout import PROJECT_ROOT
from stages.core.pipeline import HEAVY_LOCK_ENV

# The order jobs start in: the costliest model first, so the last job to finish is a short one. A cold
# build has no profile to go by, so a model's cost is estimated, in seconds of this 2-core x86 (scheduling
# only: no result depends on it): a training; a stage chain per build; per evaluated build, its gold set
# on this host (float, the artifact, the rewritten graph: about 0.3 s per million input values; once
# more for the model's float reference), evaluate's layer divergence (64 inputs through two graphs that
# expose every tensor: about 0.08 s per 1,000 input values; WHENet's 224x224x3 took 12 s) and the gold
# subset on the emulated board CPU (qemu-user, per input: about 10 ms plus 5 ms per 1,000 input values;
# measured 163 ms for BlazeFace's 128x128x3 windows, 0.8-1.0 s for MobileNetV2's and WHENet's 224x224x3,
# 8-12 ms for a 28x28 Fashion-MNIST image). With 3.5 ms and no divergence term, WHENet (83 s of stages
# in the cold build of ce7a1e2) was estimated at 40 s and started last but one: its job ended 47 s
# after the other.
TRAIN_S, CHAIN_S, HOST_S_PER_M_VALUES, DIVERGENCE_S_PER_1K_VALUES = 100.0, 15.0, 0.3, 0.08
EMULATED_MS, EMULATED_MS_PER_1K_VALUES = 10.0, 5.0


def model_cost(model, targets: list, gold_inputs: int) -> float:  # noqa: ANN001 - the composed model config
    """Estimated seconds of a model's stages (see TRAIN_S): for ordering the jobs of stages.build.
    ``targets``: each build's target config, None for a build only prepared (no evaluate)."""
    values = 1
    for d in model.input.shape[1:]:
        values *= int(d)
    host_s = HOST_S_PER_M_VALUES * gold_inputs * values / 1e6
    emulated_s = min(model.board_inputs, gold_inputs) * (EMULATED_MS + EMULATED_MS_PER_1K_VALUES * values / 1000) / 1000
    evaluated = [t for t in targets if t is not None]
    return ((TRAIN_S if model.train else 0.0) + CHAIN_S * len(targets) + host_s * (len(evaluated) + 1)
            + DIVERGENCE_S_PER_1K_VALUES * values / 1000 * len(evaluated) + emulated_s * sum(1 for t in evaluated if t.cpu))


def model_jobs(plan: dict, cost: dict[str, float], trained: set[str], jobs: int = 2) -> list[tuple[str, list[str]]]:
    """(model, its final DVC stages) for every model, in the order the jobs take them: the costliest first,
    except that the first ``jobs`` hold exactly one model that trains when one does (the costliest of
    them). Trainings take turns (heavy_slot): two started together leave one job waiting on the other's
    training (measured on this 2-core machine's cold build: the second training's job waited 93 s, and the
    two jobs ended 84 s apart). And one that trains starts at once: in the cold build of 2bd87fa the two
    costliest models did not train, so both trainings started in the second wave and took turns there;
    the stage span was 16.7 min, against 16.5 with a training in the first wave, though its tail was
    better balanced."""
    stages: dict[str, list[str]] = {m: [] for m in plan["models"]}
    for group, stage in (("builds", "evaluate"), ("prepared", "prepare")):
        for key, item in (plan.get(group) or {}).items():
            stages[item["model"]].append(f"{stage}@{key}")
    ranked = sorted((m for m, t in stages.items() if t), key=lambda m: -cost[m])
    one_training = [m for m in ranked if m in trained][:1]
    first = one_training + [m for m in ranked if m not in trained][:max(0, jobs - len(one_training))]
    first.sort(key=ranked.index)  # fewer untrained models than slots: the rest by cost below
    order = first + [m for m in ranked if m not in first]
    return [(m, stages[m]) for m in order]


def plan_costs(plan: dict) -> tuple[dict[str, float], set[str]]:
    """Each model's estimated cost (model_cost), and the models that train."""
    from stages.core.cli import load
    from stages.core.datasets import dataset_size

    models = {m: load([f"model={m}"]).model for m in plan["models"]}
    targets: dict[str, object] = {}
    per_model: dict[str, list] = {m: [] for m in plan["models"]}
    for group in ("builds", "prepared"):
        for item in (plan.get(group) or {}).values():
            if group == "builds" and item["target"] not in targets:
                targets[item["target"]] = load([f"target={item['target']}"]).target
            per_model[item["model"]].append(targets[item["target"]] if group == "builds" else None)
    return ({m: model_cost(model, per_model[m], dataset_size(model.gold)[0]) for m, model in models.items()},
            {m for m, model in models.items() if model.train})


def project_jobs(plan: dict) -> list[tuple[str, list[str]]]:
    """The stages over the whole project, run one after another once every build is done: the face apps
    first, alone, because they time the tracking app (fps taken beside the arm64 check's emulation was
    contended and is marked unreliable; the stage takes about half a minute), then the arm64 check. Each
    is reproduced alone (`--single-item`: its upstream was just built)."""
    return ([("faces", ["--single-item", "faces"])] if plan.get("detectors") else []) + [
        ("arm64", ["--single-item", "arm64"])]


class Runner:
    """Runs commands side by side, each line of output prefixed with the job's name."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.lock = threading.Lock()
        self.failures: list[str] = []
        self.wall: dict[str, float] = {}

    def __call__(self, name: str, cmd: list[str]) -> bool:
        start = time.monotonic()
        # OpenMP threads that sleep when idle instead of spinning: side by side, a spinning pool burns the
        # core the other job needs (as in conf/hydra/launcher/local_parallel.yaml). Results do not change.
        # Heavy stages (stages/core/pipeline.py: training, PyTorch calibration) take turns through one lock
        # file: two at once only fight over the cores.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE",
               HEAVY_LOCK_ENV: str(self.cwd / ".dvc" / "tmp" / "edgebuild-heavy.lock")}
        proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            with self.lock:
                sys.stdout.write(f"[{name}] {line}")
                sys.stdout.flush()
        code = proc.wait()
        self.wall[name] = time.monotonic() - start
        if code != 0:
            with self.lock:
                self.failures.append(f"{name}: `{' '.join(cmd[1:])}` exited {code}; its last lines:\n"
                                     + "".join(f"    {line}" for line in tail[-15:]))
        return code == 0


def dvc(*args: str) -> list[str]:
    # Each process waits for the workspace lock the other holds while it plans or records a stage.
    return [sys.executable, "-m", "dvc", "--wait-for-lock", *args]


def build(cwd: Path, jobs: int) -> int:
    plan = yaml.safe_load((cwd / "conf" / "builds.yaml").read_text())
    if jobs <= 1:
        return subprocess.call(dvc("repro"), cwd=cwd)
    run = Runner(cwd)
    started = time.monotonic()
    # The compose stages (one per model; conf/ is every one's dependency) run first, in one process, so
    # that the model jobs find them up to date.
    if not run("compose", dvc("repro", "--glob", "compose_*")):
        print("build failed:", *run.failures, sep="\n  - ", file=sys.stderr)
        return 2
    cost, trained = plan_costs(plan)  # after compose: the gold sets' sizes are known (it checked them)
    with ThreadPoolExecutor(jobs + 1) as pool:
        # The arm64 userland depends on no artifact: set it up beside the builds (its own job slot:
        # it mostly waits on debootstrap and pip).
        setup = pool.submit(run, "arm64-setup", [sys.executable, "-m", "stages.arm64", "--setup-only"])
        with ThreadPoolExecutor(jobs) as models:
            done = list(models.map(lambda job: run(job[0], dvc("repro", *job[1])), model_jobs(plan, cost, trained, jobs)))
        setup.result()
    if all(done):
        for name, args in project_jobs(plan):
            run(name, dvc("repro", *args))
    if not run.failures:
        run("repro", dvc("repro"))
    wall = time.monotonic() - started
    from stages.core import profile

    print(*profile.table_lines(cwd / "artifacts"), sep="\n")
    print(f"build: {wall / 60:.1f} min wall, {jobs} jobs side by side; per job (min): "
          + ", ".join(f"{name} {s / 60:.1f}" for name, s in sorted(run.wall.items(), key=lambda kv: -kv[1])))
    if run.failures:
        print(f"build failed: {len(run.failures)} job(s):", *run.failures, sep="\n  - ", file=sys.stderr)
        return 2
    return 0


@cli("build")
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.build", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="model subgraphs built side by side (default: %(default)s, this machine's cores up to 2)")
    args = parser.parse_args(argv)
    return build(PROJECT_ROOT, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
