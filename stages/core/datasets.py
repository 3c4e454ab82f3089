"""Image sources that ship inside installed packages, gold sets and calibration tensors."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from PIL import Image

from runtime.preprocess import Preprocess, load_image

from .config import DatasetConfig, ImageItem, InputSpec
from .errors import BuildError
from .log import track
from .registry import Registry


@dataclass(frozen=True)
class ImageSource:
    locate: Callable[[], Path | None]  # the folder, or None when the package is missing
    install: str  # the command that installs it


SOURCES: Registry[ImageSource] = Registry("image source", "dataset.items[].source")
LABELS: Registry[Callable[[], list[str]]] = Registry("label set", "labels")


def _package_dir(module: str, *sub: str) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            return None
        return Path(mod.__file__).parent.joinpath(*sub)  # type: ignore[arg-type]

    return locate


SOURCES.register("opencv-doc")(ImageSource(
    lambda: Path("/usr/share/doc/opencv-doc/examples/data"), "apt-get install opencv-doc"))
SOURCES.register("scikit-image")(ImageSource(_package_dir("skimage.data"), "pip install scikit-image"))
SOURCES.register("matplotlib")(ImageSource(_package_dir("matplotlib", "mpl-data", "sample_data"),
                                           "pip install matplotlib"))


@LABELS.register("imagenet1k")
def _imagenet1k() -> list[str]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def resolve(item: ImageItem) -> Path:
    source = SOURCES.get(item.source)
    root = source.locate()
    path = root / item.file if root else None
    if path is None or not path.exists():
        raise BuildError(f"image {item.file!r} from source {item.source!r} was not found"
                         f"{f' at {path}' if path else ''}", hint=source.install)
    return path


def gold_images(dataset: DatasetConfig) -> list[tuple[str, Image.Image, set[int]]]:
    """(file, RGB image, accepted labels) for every labelled item of a gold set."""
    samples = []
    for item in dataset.items:
        if item.label is None:
            raise BuildError(f"gold set {dataset.name!r} item {item.file!r} has no label",
                             hint="give every gold item a `label` (class index)")
        samples.append((item.file, load_image(resolve(item)), {item.label, *item.accept}))
    return samples


def preprocess_for(spec: InputSpec) -> Preprocess:
    return Preprocess.from_spec(spec.shape, spec.layout.value, spec.dtype,
                                {"color": spec.color.value, "resize": spec.resize, "interpolation": spec.interpolation,
                                 "mean": spec.mean, "std": spec.std})


def calibration_tensors(dataset: DatasetConfig, pre: Preprocess) -> np.ndarray:
    """N x input tensors: each photo once as-is, then ``samples - 1`` random crops/flips of it.

    Deterministic for a given seed, so the calibration set (and the quantized model) reproduce.
    """
    aug = dataset.augment
    rng = np.random.default_rng(aug.seed)
    tensors = []
    for item in track(dataset.items, f"calibration set {dataset.name}"):
        image = load_image(resolve(item))
        tensors.append(pre(image))
        for _ in range(aug.samples - 1):
            w, h = image.size
            area = rng.uniform(aug.min_crop, 1.0) * w * h
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw = int(min(w, round(np.sqrt(area * aspect))))
            ch = int(min(h, round(np.sqrt(area / aspect))))
            left = int(rng.integers(0, w - cw + 1))
            top = int(rng.integers(0, h - ch + 1))
            crop = image.crop((left, top, left + cw, top + ch))
            if aug.flip and rng.random() < 0.5:
                crop = crop.transpose(0)  # PIL.Image.FLIP_LEFT_RIGHT
            tensors.append(pre(crop))
    # Interleave photos so that a prefix (num_samples) still covers every photo.
    per = aug.samples
    order = [i * per + k for k in range(per) for i in range(len(dataset.items))]
    return np.concatenate([tensors[i] for i in order], axis=0)
