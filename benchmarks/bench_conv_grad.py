"""Forward + backward of LeNet-5 through circ.autodiff vs PyTorch on the CPU.

    python benchmarks/bench_conv_grad.py [--batch 64] [--runs 15] [--threads N] [--profile]

The network is Caffe's LeNet-5 (``examples/build_lenet5.py``: input scaled by 1/256, conv 20
5x5, max pool 2, conv 50 5x5, max pool 2, fc 500, ReLU, fc 10), the training step issue 7
times: one batch of 28x28 images through the graph, softmax cross-entropy against labels,
gradients of every weight and bias.

* circ: ``circ.autodiff.loss_and_gradients`` with one reused :class:`~circ.autodiff.Tape`
  (NumPy's BLAS with ``--threads`` threads, through threadpoolctl when installed);
* torch: the same weights in an ``nn.Sequential``, ``cross_entropy`` and ``backward()`` with
  ``torch.set_num_threads(--threads)``.

Both sides run the same batch, timed in three blocks per side alternating between fresh
processes that run one side only (see :func:`time_in_processes`), each block after an
untimed step; the table gives the best and median of ``--runs`` runs and the ratio
circ/torch of the medians. Losses and
gradients are compared first (float32 tolerances), so a fast wrong gradient does not count.
``--profile`` adds circ's forward and backward time per op type. Target (issue 7): circ no
worse than 3x torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "examples")]

from circ.autodiff import Tape, loss_and_gradients

TARGET_RATIO = 3.0


def blas_threads(threads: int):
    """A context limiting NumPy's BLAS to ``threads`` threads (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def torch_lenet(graph):
    """The graph's weights in an equivalent ``torch.nn.Sequential``."""
    import torch
    from torch import nn

    weights = {name: torch.tensor(np.array(value.const.to_numpy())) for name, value in graph.consts.items()}
    model = nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
    with torch.no_grad():
        for index, name in ((0, "conv1"), (2, "conv2"), (5, "ip1"), (7, "ip2")):
            model[index].weight.copy_(weights[f"{name}_w"])
            model[index].bias.copy_(weights[f"{name}_b"])
    return model


def data(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, size=batch)
    return images, labels


def circ_step(graph, tape):
    weights = [v for v in graph.consts.values() if v.name.endswith(("_w", "_b"))]

    def step(images, labels):
        return loss_and_gradients(graph, {"data": images}, labels, weights, tape=tape)

    return step


def torch_step(model):
    import torch
    import torch.nn.functional as F

    def step(images, labels):
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(torch.from_numpy(images) / 256), torch.from_numpy(labels))
        loss.backward()
        return loss.item()

    return step


def check_same(graph, circ_fn, model, torch_fn, images, labels) -> None:
    loss, grads = circ_fn(images, labels)
    torch_loss = torch_fn(images, labels)
    if not np.isclose(loss, torch_loss, rtol=1e-4):
        raise SystemExit(f"losses differ: circ {loss}, torch {torch_loss}")
    for index, name in ((0, "conv1"), (2, "conv2"), (5, "ip1"), (7, "ip2")):
        for part, tensor in (("w", model[index].weight.grad), ("b", model[index].bias.grad)):
            want = tensor.numpy()
            got = grads[f"{name}_{part}"]
            if not np.allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max()))):
                raise SystemExit(f"gradient of {name}_{part} differs from torch's")


def time_side(side: str, batch: int, threads: int, runs: int) -> list:
    """Seconds of ``runs`` steps of one side alone in this process, after one untimed step.
    The circ side never imports torch, so no OpenMP pool competes with NumPy's BLAS."""
    from build_lenet5 import build_lenet5

    graph = build_lenet5(seed=0)
    images, labels = data(batch)
    if side == "circ":
        step = circ_step(graph, Tape(graph))
    else:
        import torch

        torch.set_num_threads(threads)
        step = torch_step(torch_lenet(graph))
    times = []
    with blas_threads(threads):
        step(images, labels)
        for _ in range(runs):
            start = time.perf_counter()
            step(images, labels)
            times.append(time.perf_counter() - start)
    return times


