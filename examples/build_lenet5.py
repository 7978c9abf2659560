"""Write a LeNet-5 with seeded random weights as ONNX, built with circ's own graph API.

    python examples/build_lenet5.py [OUT.onnx] [--seed N]

The network is Caffe's MNIST LeNet: input scaled by 1/256, conv 20 5x5, max pool 2x2,
conv 50 5x5, max pool 2x2, fc 500, ReLU, fc 10, softmax; input ``data`` of shape
[N, 1, 28, 28] with a symbolic batch N. The fully connected layers are written the way a
framework that stores weights as (out, in) often exports them, ``MatMul(x, Transpose(W)) + b``,
so ``fold_constants`` has a Transpose of a constant to fold. Weights are He-normal (seeded),
biases small; nothing is downloaded and torch is not needed.

Default output: ``lenet5.onnx`` next to this script.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import circ
from circ.graph import Graph

OPSET = 13


def _he_normal(rng: np.random.Generator, shape: tuple, fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _bias(rng: np.random.Generator, size: int) -> np.ndarray:
    return (0.01 * rng.standard_normal(size)).astype(np.float32)


def build_lenet5(seed: int = 0) -> Graph:
    """The LeNet-5 graph with random weights drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    graph = Graph(name="lenet5", opsets={"": OPSET})
    data = graph.add_input("data", np.float32, ("N", 1, 28, 28))

    scale = graph.add_const("scale", np.array(1 / 256, dtype=np.float32))
    x = graph.add_node("Mul", [data, scale], name="scale_input").output

    def conv(x, name, cin, cout):
        weight = graph.add_const(f"{name}_w", _he_normal(rng, (cout, cin, 5, 5), cin * 25))
        bias = graph.add_const(f"{name}_b", _bias(rng, cout))
        return graph.add_node("Conv", [x, weight, bias], {"kernel_shape": [5, 5]}, name=name).output

    def pool(x, name):
        return graph.add_node("MaxPool", [x], {"kernel_shape": [2, 2], "strides": [2, 2]}, name=name).output

    def fully_connected(x, name, fan_in, fan_out):
        weight = graph.add_const(f"{name}_w", _he_normal(rng, (fan_out, fan_in), fan_in))
        weight_t = graph.add_node("Transpose", [weight], {"perm": [1, 0]}, name=f"{name}_wT").output
        product = graph.add_node("MatMul", [x, weight_t], name=f"{name}_matmul").output
        bias = graph.add_const(f"{name}_b", _bias(rng, fan_out))
        return graph.add_node("Add", [product, bias], name=name).output

    x = pool(conv(x, "conv1", 1, 20), "pool1")
    x = pool(conv(x, "conv2", 20, 50), "pool2")
    flat_shape = graph.add_const("flat_shape", np.array([-1, 800], dtype=np.int64))
    x = graph.add_node("Reshape", [x, flat_shape], name="flatten").output
    x = graph.add_node("Relu", [fully_connected(x, "ip1", 800, 500)], name="relu1").output
    logits = fully_connected(x, "ip2", 500, 10)
    prob = graph.add_node("Softmax", [logits], {"axis": 1}, name="prob", outputs=["prob"])
    graph.outputs.append(prob.output)
    return graph


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?",
                        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "lenet5.onnx"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    graph = build_lenet5(args.seed)
    circ.verify(graph)
    circ.save(graph, args.output)
    print(f"wrote {args.output}: LeNet-5, {len(graph.nodes)} nodes, "
          f"{sum(v.const.to_numpy().size for v in graph.consts.values())} constant values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
