"""circ.optim: SGD (momentum, weight decay) and Adam take torch.optim's steps, to float rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circ.errors import PipelineError
from circ.optim import SGD, Adam, make_optimizer


def _gradient_sequence(shapes, steps, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(steps)]


def _torch_steps(optimizer_class, params, gradients, **options):
    tensors = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    optimizer = optimizer_class(tensors, **options)
    for grads in gradients:
        for tensor, grad in zip(tensors, grads):
            tensor.grad = torch.tensor(grad)
        optimizer.step()
    return [t.detach().numpy() for t in tensors]


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 5e-4), (0.5, 0.1)])
def test_sgd_matches_torch(momentum, weight_decay):
    shapes = [(4, 3), (3,)]
    params = [a * 0.5 for a in _gradient_sequence(shapes, 1, seed=1)[0]]
    gradients = _gradient_sequence(shapes, 6)
    ours = [p.copy() for p in params]
    optimizer = SGD(0.05, momentum=momentum, weight_decay=weight_decay)
    for grads in gradients:
        optimizer.step(ours, grads)
    expected = _torch_steps(torch.optim.SGD, params, gradients, lr=0.05, momentum=momentum,
                            weight_decay=weight_decay)
    for mine, theirs in zip(ours, expected):
        assert mine.dtype == np.float32
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_matches_torch(weight_decay):
    shapes = [(5, 2), (2,)]
    params = _gradient_sequence(shapes, 1, seed=2)[0]
    gradients = _gradient_sequence(shapes, 8)
    ours = [p.copy() for p in params]
    optimizer = Adam(0.01, weight_decay=weight_decay)
    for grads in gradients:
        optimizer.step(ours, grads)
    expected = _torch_steps(torch.optim.Adam, params, gradients, lr=0.01, weight_decay=weight_decay)
    for mine, theirs in zip(ours, expected):
        assert mine.dtype == np.float32
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)


def test_first_sgd_step_by_hand():
    param = np.array([1.0, -2.0], np.float32)
    SGD(0.1, momentum=0.9, weight_decay=0.5).step([param], [np.array([0.2, 0.4], np.float32)])
    # g + wd * p = [0.7, -0.6]; the first momentum buffer is g itself.
    np.testing.assert_allclose(param, [1.0 - 0.07, -2.0 + 0.06], rtol=1e-6)


def test_zero_gradient_keeps_zero_weights_exactly():
    for optimizer in (SGD(0.1, momentum=0.9, weight_decay=0.1), Adam(0.1, weight_decay=0.1)):
        param = np.array([0.0, 1.0, 0.0], np.float32)
        for _ in range(5):
            optimizer.step([param], [np.array([0.0, 0.3, 0.0], np.float32)])
        assert param[0] == 0 and param[2] == 0 and param[1] != 1


def test_grads_are_not_modified():
    grad = np.ones(3, np.float32)
    SGD(0.1, weight_decay=0.5).step([np.ones(3, np.float32)], [grad])
    Adam(0.1, weight_decay=0.5).step([np.ones(3, np.float32)], [grad])
    assert np.all(grad == 1)


def test_make_optimizer():
    assert isinstance(make_optimizer("sgd", lr=0.1), SGD)
    assert isinstance(make_optimizer("adam", lr=0.1), Adam)
    with pytest.raises(PipelineError, match="unknown optimizer 'rmsprop'.*sgd, adam"):
        make_optimizer("rmsprop", lr=0.1)
