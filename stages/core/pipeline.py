"""The stage contract, and the make-like upstream check that lets any stage run alone.

Each stage module declares a ``Stage``: the config keys it reads, the files it reads and
writes, and its direct upstream stages. ``dvc.yaml`` mirrors these declarations (a test keeps
them in sync); ``run_stage`` uses them to rebuild missing or stale upstream outputs when a stage
is run by hand with arbitrary Hydra overrides, which DVC cannot see.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from omegaconf import OmegaConf

from .config import Config, to_plain
from .errors import InternalError
from .fileio import sha256_file, write_json
from .layout import PROJECT_ROOT, Layout
from .log import console

Scope = Literal["model", "build"]

# DVC tracks every config key a stage reads through a digest of its value, one line in dvc.lock per
# key, not the value's whole subtree: dvc.lock stays small, so a no-op `dvc repro` stays fast.
# stages/compose.py writes these digests into the resolved configs, for every key any stage reads.
def dvc_param(key: str) -> str:
    """The key dvc.yaml tracks for a config key a stage reads: ``digest.<key with _ for .>``."""
    return "digest." + key.replace(".", "_")


def tracked_params() -> list[str]:
    """Every config key that some stage reads (its ``params``), in a stable order."""
    return sorted({key for name in STAGE_MODULES for key in load_stage(name).params})


# Pipeline order; a stage's upstream must appear before it.
STAGE_MODULES = ("train", "trace", "export", "simplify", "calibrate", "reference", "rewrite", "quantize", "convert", "evaluate",
                 "prepare")


@dataclass(frozen=True)
class Stage:
    name: str
    scope: Scope  # "model": one per model, target-independent; "build": one per (model, target)
    params: tuple[str, ...]  # config keys the stage reads (dvc.yaml `params` mirror these)
    needs: tuple[str, ...]  # direct upstream stages
    deps: Callable[[Layout], list[Path]]  # files from upstream stages
    outs: Callable[[Layout], list[Path]]
    run: Callable[[Config, Layout], Any]
    doc: str = ""
    code: tuple[str, ...] = ()  # code beyond stages/<name>.py and stages/core that the stage runs
    fanout: str = ""  # the conf/builds.yaml entry dvc.yaml iterates; default: `models` or `chains` by scope

    @property
    def foreach(self) -> str:
        return self.fanout or ("models" if self.scope == "model" else "chains")

    def stamp_path(self, layout: Layout) -> Path:
        folder = layout.model_dir if self.scope == "model" else layout.build_dir
        return folder / ".stamps" / f"{self.name}.json"


def load_stage(name: str) -> Stage:
    if name not in STAGE_MODULES:
        raise InternalError(f"unknown stage {name!r}")
    stage = importlib.import_module(f"stages.{name}").STAGE
    if stage.name != name:
        raise InternalError(f"stages/{name}.py declares STAGE named {stage.name!r}")
    return stage


def fingerprint(stage: Stage, cfg: Config, layout: Layout) -> dict[str, Any]:
    """What a stage's outputs are a function of: its code, its params and its input files."""
    plain = OmegaConf.create(to_plain(cfg))
    params = {key: OmegaConf.to_container(OmegaConf.select(plain, key), resolve=True)
              if OmegaConf.is_config(OmegaConf.select(plain, key)) else OmegaConf.select(plain, key)
              for key in stage.params}
    deps = {str(p.relative_to(layout.root)): sha256_file(p) if p.exists() else None
            for p in stage.deps(layout)}
    return {"stage": stage.name, "code": code_digest(stage), "params": params, "deps": deps}


def code_paths(stage: Stage) -> list[str]:
    """The code a stage runs, as project-relative paths: its module, stages/core, and extras."""
    return [f"stages/{stage.name}.py", "stages/core", *stage.code]


IGNORED_PARTS = ("__pycache__", ".stamps", "build")  # as .dvcignore: bytecode, stamps, runtime/build


