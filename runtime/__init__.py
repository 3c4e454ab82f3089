"""The on-board runtime: load a built artifact and run it.

    from runtime import load
    s = load("artifacts/mobilenet_v2/rpi4/model.onnx")
    y = s.run(s.preprocess(image))

Depends on numpy, Pillow and the backend's own library only; never torch, hydra or dvc.
"""
from .errors import BackendUnavailable, BackendVersionWarning, InputSpecError, RuntimeLoadError
from .manifest import Manifest, TensorSpec
from .preprocess import Preprocess, load_image
from .session import Session, load

__all__ = ["load", "Session", "Manifest", "TensorSpec", "Preprocess", "load_image",
           "RuntimeLoadError", "InputSpecError", "BackendUnavailable", "BackendVersionWarning"]
