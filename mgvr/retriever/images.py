"""Reading a query image: a file, its bytes, or an array, as (H, W, 3) uint8 RGB pixels.

Any format Pillow reads (JPEG, PNG, WebP, GIF, BMP, TIFF, ...); EXIF orientation is applied, as
a photo viewer shows the picture; the first frame of an animation is taken.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mgvr.errors import UsageError

ImageSource = str | os.PathLike | bytes | np.ndarray


def image_name(source: ImageSource) -> str:
    """How a search result names its query image."""
    if isinstance(source, str | os.PathLike):
        return Path(source).name
    return "image"


def read_image(source: ImageSource, name: str | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels; UsageError naming the image when it cannot be read."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
            raise UsageError(f"an image array must be (H, W, 3) uint8 RGB, not "
                             f"{source.shape} {source.dtype}")
        return source
    label = name or (str(source) if not isinstance(source, bytes) else "the image")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.seek(0)
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except FileNotFoundError:
        raise UsageError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{label}: is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise UsageError(f"{label}: not an image format mgvr can read; use JPEG, PNG, WebP, "
                         "GIF, BMP or TIFF") from None
    except Image.DecompressionBombError as e:
        raise UsageError(f"{label}: too many pixels ({e}); use a smaller image") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data
        raise UsageError(f"{label}: cannot decode the image ({e}); is the file complete?"
                         ) from None
