"""The EIE simulator on AlexNet's FC7 shape vs scipy.sparse and dense NumPy, and its cycle model.

    python benchmarks/bench_eie.py [--size 4096] [--weight-density 0.09]
                                   [--activation-density 0.35] [--runs 50] [--pes 64]

A seeded random ``size x size`` layer keeps ``--weight-density`` of its weights, clustered to
16 shared values (4-bit indices), lowered to EIE's interleaved CSC over ``--pes`` PEs with
4-bit relative row indices; one input vector (batch 1) has ``--activation-density`` non-zero
activations (the paper's FC7: 9% and 35%, Han et al., ISCA 2016, Table III). Timed, best of
``--runs`` with the three contestants interleaved in each round (so load on the machine hits
them alike):

* the interpreter: ``Simulator.run(feeds, model=False)`` — the whole program (load, SpMV,
  store) with the decoded layout built once beforehand, as a simulator does per program;
* scipy.sparse: ``csr_matrix @ x`` (float32) on the same weights;
* dense NumPy: ``W @ x`` (float32 BLAS).

Before timing, all three are checked against a float64 product. Then: storage bytes per
non-zero (entries + column pointers), the time of the cycle/energy model (separate from the
arithmetic), and the simulated cycles and load-balance efficiency as the activation FIFO
deepens (mean over 8 seeded input vectors). Target: the interpreter within 2x of
scipy.sparse; the last line says whether it holds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from backends.eie.isa import Load, Program, SpMV, Store  # noqa: E402
from backends.eie.lower import encode_csc  # noqa: E402
from backends.eie.sim import Simulator  # noqa: E402
from circ.printer import format_table  # noqa: E402

FIFO_DEPTHS = (1, 2, 4, 8, 16, 32)


def build_layer(size: int, density: float, pes: int, seed: int = 0):
    """(EIE program, dense float32 weights) of a random clustered layer."""
    rng = np.random.default_rng(seed)
    codes = np.where(rng.random((size, size)) < density, rng.integers(0, 16, (size, size)), -1)
    codebook = np.sort(rng.standard_normal(16) / np.sqrt(size * density)).astype(np.float32)
    pe_ptr, col_ptr, code, rel = encode_csc(codes, pes, 4)
    layer = SpMV("fc7", "a0", "a1", size, size, pes, 4, 4, False, codebook, np.zeros(size),
                 pe_ptr, col_ptr, code, rel)
    dense = np.where(codes >= 0, codebook[np.maximum(codes, 0)], 0).astype(np.float32)
    return Program([Load("x", "a0", (size,)), layer, Store("a1", "y", (size,))]), dense


def activations(size: int, density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_normal((1, size))).astype(np.float32) + 0.01  # positive, as after ReLU
    x[rng.random((1, size)) >= density] = 0
    return x


def best_of(functions: dict, runs: int) -> dict:
    """Best wall time of each function over ``runs`` interleaved rounds."""
    best = {name: float("inf") for name in functions}
    for _ in range(runs):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--weight-density", type=float, default=0.09)
    parser.add_argument("--activation-density", type=float, default=0.35)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--pes", type=int, default=64)
    args = parser.parse_args(argv)
    import scipy.sparse

    program, dense = build_layer(args.size, args.weight_density, args.pes)
    layer = program.layers[0]
    csr = scipy.sparse.csr_matrix(dense)
    x = activations(args.size, args.activation_density, seed=1)
    start = time.perf_counter()
    simulator = Simulator(program)
    decode_seconds = time.perf_counter() - start

    exact = dense.astype(np.float64) @ x[0].astype(np.float64)
    results = {"interpreter": simulator.run({"x": x}, model=False)[0]["y"][0],
               "scipy.sparse CSR": csr @ x[0], "dense NumPy": dense @ x[0]}
    scale = np.abs(exact).max()
    for name, y in results.items():
        error = np.abs(y - exact).max() / scale
        if error > 1e-5:
            print(f"{name} disagrees with the float64 product (relative error {error:.2g})")
            return 1

    times = best_of({"interpreter": lambda: simulator.run({"x": x}, model=False),
                     "scipy.sparse CSR": lambda: csr @ x[0],
                     "dense NumPy": lambda: dense @ x[0]}, args.runs)
    model_seconds = best_of({"model": lambda: simulator.run({"x": x})}, max(3, args.runs // 10))
    reference = times["scipy.sparse CSR"]
    print(f"{args.size}x{args.size} layer, {layer.nnz:,} non-zeros "
          f"({100 * layer.nnz / args.size ** 2:.1f}%), {int(np.count_nonzero(x)):,} non-zero "
          f"activations ({100 * np.count_nonzero(x) / args.size:.1f}%), batch 1, {args.pes} PEs; "
          f"best of {args.runs}")
    rows = [[name, f"{1e3 * seconds:.3f}", f"{seconds / reference:.2f}x"]
            for name, seconds in times.items()]
    print(format_table(["matvec", "ms", "vs scipy"], rows, align="lrr"))
    print(f"decode once per program: {1e3 * decode_seconds:.0f} ms; the run with the cycle/energy "
          f"model: {1e3 * model_seconds['model']:.1f} ms")
    print(f"storage: {layer.storage_bytes:,} bytes = {layer.storage_bytes / layer.nnz:.3f} bytes per "
          f"non-zero ({layer.entries:,} entries of {layer.v_bits}+{layer.z_bits} bits, "
          f"{layer.entries - layer.nnz:,} fillers; {args.pes} x {args.size + 1} "
          f"{layer.pointer_bits}-bit column pointers)")

    samples = [activations(args.size, args.activation_density, seed=seed) for seed in range(8)]
    batch = np.concatenate(samples)
    rows = []
    for depth in FIFO_DEPTHS:
        stats = Simulator(program, fifo_depth=depth).run({"x": batch})[1][1]
        rows.append([str(depth), f"{stats.cycles / len(samples):.0f}", f"{stats.efficiency:.3f}",
                     f"{stats.energy_pj / len(samples) / 1e6:.2f}"])
    print("cycle model (mean over 8 input vectors):")
    print(format_table(["FIFO depth", "cycles", "load-balance eff", "energy uJ"], rows))
    ratio = times["interpreter"] / reference
    print(f"target: interpreter within 2x of scipy.sparse: {'yes' if ratio <= 2 else 'NO'} "
          f"({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
