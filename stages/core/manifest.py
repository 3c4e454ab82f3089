"""Write the manifest that the runtime reads (runtime/manifest.py): spec, hashes, toolchain, config."""
from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from runtime.manifest import SCHEMA_VERSION, seal_manifest

from .config import Config, to_plain
from .datasets import LABELS, preprocess_for
from .fileio import sha256_file


# Config keys that say how a stage was invoked, not what the artifact is: a hand build
# (upstream=true) and `dvc repro` (upstream=false) must write the same manifest.
INVOCATION_KEYS = ("upstream", "artifacts")


def toolchain_versions(packages: Iterable[str]) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def describe(cfg: Config, fmt: str, artifact_name: str, io: tuple[list[dict], list[dict]],
             toolchain: Iterable[str], sources: dict[str, Path]) -> dict[str, Any]:
    """Everything the manifest says except the artifact's own hash and size (see ``seal``).

    A container format can embed this in the artifact itself (.onpu does)."""
    inputs, outputs = io
    spec = cfg.model.input
    for tensor in inputs:
        if tensor["name"] == spec.name:
            tensor.update(layout=spec.layout.value, preprocess=preprocess_for(spec).to_dict())
    if cfg.model.output.labels:
        for tensor in outputs:
            if tensor["name"] == cfg.model.output.name:
                tensor["labels"] = LABELS.get(cfg.model.output.labels)()
    return {
        "schema": SCHEMA_VERSION,
        "format": fmt,
        "artifact": artifact_name,
        "model": cfg.model.name,
        "target": cfg.target.name,
        "board": cfg.target.board,
        "quant": cfg.quant.name,
        "task": cfg.model.task.value,
        "inputs": inputs,
        "outputs": outputs,
        "runtime": {"providers": list(cfg.target.runtime.providers), "threads": cfg.target.runtime.threads},
        "toolchain": toolchain_versions(toolchain),
        "sources": {name: sha256_file(path) for name, path in sources.items()},
        "config": {k: v for k, v in to_plain(cfg).items() if k not in INVOCATION_KEYS},
    }


def seal(manifest: dict[str, Any], artifact: Path) -> dict[str, Any]:
    """Add the artifact's sha256 and size, then seal the whole manifest (its canonical JSON's sha256):
    what the runtime checks before it loads anything."""
    return seal_manifest({**manifest, "sha256": sha256_file(artifact), "size_bytes": artifact.stat().st_size})
