"""circ's reference interpreter vs onnxruntime on whole models.

    python benchmarks/bench_interpreter.py [--runs 5] [--models resnet50,lenet5] [--workdir DIR]
                                           [--profile]

Models (built offline, seeded):

* ``resnet50``: the onnx wheel's light ResNet-50 with random weights and a symbolic batch
  (``tests/zoo.py``), at batch 1 and 8, input 3x224x224;
* ``lenet5``: ``examples/build_lenet5.py``, at batch 256, input 1x28x28.

Each configuration runs once untimed (warm-up), then ``--runs`` times; the table shows the
median wall time of circ (``circ.Interpreter``, NumPy with its default BLAS threads),
onnxruntime with ``intra_op_num_threads=1`` and with its default threads, and the ratios
circ/ort. The target is circ no worse than 3x onnxruntime on the conv nets; the last two
lines say whether it is met against each onnxruntime setting. Outputs are also compared, so a fast wrong answer does
not count. ``--profile`` adds circ's time per op type, to see which kernels to speed up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "examples")]

import circ

TARGET_RATIO = 3.0

# model name -> batches to time
CONFIGS = {"resnet50": (1, 8), "lenet5": (256,)}


def build_model(name: str, workdir: Path) -> Path:
    """Write the named benchmark model into ``workdir`` (reused if already there)."""
    if name == "resnet50":
        import zoo

        path = workdir / "light_resnet50_batched.onnx"
        return path if path.exists() else zoo.build_light("resnet50", dynamic_batch=True)(workdir)
    if name == "lenet5":
        from build_lenet5 import build_lenet5

        path = workdir / "lenet5.onnx"
        if not path.exists():
            circ.save(build_lenet5(seed=0), path)
        return path
    raise SystemExit(f"unknown model {name!r}; choose from {', '.join(CONFIGS)}")


def feeds_for(path: Path, batch: int) -> dict:
    import zoo

    return zoo.random_feeds(onnx.load(str(path), load_external_data=False), batch, seed=0)


def median_seconds(fn, runs: int) -> float:
    fn()  # warm-up: first-call allocations, BLAS thread start
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench(name: str, batch: int, path: Path, runs: int) -> dict:
    feeds = feeds_for(path, batch)
    interpreter = circ.Interpreter(circ.load(path))
    single = ort_session(path, 1)
    default = ort_session(path, 0)

    ours = interpreter.run(feeds)
    theirs = single.run(None, feeds)
    for (out_name, got), want in zip(ours.items(), theirs):
        atol = 1e-5 * max(1.0, float(np.abs(want).max()))
        if not np.allclose(got, want, rtol=1e-4, atol=atol):
            raise SystemExit(f"{name} batch {batch}: circ's output {out_name!r} differs from onnxruntime's")

    return {
        "model": name, "batch": batch,
        "circ": median_seconds(lambda: interpreter.run(feeds), runs),
        "ort1": median_seconds(lambda: single.run(None, feeds), runs),
        "ort": median_seconds(lambda: default.run(None, feeds), runs),
    }


class TimedInterpreter(circ.Interpreter):
    """Adds up the time spent in each op (for ``--profile``)."""

    def __init__(self, graph):
        super().__init__(graph)
        self.seconds: dict[str, float] = {}

    def run_node(self, node, args):
        start = time.perf_counter()
        result = super().run_node(node, args)
        self.seconds[node.op] = self.seconds.get(node.op, 0.0) + time.perf_counter() - start
        return result


def print_profile(name: str, batch: int, path: Path, runs: int) -> None:
    """Time per op type in circ's interpreter, summed over nodes (mean of ``runs`` runs)."""
    interpreter = TimedInterpreter(circ.load(path))
    feeds = feeds_for(path, batch)
    interpreter.run(feeds)
    interpreter.seconds.clear()
    for _ in range(runs):
        interpreter.run(feeds)
    total = sum(interpreter.seconds.values())
    print(f"\n{name} batch {batch}: circ time per op (mean of {runs} runs, {total / runs * 1e3:.1f} ms)")
    for op, seconds in sorted(interpreter.seconds.items(), key=lambda item: -item[1]):
        print(f"  {op:<20} {seconds / runs * 1e3:>10.1f} ms {100 * seconds / total:>6.1f}%")


def print_table(rows: list[dict]) -> None:
    header = f"{'model':<10} {'batch':>5} {'circ ms':>10} {'ort-1t ms':>10} {'ort ms':>10} " \
             f"{'circ/ort-1t':>12} {'circ/ort':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['model']:<10} {row['batch']:>5} {row['circ'] * 1e3:>10.1f} {row['ort1'] * 1e3:>10.1f} "
              f"{row['ort'] * 1e3:>10.1f} {row['circ'] / row['ort1']:>12.2f} {row['circ'] / row['ort']:>9.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="circ interpreter vs onnxruntime")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per configuration (median)")
    parser.add_argument("--models", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to build models (kept between runs); default a temporary folder")
    parser.add_argument("--profile", action="store_true", help="also print circ's time per op type")
    args = parser.parse_args(argv)

    names = [n for n in args.models.split(",") if n]
    with tempfile.TemporaryDirectory(prefix="circ-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = []
        for name in names:
            path = build_model(name, workdir)
            for batch in CONFIGS[name]:
                rows.append(bench(name, batch, path, args.runs))
        print(f"median of {args.runs} runs; {os.cpu_count()} CPUs; numpy {np.__version__}")
        print_table(rows)
        if args.profile:
            for row in rows:
                print_profile(row["model"], row["batch"], build_model(row["model"], workdir), args.runs)
    print()
    for key, label in (("ort1", "onnxruntime, 1 thread"), ("ort", "onnxruntime, default threads")):
        worst = max(row["circ"] / row[key] for row in rows)
        verdict = "met" if worst <= TARGET_RATIO else "NOT met"
        print(f"target circ <= {TARGET_RATIO:g}x {label}: {verdict} (worst {worst:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
