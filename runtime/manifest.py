"""The manifest beside every artifact: what it is, what it takes, and what made it."""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BackendVersionWarning, RuntimeLoadError
from .schema import check

if TYPE_CHECKING:
    from .preprocess import Preprocess

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: str
    layout: str | None = None
    preprocess: dict[str, Any] | None = None
    labels: tuple[str, ...] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TensorSpec":
        labels = d.get("labels")
        return cls(name=d["name"], shape=tuple(d["shape"]), dtype=d["dtype"], layout=d.get("layout"),
                   preprocess=d.get("preprocess"), labels=tuple(labels) if labels else None)

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(map(str, self.shape))}]" + (f" {self.layout}" if self.layout else "")


@dataclass(frozen=True)
class Manifest:
    format: str
    artifact: str
    sha256: str
    model: str
    target: str
    quant: str
    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    runtime: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def threads(self, requested: int | None = None) -> int:
        """Intra-op threads: as requested, else the board's count from the manifest, never more than
        this machine's cores (oversubscribing a 2-core host made ORT several times slower)."""
        wanted = requested or int(self.runtime.get("threads") or 0) or os.cpu_count() or 1
        return max(1, min(wanted, os.cpu_count() or wanted))

    def toolchain_version(self, package: str) -> str | None:
        """The version of ``package`` the build used (and evaluated the artifact with), if recorded."""
        version = (self.raw.get("toolchain") or {}).get(package)
        return version if isinstance(version, str) and version[:1].isdigit() else None

    def check_backend_version(self, package: str, loaded: str) -> None:
        """Warn, naming both versions, when the backend loaded here is not the one the build verified with:
        INT8 kernels differ between releases, so the build's accuracy numbers may not hold."""
        built = self.toolchain_version(package)
        if built and built != loaded:
            warnings.warn(BackendVersionWarning(
                f"{self.artifact}: built and verified with {package} {built}, running on {package} {loaded}; "
                f"install the verified version (pip install {package}=={built}) to run what was verified"),
                stacklevel=3)

    def preprocessor(self, input_index: int = 0) -> "Preprocess":
        """The input's preprocessing as the build recorded it."""
        from .preprocess import Preprocess

        spec = self.inputs[input_index]
        return Preprocess.from_spec(spec.shape, spec.layout or "NCHW", spec.dtype, spec.preprocess or {})

    @classmethod
    def read(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise RuntimeLoadError(f"no manifest at {path}: an artifact is loaded together with the "
                                   f"{MANIFEST_NAME} the build wrote beside it") from None
        except IsADirectoryError:
            raise RuntimeLoadError(f"manifest {path} is a directory, not a file; re-copy the artifact folder") from None
        except UnicodeDecodeError as exc:
            raise RuntimeLoadError(f"manifest {path} is not UTF-8 text (byte {exc.start}); it is corrupt: "
                                   "rebuild or re-copy it") from None
        except OSError as exc:
            raise RuntimeLoadError(f"manifest {path} cannot be read ({exc.strerror})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RuntimeLoadError(f"manifest {path} is not valid JSON ({exc}); rebuild or re-copy it") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise RuntimeLoadError(f"manifest {path} has schema {found!r}, this runtime reads "
                                   f"{SCHEMA_VERSION}; install the runtime version that matches the build")
        check(data, str(path))
        sealed = data.get("manifest_sha256")
        if sealed != canonical_sha256(data):
            what = "has no seal (manifest_sha256)" if sealed is None else "was changed after the build (its seal does not match)"
            raise RuntimeLoadError(f"manifest {path} {what}: its labels, preprocessing and I/O specs cannot be "
                                   "trusted; rebuild the artifact or re-copy its manifest.json")
        return cls(format=data["format"], artifact=data["artifact"], sha256=data["sha256"],
                   model=data["model"], target=data["target"], quant=data["quant"], task=data["task"],
                   inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
                   outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
                   runtime=data.get("runtime", {}), raw=data)


def canonical_sha256(data: dict[str, Any]) -> str:
    """The sha256 of a manifest's canonical JSON, without its own seal: what ``seal_manifest`` records."""
    body = {k: v for k, v in data.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                          .encode("utf-8")).hexdigest()


def seal_manifest(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its seal: every field the runtime reads is then covered by a checksum."""
    return {**data, "manifest_sha256": canonical_sha256(data)}


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(artifact: Path, manifest: Manifest) -> None:
    """The artifact must be the exact file the manifest describes (catches truncation and corruption)."""
    if not artifact.is_file():
        raise RuntimeLoadError(f"artifact {artifact} " + ("is a directory, not a file; re-copy the artifact folder"
                                                         if artifact.is_dir() else "does not exist"))
    try:
        actual = sha256_of(artifact)
    except OSError as exc:
        raise RuntimeLoadError(f"artifact {artifact} cannot be read ({exc.strerror})") from None
    if actual != manifest.sha256:
        raise RuntimeLoadError(
            f"artifact {artifact} does not match its manifest (sha256 {actual[:12]}... != {manifest.sha256[:12]}...): "
            "it is corrupt, truncated or from another build; rebuild it or copy it again with its manifest")
