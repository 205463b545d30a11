"""Image decoding and preprocessing, shared by training, evaluation and prediction.

``preprocess`` is THE eval-time function: the Predictor calls the same one, so a model sees
identical tensors in training-time validation and in deployment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2

from distmtl.errors import DistmtlError


INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class Preprocessing:
    size: int = 64
    channels: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    interpolation: str = "bilinear"  # of every resize (timm's names)

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise DistmtlError(f"data.channels: must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        if self.interpolation not in INTERPOLATIONS:
            raise DistmtlError(f"data.interpolation: unknown mode '{self.interpolation}' "
                               f"(one of {', '.join(INTERPOLATIONS)})")
        object.__setattr__(self, "mean", tuple(self.mean)[: self.channels] or (0.5,) * self.channels)
        object.__setattr__(self, "std", tuple(self.std)[: self.channels] or (0.5,) * self.channels)

    def to_dict(self) -> dict:
        return {"size": self.size, "channels": self.channels, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}

    @property
    def mode(self) -> v2.InterpolationMode:
        return v2.InterpolationMode(self.interpolation)


@dataclass(frozen=True)
class Augmentation:
    flip: bool = True
    crop_scale: Sequence[float] = (0.85, 1.0)
    rotation: float = 0.0
    color_jitter: float = 0.0
    extra: Mapping[str, float] = field(default_factory=dict)


def load_image(path, channels: int, draft_size: int | None = None) -> Image.Image:
    """Decode an image file; a missing, empty, truncated or non-image file gives a one-line error.

    ``path`` may also be the file's encoded bytes (a shard's record). With ``draft_size`` a JPEG is
    decoded at the smallest DCT scale that still covers ``draft_size`` pixels a side (training).
    The error names the file; it stays one line also when raised in a DataLoader worker (the CLI
    prints the worker's message as ``error: <file>: cannot decode image: <why>``).
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        return _load_bytes(bytes(path), channels, draft_size)
    path = Path(path)
    try:
        with Image.open(path) as img:
            if draft_size and img.format == "JPEG":
                img.draft("L" if channels == 1 else "RGB", (draft_size, draft_size))
            img.load()
            return image_from_pil(img, channels, path)
    except FileNotFoundError:
        raise DistmtlError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DistmtlError(f"{path}: cannot decode image: {_decode_problem(path, exc)}") from None


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def image_from_pil(img: Image.Image, channels: int, path: str | Path) -> Image.Image:
    """Any Pillow image in the model's colour mode (``L`` or ``RGB``), 8 bits per channel.

    Pillow's own ``convert`` clips wider samples to 255 (a 16-bit PNG becomes all white), so 16-bit
    and 32-bit integer images are scaled from their 0-65535 range, float images from 0-1; values
    outside those ranges, and modes Pillow cannot convert, are refused naming the file and mode.
    """
    mode = img.mode
    target = "L" if channels == 1 else "RGB"
    if mode in SIXTEEN_BIT_MODES or mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        top = 1.0 if mode == "F" else 65535.0
        if not (np.isfinite(values).all() and low >= 0 and high <= top):
            raise DistmtlError(f"{path}: image mode {mode} with values {low:g}..{high:g} outside 0..{top:g}; "
                               f"convert it to 8-bit RGB or grayscale")
        gray = Image.fromarray(np.rint(values * (255.0 / top)).astype(np.uint8), "L")
        return gray.convert(target)
    if mode in ("La", "RGBa"):  # premultiplied alpha: Pillow converts these only to their plain forms
        img = img.convert(mode.replace("a", "A"))
    try:
        return img.convert(target)
    except ValueError as exc:
        raise DistmtlError(f"{path}: image mode {mode} cannot be converted to {target} ({exc}); "
                           f"convert it to 8-bit RGB or grayscale") from None


def _load_bytes(data: bytes, channels: int, draft_size: int | None) -> Image.Image:
    import io

    try:
        with Image.open(io.BytesIO(data)) as img:
            if draft_size and img.format == "JPEG":
                img.draft("L" if channels == 1 else "RGB", (draft_size, draft_size))
            img.load()
            return image_from_pil(img, channels, "image bytes")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DistmtlError(f"cannot decode image ({len(data)} bytes): {' '.join(str(exc).split())}") from None


def decode_tensor(data, channels: int, where: str) -> torch.Tensor:
    """An image file (a path, or its encoded bytes) decoded straight to a CHW uint8 tensor by
    ``torchvision.io`` (libjpeg-turbo / libpng, no PIL image and no copy out of one); formats it
    does not read go through :func:`load_image`, as everything does where torchvision no longer
    ships its image decoders. Errors are one line naming ``where``."""
    import warnings

    with warnings.catch_warnings():  # torchvision >= 0.29 points to torchcodec on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from torchvision.io import ImageReadMode, decode_image
        except ImportError:
            decode_image = None
    if decode_image is None:
        return _tensor_of(load_image(data, channels))
    if isinstance(data, (bytes, bytearray, memoryview)):
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    else:
        try:
            encoded = torch.from_numpy(np.fromfile(data, dtype=np.uint8))
        except FileNotFoundError:
            raise DistmtlError(f"{where}: image file not found") from None
        except OSError as exc:
            raise DistmtlError(f"{where}: cannot read image ({exc.strerror or exc})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(encoded, mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
    except RuntimeError:  # a format or mode torchvision does not decode (or a broken file): PIL says which
        return _tensor_of(load_image(data, channels))


def _tensor_of(image: Image.Image) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(image))
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def image_problem(path: str | Path) -> str | None:
    """Why the image file at ``path`` cannot be used (one line), or None when it decodes.

    The full decode catches truncated files too; the up-front check ``check_images: decode`` of
    :func:`distmtl.data.csvformat.read_csv_source` uses it.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
    except FileNotFoundError:
        return "image file not found"
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        return f"cannot decode image: {_decode_problem(path, exc)}"
    return None


def _decode_problem(path: Path, exc: BaseException) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    if size == 0:
        return "empty file (0 bytes)"
    if isinstance(exc, UnidentifiedImageError):
        return f"not an image file (unrecognised format, {size} bytes)"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def array_to_image(array: np.ndarray, channels: int) -> Image.Image:
    """An HxW or HxWxC uint8 array (RGB order) to a PIL image in the model's colour mode."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise DistmtlError(f"image array must be uint8 (RGB, HxWxC), got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise DistmtlError(f"image array must be HxW or HxWx3 (RGB), got shape {tuple(array.shape)}")
    return Image.fromarray(array).convert("L" if channels == 1 else "RGB")


def _finish(pre: Preprocessing) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]


def eval_transform(pre: Preprocessing) -> v2.Compose:
    return v2.Compose([v2.Resize((pre.size, pre.size), interpolation=pre.mode, antialias=True), *_finish(pre)])


def eval_resize(pre: Preprocessing) -> v2.Compose:
    """The first half of :func:`eval_transform`, per image: resized, as a uint8 CHW tensor."""
    return v2.Compose([v2.Resize((pre.size, pre.size), interpolation=pre.mode, antialias=True), v2.ToImage()])


def eval_finish(pre: Preprocessing) -> v2.Compose:
    """The second half, on a whole uint8 batch ``[B, C, H, W]``: float in [0, 1], normalised. The
    same elementwise operations as per image, so ``eval_finish(stack(eval_resize(x)))`` equals
    ``stack(eval_transform(x))`` exactly."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)])


def preprocess(image: Image.Image, pre: Preprocessing) -> torch.Tensor:
    """The eval-time preprocessing of one decoded image (used by training-time validation and predict)."""
    return eval_transform(pre)(image)
