"""Optimizers for circ's trainer: SGD with momentum and weight decay, and Adam.

Both update a list of float arrays in place from a list of gradients of the same shapes, and
follow PyTorch's ``torch.optim.SGD`` and ``torch.optim.Adam`` update rules exactly (weight
decay is L2 added to the gradient, not AdamW's decoupled decay), so a model trained here and
the same model trained in PyTorch take the same steps to float rounding:

- SGD: ``g += wd * p``; ``buf = g`` on the first step, then ``buf = momentum * buf + g``;
  ``p -= lr * buf``.
- Adam (Kingma and Ba 2015, Algorithm 1): ``g += wd * p``; ``m = b1 m + (1 - b1) g``;
  ``v = b2 v + (1 - b2) g^2``; ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

A gradient that is zero where a parameter is zero keeps it zero under both rules (weight
decay of 0 is 0, a momentum or moment buffer that only ever saw zeros stays zero), which is
how pruned weights stay pruned.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from circ.errors import PipelineError

OPTIMIZERS = ("sgd", "adam")


class SGD:
    """Stochastic gradient descent with (heavy-ball) momentum and L2 weight decay."""

    def __init__(self, lr: float, *, momentum: float = 0.9, weight_decay: float = 0.0):
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self._buffers: list = []

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        """Update ``params`` in place (``grads`` are left as they are)."""
        if not self._buffers:
            self._buffers = [None] * len(params)
        for i, (param, grad) in enumerate(zip(params, grads)):
            if self.weight_decay:
                grad = grad + self.weight_decay * param
            if self.momentum:
                buffer = self._buffers[i]
                if buffer is None:
                    buffer = self._buffers[i] = grad.copy()
                else:
                    buffer *= self.momentum
                    buffer += grad
                grad = buffer
            param -= self.lr * grad


class Adam:
    """Adam with bias-corrected moments and L2 weight decay (as ``torch.optim.Adam``)."""

    def __init__(self, lr: float = 1e-3, *, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.lr, self.eps, self.weight_decay = float(lr), float(eps), float(weight_decay)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.steps = 0
        self._first: list = []
        self._second: list = []

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        """Update ``params`` in place (``grads`` are left as they are)."""
        if not self._first:
            self._first = [np.zeros_like(p) for p in params]
            self._second = [np.zeros_like(p) for p in params]
        self.steps += 1
        correction1 = 1.0 - self.beta1 ** self.steps
        root_correction2 = math.sqrt(1.0 - self.beta2 ** self.steps)
        step_size = self.lr / correction1
        for param, grad, first, second in zip(params, grads, self._first, self._second):
            if self.weight_decay:
                grad = grad + self.weight_decay * param
            first *= self.beta1
            first += (1.0 - self.beta1) * grad
            second *= self.beta2
            second += (1.0 - self.beta2) * np.square(grad)
            denominator = np.sqrt(second)
            denominator /= root_correction2
            denominator += self.eps
            param -= step_size * (first / denominator)


def make_optimizer(name: str, *, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
    """The optimizer called ``name`` (``sgd`` or ``adam``); ``momentum`` applies to SGD."""
    if name == "sgd":
        return SGD(lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return Adam(lr, weight_decay=weight_decay)
    raise PipelineError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