def time_in_processes(batch: int, threads: int, runs: int, rounds: int = 3) -> dict:
    """``runs`` step times per side, in ``rounds`` blocks alternating between the sides,
    each block in a fresh process running one side only. In one process the sides slow
    each other down several times: after a torch call its OpenMP threads keep spinning
    on the cores while NumPy's BLAS threads wait for them, and the other way round."""
    times = {"circ": [], "torch": []}
    per_block = max(1, -(-runs // rounds))
    for _ in range(rounds):
        for side, done in times.items():
            count = min(per_block, runs - len(done))
            if count <= 0:
                continue
            command = [sys.executable, __file__, "--time-side", side, "--batch", str(batch),
                       "--threads", str(threads), "--runs", str(count)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            done += json.loads(output.strip().splitlines()[-1])
    return times


def print_profile(graph, images, labels, runs: int) -> None:
    """circ's forward (per op type) and backward (per op type) time, mean of ``runs``."""
    forward: dict[str, float] = {}
    backward_time: dict[str, float] = {}

    class TimedTape(Tape):
        def run_node(self, node, args):
            start = time.perf_counter()
            result = super().run_node(node, args)
            forward[node.op] = forward.get(node.op, 0.0) + time.perf_counter() - start
            return result

        def gradient_of(self, node):
            fn = super().gradient_of(node)

            def timed(*call):
                start = time.perf_counter()
                result = fn(*call)
                backward_time[node.op] = backward_time.get(node.op, 0.0) + time.perf_counter() - start
                return result

            return None if fn is None else timed

    tape = TimedTape(graph)
    step = circ_step(graph, tape)
    step(images, labels)
    forward.clear(), backward_time.clear()
    for _ in range(runs):
        step(images, labels)
    for title, table in (("forward", forward), ("backward", backward_time)):
        total = sum(table.values())
        print(f"\ncirc {title}: {total / runs * 1e3:.1f} ms per step")
        for op, seconds in sorted(table.items(), key=lambda item: -item[1]):
            print(f"  {op:<20} {seconds / runs * 1e3:>8.2f} ms {100 * seconds / total:>6.1f}%")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="LeNet-5 forward+backward: circ.autodiff vs torch")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=15, help="timed steps per side")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both sides")
    parser.add_argument("--profile", action="store_true", help="also print circ's time per op type")
    parser.add_argument("--time-side", choices=["circ", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.time_side:  # a child process of time_in_processes
        print(json.dumps(time_side(args.time_side, args.batch, args.threads, args.runs)))
        return 0

    import torch
    from build_lenet5 import build_lenet5

    torch.set_num_threads(args.threads)
    graph = build_lenet5(seed=0)
    model = torch_lenet(graph)
    images, labels = data(args.batch)
    with blas_threads(args.threads):
        check_same(graph, circ_step(graph, Tape(graph)), model, torch_step(model), images, labels)
        if args.profile:
            print_profile(graph, images, labels, args.runs)
    times = time_in_processes(args.batch, args.threads, args.runs)
    print(f"\nLeNet-5 forward+backward, batch {args.batch}, {args.threads} threads, "
          f"{args.runs} runs; {os.cpu_count()} CPUs; numpy {np.__version__}, torch {torch.__version__}")
    print(f"{'':<8} {'best ms':>9} {'median ms':>10}")
    for name, values in times.items():
        print(f"{name:<8} {min(values) * 1e3:>9.2f} {statistics.median(values) * 1e3:>10.2f}")
    ratio = statistics.median(times["circ"]) / statistics.median(times["torch"])
    best_ratio = min(times["circ"]) / min(times["torch"])
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"circ/torch: {ratio:.2f}x (medians), {best_ratio:.2f}x (best); "
          f"target <= {TARGET_RATIO:g}x: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
