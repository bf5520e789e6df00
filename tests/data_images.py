"""Image data for data tests: scikit-learn digits as a Hugging Face `Image` column of PNGs."""

import io

import datasets
import numpy as np
from PIL import Image as PILImage
from sklearn.datasets import load_digits


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray((pixels * 16).clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def digit_images(count: int) -> datasets.Dataset:
    """The first `count` digits: an 8x8 `image` (`Image` feature) and a `ClassLabel` `label`."""
    digits = load_digits()
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": png(im), "path": None} for im in digits.images[:count]], "label": digits.target[:count]},
        features=features,
    )