def code_digest(stage: Stage) -> str:
    """The sha256 of the files a stage runs (code_paths; every file of a folder, as DVC hashes one), by
    name and content. DVC tracks it as the stage's ``digest.code_<stage>`` param (stages/compose.py
    writes it), one line in dvc.lock, where listing the folders cost about nine entries a stage."""
    digest = hashlib.sha256()
    for rel in code_paths(stage):
        path = PROJECT_ROOT / rel
        files = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.endswith(".pyc")
                       and not any(part in IGNORED_PARTS or part.endswith(".egg-info")
                                   for part in f.relative_to(PROJECT_ROOT).parts)) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(PROJECT_ROOT).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def code_param(stage: Stage) -> str:
    """The param key, in the resolved configs, of the digest of a stage's code."""
    return f"digest.code_{stage.name}"


def is_fresh(stage: Stage, cfg: Config, layout: Layout) -> bool:
    stamp = stage.stamp_path(layout)
    if not stamp.exists() or not all(p.exists() for p in stage.outs(layout)):
        return False
    recorded = json.loads(stamp.read_text())
    return recorded == fingerprint(stage, cfg, layout)


# Set by stages.build when builds run side by side: a lock file that heavy stages take turns on.
HEAVY_LOCK_ENV = "EDGEBUILD_HEAVY_LOCK"
TORCH_SCHEMES = ("pytorch_quantization",)


def is_heavy(stage: Stage, cfg: Config) -> bool:
    """Minutes of multi-threaded PyTorch work: training from scratch, or calibration in PyTorch
    (pytorch-quantization). Measured here: MobileNetV2's pytorch-quantization calibration took 600 s
    beside a Fashion-MNIST training and 66 s alone (PyTorch's many small parallel regions stall when
    another process holds the cores)."""
    return (stage.name == "train" and cfg.model.train is not None) or (
        stage.name == "quantize" and cfg.quant.scheme in TORCH_SCHEMES)


@contextlib.contextmanager
def heavy_slot(stage: Stage, cfg: Config) -> Iterator[None]:
    """Under stages.build, one heavy stage at a time across its processes (an flock); a no-op otherwise.
    Only timing changes: thread counts and results are the same."""
    path = os.environ.get(HEAVY_LOCK_ENV)
    if not path or not is_heavy(stage, cfg):
        yield
        return
    import fcntl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def execute(stage: Stage, cfg: Config, layout: Layout) -> Any:
    """Run one stage and record what it was computed from, and how long it took (``profile``)."""
    from . import profile

    for out in stage.outs(layout):  # temp files of a run that was killed before it could clean up
        for partial in out.parent.glob(f".{out.name}.*.tmp"):
            partial.unlink()
    with heavy_slot(stage, cfg), profile.stage_run(stage.name, profile_path(stage, layout)):
        result = stage.run(cfg, layout)
    write_json(stage.stamp_path(layout), fingerprint(stage, cfg, layout))
    return result


def profile_path(stage: Stage, layout: Layout) -> Path:
    """Beside the stamp, under the DVC-ignored .stamps/: timings never touch a stage's outputs."""
    return stage.stamp_path(layout).with_name(f"{stage.name}.profile.json")


def ensure_upstream(stage: Stage, cfg: Config, layout: Layout) -> list[str]:
    """Rebuild the missing or stale upstream stages of ``stage``, in pipeline order."""
    order: list[Stage] = []

    def visit(name: str) -> None:
        up = load_stage(name)
        for dep in up.needs:
            visit(dep)
        if up not in order:
            order.append(up)

    for dep in stage.needs:
        visit(dep)
    rebuilt = []
    for up in order:
        # A stage is stale when its own inputs changed, including outputs just rebuilt above.
        if not is_fresh(up, cfg, layout):
            console.rule(f"[bold]upstream: {up.name}[/] ({layout.model}/{layout.target})")
            execute(up, cfg, layout)
            rebuilt.append(up.name)
    return rebuilt
