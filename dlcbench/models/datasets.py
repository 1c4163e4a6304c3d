"""Labelled data that ships offline, for accuracy: scikit-learn's ``load_digits`` (1,797 8x8 images in its wheel).

A zoo entry with a ``dataset`` is trained on the dataset's training split when it is built (seeded, so an export is
reproducible and cached like any other); its export stores the held-out split (``labelled.npz``) and a calibration
sample of the training split (``calibration.npz``) so that accuracy and int8 calibration need no scikit-learn later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlcbench.errors import BackendUnavailableError

#: Datasets by name.
DATASETS = ("digits",)
#: Rows of the training split kept for int8 calibration.
CALIBRATION_ROWS = 256


@dataclass
class Split:
    """A fixed train / held-out split; images as float32 in [0, 1], labels int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    description: str


def digits(shape: tuple[int, ...] = (64,)) -> Split:
    """``load_digits`` scaled to [0, 1], reshaped to ``shape`` per image, split 75/25 stratified with a fixed seed."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise BackendUnavailableError("the digits models need scikit-learn: pip install scikit-learn") from None
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32).reshape(-1, *shape)
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return Split(x_train, y_train, x_test, y_test, 10,
                 "scikit-learn load_digits, 75/25 stratified split (random_state=0), pixels / 16")


def load_split(name: str, shape: tuple[int, ...]) -> Split:
    """The split of dataset ``name`` (one of :data:`DATASETS`) with images shaped ``shape``."""
    if name == "digits":
        return digits(shape)
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose highest score is the label."""
    return float(np.mean(np.argmax(np.asarray(scores).reshape(len(labels), -1), axis=1) == labels))
