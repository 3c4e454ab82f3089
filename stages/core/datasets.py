"""Image sources that ship inside installed packages, gold sets and calibration tensors."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from PIL import Image

from runtime.preprocess import Preprocess, load_image

from .config import AugmentConfig, DatasetConfig, ImageItem, InputSpec, VideoItem
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


def _capture(path: Path):  # noqa: ANN202 - a cv2.VideoCapture
    try:
        import cv2
    except ImportError:
        raise BuildError("reading video frames needs OpenCV", hint="pip install opencv-python-headless") from None
    return cv2, cv2.VideoCapture(str(path))


def frames_of(path: Path, wanted: set[int]) -> dict[int, Image.Image]:
    """The RGB frames of a video at the given 0-based indices, in one sequential read (seeking is not
    frame-exact in every container); a frame the video does not have is named."""
    cv2, capture = _capture(path)
    found: dict[int, Image.Image] = {}
    index = -1
    try:
        while len(found) < len(wanted):
            ok, bgr = capture.read()
            if not ok:
                break
            index += 1
            if index in wanted:
                found[index] = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    missing = sorted(wanted - set(found))
    if missing:
        raise BuildError(f"video {path} has no frame {missing[0]} (it yielded {index + 1} frames)",
                         hint="check the item's `frame` against the video")
    return found


def item_photos(items: Sequence[ImageItem]) -> list[Image.Image]:
    """Each item's whole photo (before its box), in order: an image file, or one frame of a video
    (``frame``), each video read once."""
    wanted: dict[Path, set[int]] = {}
    for item in items:
        if item.frame is not None:
            wanted.setdefault(resolve(item), set()).add(item.frame)
    frames = {path: frames_of(path, indices) for path, indices in wanted.items()}
    return [frames[resolve(item)][item.frame] if item.frame is not None else load_image(resolve(item))
            for item in items]


def item_id(item: ImageItem) -> str:
    return (item.file + (f"#{item.frame}" if item.frame is not None else "")
            + (f"@{','.join(map(str, item.box))}" if item.box else ""))


def video_frames(video: VideoItem) -> list[tuple[str, Image.Image]]:
    """(id, RGB frame) for every ``every``-th frame of a real video, from ``start``, at most ``count``."""
    path = locate(video.source, video.file, "video")
    cv2, capture = _capture(path)
    frames: list[tuple[str, Image.Image]] = []
    index = -1
    try:
        while video.count is None or len(frames) < video.count:
            ok, bgr = capture.read()
            if not ok:
                break
            index += 1
            if index >= video.start and (index - video.start) % video.every == 0:
                frames.append((f"{video.file}#{index}", Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))))
    finally:
        capture.release()
    if not frames:
        raise BuildError(f"video {path} gave no frames from {video.start}", hint="check the file and `start`")
    return frames


def views(image: Image.Image, aug: AugmentConfig, rng: np.random.Generator) -> list[Image.Image]:
    """The image, then ``samples - 1`` views of it: random crops (at least ``min_crop`` of the area, aspect
    3:4 to 4:3) or, without ``random_crop``, the whole image; each mirrored at random (``flip``), or
    every other one without ``random_crop``."""
    out = [image]
    for k in range(1, aug.samples):
        if not aug.random_crop:
            out.append(image.transpose(Image.FLIP_LEFT_RIGHT) if aug.flip and k % 2 else image)
            continue
        w, h = image.size
        area = rng.uniform(aug.min_crop, 1.0) * w * h
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw = int(min(w, round(np.sqrt(area * aspect))))
        ch = int(min(h, round(np.sqrt(area / aspect))))
        left = int(rng.integers(0, w - cw + 1))
        top = int(rng.integers(0, h - ch + 1))
        crop = image.crop((left, top, left + cw, top + ch))
        if aug.flip and rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(crop)
    return out


def sources(dataset: DatasetConfig) -> list[tuple[str, Image.Image]]:
    """(id, image) of an unlabelled set's photos and video frames: its distinct real sources."""
    found = [(item_id(item), photo.crop(tuple(item.box)) if item.box else photo)
             for item, photo in zip(dataset.items, item_photos(dataset.items))]
    for video in dataset.videos:
        found += video_frames(video)
    return found


def _records(total: int, start: int, count: int | None) -> int:
    return max(0, (min(total, start + count) if count is not None else total) - start)


def read_idx_count(path: Path) -> int:
    """The record count in an IDX file's header, without reading its data."""
    import gzip

    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        head = f.read(8)
    return int.from_bytes(head[4:8], "big")


