"""Image preprocessing, read from the manifest. The build (calibration, gold checks) and the board
share this one implementation, so what was measured is what runs.

Mirrors torchvision's Resize(shorter side) -> CenterCrop -> Normalize on PIL images.
Mean and std are in pixel units (0..255).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from .errors import InputSpecError

_INTERPOLATION = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC,
                  "area": Image.BOX}  # area: pixel-area averaging, for downsampling windows (MTCNN)


def load_image(path: str | Path) -> Image.Image:
    """Any image file as 8-bit RGB (grayscale and RGBA are converted)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise InputSpecError(f"image {path} does not exist") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # truncated, corrupt, not an image
        raise InputSpecError(f"image {path} cannot be decoded ({exc}); is it a complete image file?") from None


def as_image(image: Any) -> Image.Image:
    """What ``Preprocess`` accepts, as a PIL image: a PIL image, a path, or an 8-bit pixel array
    (HxW grey, HxWx3 RGB, HxWx4 RGBA). Anything else is refused with what to do, never guessed at."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        return load_image(image)
    if not isinstance(image, np.ndarray):
        raise InputSpecError(f"image must be a PIL image, a file path or a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise InputSpecError(f"image is empty (shape {list(image.shape)})")
    if image.dtype != np.uint8:
        hint = ("scale it to 0..255 and cast: (x * 255).round().astype(np.uint8) if it is in 0..1"
                if image.dtype.kind == "f" else "reduce it to 8 bits, e.g. (x >> 8).astype(np.uint8) for 16-bit")
        raise InputSpecError(f"image pixels must be uint8 (0..255), got {image.dtype}: {hint}")
    if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
        raise InputSpecError(f"image has shape {list(image.shape)}, channels first; pass it as HxWxC "
                             "(np.transpose(x, (1, 2, 0)))")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
        raise InputSpecError(f"image has shape {list(image.shape)}; expected HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA)")
    return Image.fromarray(image)


@dataclass(frozen=True)
class Preprocess:
    height: int
    width: int
    layout: str = "NCHW"
    dtype: str = "float32"
    color: str = "RGB"
    resize: int | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    @classmethod
    def from_spec(cls, shape: Sequence[int], layout: str, dtype: str, pre: Mapping[str, Any]) -> "Preprocess":
        height, width = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
        if not (isinstance(height, int) and isinstance(width, int)):  # free dims: the size the build used
            height, width = pre["crop"]
        return cls(height=int(height), width=int(width), layout=layout, dtype=dtype,
                   color=pre.get("color", "RGB"), resize=pre.get("resize"),
                   interpolation=pre.get("interpolation", "bilinear"),
                   mean=tuple(pre.get("mean", (0.0, 0.0, 0.0))), std=tuple(pre.get("std", (1.0, 1.0, 1.0))))

    def to_dict(self) -> dict[str, Any]:
        return {"color": self.color, "resize": self.resize, "crop": [self.height, self.width],
                "interpolation": self.interpolation, "mean": list(self.mean), "std": list(self.std)}

    def geometry(self, image: Image.Image) -> Image.Image:
        """Resize the shorter side (then center-crop), or resize straight to the input size."""
        resample = _INTERPOLATION[self.interpolation]
        if self.resize is None:
            return image.resize((self.width, self.height), resample)
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        image = image.resize((new_w, new_h), resample)
        top = int(round((new_h - self.height) / 2.0))
        left = int(round((new_w - self.width) / 2.0))
        return image.crop((left, top, left + self.width, top + self.height))

    def __call__(self, image: Image.Image | np.ndarray | str | Path) -> np.ndarray:
        """An RGB image (PIL, a path, or an HxWx3 uint8 array; see ``as_image``) -> a batch of one."""
        image = as_image(image)
        pixels = np.asarray(self.geometry(image.convert("RGB")), dtype=np.float32)
        if self.color == "BGR":
            pixels = pixels[..., ::-1]
        elif self.color == "GRAY":
            pixels = np.asarray(self.geometry(image.convert("L")), dtype=np.float32)[..., None]
        channels = pixels.shape[-1]
        x = (pixels - np.asarray(self.mean[:channels], np.float32)) / np.asarray(self.std[:channels], np.float32)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None].astype(self.dtype))
