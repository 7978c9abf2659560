"""Small classifiers on scikit-learn's bundled 8x8 digits, for the tests of passes that
measure accuracy (sensitivity, auto_prune, schedule, finetune).

Everything is seeded and offline: :func:`digits_split` is a stratified split (the array is
not cut by position), :func:`mlp_onnx` and :func:`cnn_onnx` train a tiny torch model for a
fraction of a second and export it with ``torch.onnx.export`` — the way a user brings their
own classifier — with input ``x`` and a symbolic batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEED = 0


def digits_split(train_per_class: int = 100, val_per_class: int = 40, seed: int = SEED):
    """``(x_train, y_train, x_val, y_val)``: 8x8 digits as float32 rows in [0, 1] (N, 64),
    int64 labels, a seeded shuffle within each class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in range(10):
        members = rng.permutation(np.flatnonzero(y == label))
        train.append(members[:train_per_class])
        val.append(members[train_per_class:train_per_class + val_per_class])
    train = rng.permutation(np.concatenate(train))
    val = np.concatenate(val)
    return x[train], y[train], x[val], y[val]


def _train(model, x, y, steps: int, lr: float = 0.01):
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(1)  # tiny matrices: threads only contend on a shared machine
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    xs, ys = torch.tensor(x), torch.tensor(y)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(xs), ys).backward()
        optimizer.step()
    return model.eval()


def _export(model, example_shape, path: Path) -> Path:
    import warnings

    import torch

    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(example_shape),), str(path), input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
                          opset_version=17, dynamo=False, do_constant_folding=False)
    return path


def mlp_onnx(directory: Path, hidden: tuple = (48, 32)) -> Path:
    """A trained MLP 64-48-32-10 (ReLU, Gemm layers) as ONNX at ``directory/mlp.onnx``."""
    import torch

    torch.manual_seed(SEED)
    layers, width = [], 64
    for size in hidden:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU()]
        width = size
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))
    x, y, _, _ = digits_split()
    return _export(_train(model, x, y, steps=150), (1, 64), Path(directory) / "mlp.onnx")


def cnn_onnx(directory: Path) -> Path:
    """A trained CNN with BatchNorm on 1x8x8 digits (conv 8 3x3, BN, ReLU, max pool, conv 16
    3x3, BN, ReLU, max pool, fc 10) as ONNX at ``directory/cnn.onnx``; input ``x`` (N,1,8,8)."""
    import torch

    torch.manual_seed(SEED)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 10))
    x, y, _, _ = digits_split()
    model = _train(model, x.reshape(-1, 1, 8, 8), y, steps=80, lr=0.02)
    return _export(model, (1, 1, 8, 8), Path(directory) / "cnn.onnx")