def _frame_count(path: Path) -> int:
    """Frames a video really yields (its header's count can be wrong: tree.avi claims 444)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    total = 0
    try:
        while capture.grab():
            total += 1
    finally:
        capture.release()
    return total


def dataset_size(dataset: DatasetConfig) -> tuple[int, int]:
    """(inputs, distinct real sources) that ``gold_images`` yields for a set, without decoding an image."""
    idx_n = npy_n = frames = 0
    if dataset.idx is not None:
        idx = dataset.idx
        idx_n = _records(read_idx_count(locate(idx.source, idx.images, "IDX file")), idx.start, idx.count)
    if dataset.npy is not None:
        npy = dataset.npy
        total = int(np.load(locate(npy.source, npy.file, ".npy file"), mmap_mode="r").shape[0])
        npy_n = _records(total, npy.start, npy.count)
    for video in dataset.videos:
        total = _frame_count(locate(video.source, video.file, "video"))
        taken = max(0, (total - video.start + video.every - 1) // video.every)
        frames += min(taken, video.count) if video.count is not None else taken
    photos = len(dataset.items) + frames
    # two faces of one video frame are one source
    distinct = len({(i.file, i.frame) for i in dataset.items if i.frame is not None}) + frames + sum(
        i.frame is None for i in dataset.items)
    per = 1 + len(dataset.variants)
    if dataset.labelled:
        inputs = idx_n + (npy_n + photos) * per
    else:
        inputs = idx_n + npy_n + photos * max(per, dataset.augment.samples)
    return inputs, idx_n + npy_n + distinct


def variant_image(photo: Image.Image, box: Sequence[int] | None, variant: str, degrees: float) -> Image.Image:
    """A deterministic transform of a crop: mirrored, or the photo turned about the crop's centre
    (so the turned crop has no empty corners when the photo extends beyond the box)."""
    x0, y0, x1, y1 = box or (0, 0, *photo.size)
    if variant == "mirror":
        return photo.crop((x0, y0, x1, y1)).transpose(Image.FLIP_LEFT_RIGHT)
    if variant.startswith("mirror_"):  # the mirrored photo, its box mirrored with it, then turned
        photo, (x0, x1) = photo.transpose(Image.FLIP_LEFT_RIGHT), (photo.size[0] - x1, photo.size[0] - x0)
        variant = variant[len("mirror_"):]
    angle = degrees if variant == "rotate_ccw" else -degrees  # PIL turns counter-clockwise for positive angles
    turned = photo.rotate(angle, resample=Image.BILINEAR, center=((x0 + x1) / 2, (y0 + y1) / 2))
    return turned.crop((x0, y0, x1, y1))


def gold_images(dataset: DatasetConfig) -> list[tuple[str, Image.Image, set[int]]]:
    """(id, image, accepted labels) for every labelled item of a gold set: its IDX records, its .npy
    records and its photos, in that order. A set with ``variants`` also yields each .npy record and
    photo under each of them, with id ``<id>|<variant>``."""
    samples: list[tuple[str, Image.Image, set[int]]] = []

    def recast(image: Image.Image) -> Image.Image:  # ``window`` and ``grey``: another set's kind of window
        if dataset.window:
            image = image.resize(tuple(dataset.window), Image.BOX)
        return image.convert("L").convert("RGB") if dataset.grey else image

    def add(ident: str, photo: Image.Image, box: Sequence[int] | None, accepted: set[int]) -> None:
        samples.append((ident, recast(photo.crop(tuple(box)) if box else photo), accepted))
        for variant in dataset.variants:
            samples.append((f"{ident}|{variant.value}", recast(variant_image(photo, box, variant.value,
                                                                             dataset.variant_degrees)), accepted))

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
    if not dataset.labelled:  # a fidelity set: each photo and frame, then its deterministic views
        rng = np.random.default_rng(dataset.augment.seed)
        for ident, image in sources(dataset):
            for k, view in enumerate(views(image, dataset.augment, rng)):
                samples.append((ident if k == 0 else f"{ident}|view{k}", view, set()))
        return samples
    if dataset.videos:
        raise BuildError(f"gold set {dataset.name!r} has videos but is labelled",
                         hint="video frames carry no labels: set `labelled: false` (a fidelity set)")
    for item in dataset.items:
        if item.label is None:
            raise BuildError(f"gold set {dataset.name!r} item {item_id(item)!r} has no label",
                             hint="give every gold item a `label` (class index), or set `labelled: false`")
    for item, photo in zip(dataset.items, item_photos(dataset.items)):
        add(item_id(item), photo, item.box, {item.label, *item.accept})
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
    found = sources(dataset)
    tensors = [pre(view) for _, image in track(found, f"calibration set {dataset.name}")
               for view in views(image, aug, rng)]
    # Interleave photos so that a prefix (num_samples) still covers every photo.
    per = aug.samples
    order = [i * per + k for k in range(per) for i in range(len(found))]
    return np.concatenate([tensors[i] for i in order], axis=0)
