"""Lowering a compressed MLP to EIE and running it on the simulator.

EIE (Han et al., ISCA 2016) is an accelerator for compressed fully connected layers: weights
pruned and clustered (4-bit indices into a codebook), stored column by column in interleaved
CSC across processing elements (PEs), with zero activations skipped. This script:

1. builds a 784-H-H-10 MLP (Gemm + Relu, random He-initialised weights) with onnx.helper;
2. compresses it with ``prune(sparsity=...),cluster(bits=4)`` through :func:`circ.optimize`;
3. lowers it to an EIE program with the target API (``backends.parse_target("eie(pes=..)")``:
   the same object ``circ-opt --target=eie`` uses), writes the program file and its assembly;
4. runs a batch on the simulator, checks the outputs against circ's reference interpreter,
   and prints the per-layer cycles, load balance, memory traffic and energy.

::

    python examples/lower_to_eie.py                          # 64 PEs, 90% pruned, H = 256
    python examples/lower_to_eie.py --pes 16 --hidden 512 --out /tmp/eie
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

import circ
from circ.fileio import atomic_write


def build_mlp(path: Path, hidden: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = [784, hidden, hidden, 10]
    nodes, initializers, current = [], [], "x"
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        name = f"fc{index + 1}"
        weight = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        initializers += [numpy_helper.from_array(weight, f"{name}.weight"),
                         numpy_helper.from_array(np.zeros(fan_out, np.float32), f"{name}.bias")]
        last = index == len(sizes) - 2
        out = "logits" if last else f"{name}_out"
        nodes.append(helper.make_node("Gemm", [current, f"{name}.weight", f"{name}.bias"], [out], name=name))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{index + 1}"], name=f"relu{index + 1}"))
            out = f"relu{index + 1}"
        current = out
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 784])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 10])], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for mlp.onnx, mlp.eie and mlp.eie.s (default: temporary)")
    parser.add_argument("--hidden", type=int, default=256, help="units per hidden layer")
    parser.add_argument("--sparsity", type=float, default=0.9, help="fraction of weights pruned")
    parser.add_argument("--pes", type=int, default=64, help="EIE processing elements")
    parser.add_argument("--batch", type=int, default=8, help="samples run on the simulator")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from backends import parse_target

    folder = Path(args.out or tempfile.mkdtemp(prefix="eie_"))
    folder.mkdir(parents=True, exist_ok=True)
    build_mlp(folder / "mlp.onnx", args.hidden, args.seed)
    graph = circ.optimize(circ.load(folder / "mlp.onnx"),
                          f"prune(sparsity={args.sparsity}),cluster(bits=4)", seed=args.seed)

    target = parse_target(f"eie(pes={args.pes})")
    program = target.lower(graph)
    target.write(program, str(folder / "mlp.eie"))
    atomic_write(folder / "mlp.eie.s", target.asm(program))
    figures = target.program_stats(program)
    print(f"EIE program: {len(program.layers)} layers, {figures['nonzeros']:,} non-zero weights of "
          f"{figures['weights']:,}, {figures['storage_bytes']:,} bytes on the PEs, "
          f"{figures['file_bytes']:,} bytes in {folder / 'mlp.eie'}")

    x = np.maximum(np.random.default_rng(args.seed).standard_normal((args.batch, 784)), 0).astype(np.float32)
    program = target.read(str(folder / "mlp.eie"))  # what circ-run would load
    outputs, stats = target.run(program, {"x": x})
    reference = circ.run(graph, {"x": x})["logits"]
    error = np.abs(outputs["logits"] - reference).max() / np.abs(reference).max()
    print(f"simulated {args.batch} samples; largest difference from circ's interpreter, relative "
          f"to the largest logit: {error:.2g}\n")
    assert error < 1e-4, error
    print(target.format_stats(stats))


if __name__ == "__main__":
    main()
