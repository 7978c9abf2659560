"""Deep Compression on a small MLP: prune, retrain, cluster, retrain, Huffman-code, save a .circ.

Han, Mao and Dally (ICLR 2016) compress a network in three stages — magnitude pruning,
weight sharing by k-means clustering, Huffman coding — retraining after the first two so the
accuracy comes back. This script runs that flow end to end on scikit-learn's 8x8 digits
(bundled with scikit-learn, nothing is downloaded):

1. train an MLP with scikit-learn and export it to ONNX (Gemm + Relu nodes, written with
   onnx.helper from the trained coefficients);
2. prune it with circ's ``prune`` pass and retrain with :func:`circ.train.fit` (pruned
   weights stay zero);
3. cluster the weights with ``cluster`` and retrain the shared centroids;
4. Huffman-code with ``huffman`` and write a ``.circ`` container;
5. print Deep Compression's per-layer size table and the test accuracy after each stage.

::

    python examples/deep_compression_mlp.py                       # into a temporary folder
    python examples/deep_compression_mlp.py --out /tmp/dc --sparsity 0.9 --bits 4 --epochs 3
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

import circ
from circ.cli.opt import size_table
from circ.container import compression_report
from circ.train import TrainConfig, accuracy, fit


def digits(seed: int):
    """Digits scaled to [0, 1], split 75/25 stratified by class (never by position)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    return train_test_split(x, data.target, test_size=0.25, stratify=data.target, random_state=seed)


def train_mlp(x, y, hidden: int, seed: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(hidden_layer_sizes=(hidden, hidden), max_iter=60, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 60 iterations are enough here
        model.fit(x, y)
    return model


def export_onnx(model, path: Path) -> None:
    """The classifier's logits as an ONNX graph: Gemm, Relu, ..., Gemm."""
    nodes, initializers, current = [], [], "x"
    layers = len(model.coefs_)
    for index, (weight, bias) in enumerate(zip(model.coefs_, model.intercepts_)):
        name, out = f"fc{index + 1}", ("logits" if index == layers - 1 else f"h{index + 1}")
        initializers += [numpy_helper.from_array(weight.astype(np.float32), f"{name}.weight"),
                         numpy_helper.from_array(bias.astype(np.float32), f"{name}.bias")]
        gemm_out = out if index == layers - 1 else f"{out}_pre"
        nodes.append(helper.make_node("Gemm", [current, f"{name}.weight", f"{name}.bias"], [gemm_out], name=name))
        if index < layers - 1:
            nodes.append(helper.make_node("Relu", [gemm_out], [out], name=f"relu{index + 1}"))
        current = out
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", model.coefs_[0].shape[0]])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", model.coefs_[-1].shape[1]])],
        initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for mlp.onnx and mlp.circ (default: a temporary one)")
    parser.add_argument("--hidden", type=int, default=128, help="units per hidden layer")
    parser.add_argument("--sparsity", type=float, default=0.9, help="fraction of weights pruned")
    parser.add_argument("--bits", type=int, default=4, help="bits per cluster index (2^bits centroids)")
    parser.add_argument("--epochs", type=int, default=2, help="retraining epochs after prune and after cluster")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    folder = Path(args.out or tempfile.mkdtemp(prefix="deep_compression_"))
    folder.mkdir(parents=True, exist_ok=True)
    x_train, x_test, y_train, y_test = digits(args.seed)
    export_onnx(train_mlp(x_train, y_train, args.hidden, args.seed), folder / "mlp.onnx")

    graph = circ.load(folder / "mlp.onnx")
    retrain = TrainConfig(epochs=args.epochs, lr=0.02, batch=64, seed=args.seed)
    stages = [("trained (float32)", accuracy(graph, x_test, y_test))]

    graph = circ.optimize(graph, f"prune(sparsity={args.sparsity})", seed=args.seed)
    stages.append((f"pruned to {args.sparsity:.0%}", accuracy(graph, x_test, y_test)))
    fit(graph, x_train, y_train, retrain)
    stages.append(("  + retrained", accuracy(graph, x_test, y_test)))

    graph = circ.optimize(graph, f"cluster(bits={args.bits})", seed=args.seed)
    stages.append((f"clustered to {2 ** args.bits} values", accuracy(graph, x_test, y_test)))
    fit(graph, x_train, y_train, retrain)
    stages.append(("  + centroids retrained", accuracy(graph, x_test, y_test)))

    graph = circ.optimize(graph, "huffman")
    info = circ.save(graph, folder / "mlp.circ")
    reloaded = circ.load(folder / "mlp.circ")
    stages.append(("Huffman-coded .circ (reloaded)", accuracy(reloaded, x_test, y_test)))

    print(f"Deep Compression of a {args.hidden}x{args.hidden} MLP on the 8x8 digits "
          f"({len(y_train)} train / {len(y_test)} test samples)\n")
    print(size_table(compression_report(graph, info)))
    print()
    for stage, value in stages:
        print(f"{stage:34s} test accuracy {100 * value:6.2f}%")
    onnx_bytes = (folder / "mlp.onnx").stat().st_size
    print(f"\n{folder / 'mlp.onnx'}: {onnx_bytes:,} bytes -> {folder / 'mlp.circ'}: "
          f"{info.file_bytes:,} bytes ({onnx_bytes / info.file_bytes:.1f}x smaller)")


if __name__ == "__main__":
    main()
