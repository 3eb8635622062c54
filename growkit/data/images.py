"""Image classification data: scikit-learn's digits (always offline) or a class-per-folder tree."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.errors import GrowError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def digits(image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 8x8 digits as (N, 1, image_size, image_size) floats in [0, 1], bilinearly upsampled, and labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images, torch.tensor(bunch.target, dtype=torch.long)


def image_folder(path: str | Path, image_size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images under ``path/<class>/`` resized to ``image_size``, as floats in [0, 1], labels and class names."""
    try:
        from PIL import Image
    except ImportError:
        raise GrowError("reading an image folder needs Pillow (pip install pillow)") from None
    if channels not in (1, 3):
        raise GrowError(f"image folders give 1 (grey) or 3 (RGB) channels, not {channels}")
    root = Path(path)
    if not root.is_dir():
        raise GrowError(f"image folder {root} does not exist (expected {root}/<class>/<image files>)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise GrowError(f"{root} has no class subfolders (expected {root}/<class>/<image files>)")
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((root / name).rglob("*")):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as img:
                    img = img.convert("L" if channels == 1 else "RGB").resize((image_size, image_size), Image.BILINEAR)
                    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
            except OSError as err:
                raise GrowError(f"cannot read image {file}: {err}") from None
            images.append(data.view(image_size, image_size, channels).permute(2, 0, 1).float() / 255.0)
            labels.append(label)
    if not images:
        raise GrowError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return torch.stack(images), torch.tensor(labels), classes
