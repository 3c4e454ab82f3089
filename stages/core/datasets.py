"""Image sources that ship inside installed packages, gold sets and calibration tensors."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

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
SOURCES.register("fashion-mnist")(ImageSource(lambda: Path("/usr/share/datasets/fashion-mnist"),
                                              "apt-get install dataset-fashion-mnist"))


@LABELS.register("imagenet1k")
def _imagenet1k() -> list[str]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


@LABELS.register("face")
def _face() -> list[str]:
    return ["not a face", "face"]


@LABELS.register("fashion_mnist")
def _fashion_mnist() -> list[str]:
    return ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def locate(source_name: str, file: str, what: str = "image") -> Path:
    source = SOURCES.get(source_name)
    root = source.locate()
    path = root / file if root else None
    if path is None or not path.exists():
        raise BuildError(f"{what} {file!r} from source {source_name!r} was not found"
                         f"{f' at {path}' if path else ''}", hint=source.install)
    return path


def resolve(item: ImageItem) -> Path:
    return locate(item.source, item.file)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST family's format: big-endian header, then raw data), gzip or plain."""
    import gzip

    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise BuildError(f"{path} is not an unsigned-byte IDX file", hint="check the dataset's file names")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def idx_records(dataset: DatasetConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(images N x H x W uint8, labels N or None) of an IDX dataset, cut to start/count."""
    idx = dataset.idx
    assert idx is not None
    images = read_idx(locate(idx.source, idx.images, "IDX file"))
    labels = read_idx(locate(idx.source, idx.labels, "IDX file")) if idx.labels else None
    stop = None if idx.count is None else idx.start + idx.count
    return images[idx.start:stop], (labels[idx.start:stop] if labels is not None else None)


def npy_records(dataset: DatasetConfig) -> tuple[np.ndarray, np.ndarray]:
    """(images N x H x W uint8, labels N) of a .npy dataset; labels from its consecutive runs."""
    npy = dataset.npy
    assert npy is not None
    array = np.load(locate(npy.source, npy.file, ".npy file"), allow_pickle=False)
    if array.dtype != np.uint8:  # 0..1 floats (skimage's lfw_subset)
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    labels = np.concatenate([np.full(run.count, run.label, np.int64) for run in npy.runs]) if npy.runs else None
    if labels is None or len(labels) != len(array):
        raise BuildError(f"dataset {dataset.name!r}: npy.runs label {0 if labels is None else len(labels)} of "
                         f"{len(array)} images in {npy.file}", hint="make the runs' counts add up to the array's length")
    stop = None if npy.count is None else npy.start + npy.count
    return array[npy.start:stop], labels[npy.start:stop]


def item_image(item: ImageItem) -> Image.Image:
    """The item's photo, cut to its box when it has one."""
    image = load_image(resolve(item))
    return image.crop(tuple(item.box)) if item.box else image


def variant_image(photo: Image.Image, box: Sequence[int] | None, variant: str, degrees: float) -> Image.Image:
    """A deterministic transform of a crop: mirrored, or the photo turned about the crop's centre
    (so the turned crop has no empty corners when the photo extends beyond the box)."""
    x0, y0, x1, y1 = box or (0, 0, *photo.size)
    if variant == "mirror":
        return photo.crop((x0, y0, x1, y1)).transpose(Image.FLIP_LEFT_RIGHT)
    angle = degrees if variant == "rotate_ccw" else -degrees  # PIL turns counter-clockwise for positive angles
    turned = photo.rotate(angle, resample=Image.BILINEAR, center=((x0 + x1) / 2, (y0 + y1) / 2))
    return turned.crop((x0, y0, x1, y1))


def gold_images(dataset: DatasetConfig) -> list[tuple[str, Image.Image, set[int]]]:
    """(id, image, accepted labels) for every labelled item of a gold set: its IDX records, its .npy
    records and its photos, in that order. A set with ``variants`` also yields each .npy record and
    photo under each of them, with id ``<id>|<variant>``."""
    samples: list[tuple[str, Image.Image, set[int]]] = []

    def add(ident: str, photo: Image.Image, box: Sequence[int] | None, accepted: set[int]) -> None:
        samples.append((ident, photo.crop(tuple(box)) if box else photo, accepted))
        for variant in dataset.variants:
            samples.append((f"{ident}|{variant.value}", variant_image(photo, box, variant.value,
                                                                     dataset.variant_degrees), accepted))

    if dataset.idx is not None:
        images, labels = idx_records(dataset)
        if labels is None:
            raise BuildError(f"gold set {dataset.name!r} has no labels file", hint="set dataset idx.labels")
        first = dataset.idx.start
        samples += [(f"{dataset.idx.images}#{first + i}", Image.fromarray(img), {int(lab)})
                    for i, (img, lab) in enumerate(zip(images, labels))]
    if dataset.npy is not None:
        images, labels = npy_records(dataset)
        for i, (img, lab) in enumerate(zip(images, labels)):
            add(f"{dataset.npy.file}#{dataset.npy.start + i}", Image.fromarray(img).convert("RGB"), None, {int(lab)})
    for item in dataset.items:
        if item.label is None:
            raise BuildError(f"gold set {dataset.name!r} item {item.file!r} has no label",
                             hint="give every gold item a `label` (class index)")
        ident = item.file + (f"@{','.join(map(str, item.box))}" if item.box else "")
        add(ident, load_image(resolve(item)), item.box, {item.label, *item.accept})
    return samples


def labelled_tensors(dataset: DatasetConfig, pre: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """The whole set through the model's preprocessing, as one array, with the primary labels."""
    samples = gold_images(dataset)
    x = np.concatenate([pre(image) for _, image, _ in track(samples, f"preprocess {dataset.name}")])
    y = np.asarray([min(accepted) if len(accepted) == 1 else -1 for _, _, accepted in samples], np.int64)
    return x, y


def preprocess_for(spec: InputSpec) -> Preprocess:
    return Preprocess.from_spec(spec.shape, spec.layout.value, spec.dtype,
                                {"color": spec.color.value, "resize": spec.resize, "interpolation": spec.interpolation,
                                 "mean": spec.mean, "std": spec.std})


def calibration_tensors(dataset: DatasetConfig, pre: Preprocess) -> np.ndarray:
    """N x input tensors: each photo once as-is, then ``samples - 1`` random crops/flips of it.

    Deterministic for a given seed, so the calibration set (and the quantized model) reproduce.
    """
    if dataset.idx is not None or dataset.npy is not None:  # a slice of a large set: no augmentation needed
        images, _ = idx_records(dataset) if dataset.idx is not None else npy_records(dataset)
        return np.concatenate([pre(Image.fromarray(img)) for img in track(images, f"calibration set {dataset.name}")])
    aug = dataset.augment
    rng = np.random.default_rng(aug.seed)
    tensors = []
    for item in track(dataset.items, f"calibration set {dataset.name}"):
        image = item_image(item)
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
