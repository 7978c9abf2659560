"""Structural passes: what they buy in onnxruntime, and what they cost to run.

    python benchmarks/bench_structural.py [--runs 30] [--repeats 3] [--workdir DIR] [--parts channel_prune,torch_pruning]

Parts:

* ``channel_prune``: the onnx wheel's light ResNet-50 (random He-scaled weights, seeded,
  batch 1, 3x224x224) pruned by ``channel_prune(target_macs=0.5)``. Prints the MACs and
  parameters before and after, the pass's own run time (target: under 10 s) and the median
  onnxruntime latency of the model before and after (target: speed-up >= 1.6x), with
  onnxruntime on one thread and on its default threads, all graph optimizations on (as a
  user gets them). Both models are written by circ from the same graph (after
  ``fold_constants``), so the only difference is the pruning. The two sessions run in turns
  (before, after, after, before, ...) so that a busy machine slows both alike; each model's
  latency is the best of ``--repeats`` medians of ``--runs`` runs.
* ``torch_pruning``: the torch ResNet-8 of ``tests/zoo.py`` pruned to the same per-layer
  ratio (0.5, L1 norm, classifier kept) by circ's ``channel_prune`` and by Torch-Pruning
  (``pip install torch-pruning``; skipped with a note when it is missing). Both results are
  counted by circ's statistics on their ONNX export, so the numbers compare like for like.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import circ
from circ.analysis.stats import graph_stats
from circ.passmanager import PassManager

TARGET_SPEEDUP = 1.6
TARGET_PASS_SECONDS = 10.0


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # the default
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def paired_latency(paths: tuple, feeds: dict, runs: int, repeats: int, threads: int) -> list:
    """Best-of-``repeats`` median latency of each model, the models' runs taken in turns."""
    sessions = [ort_session(path, threads) for path in paths]
    for session in sessions:
        session.run(None, feeds)  # warm-up
    best = [float("inf")] * len(sessions)
    for _ in range(repeats):
        times = [[] for _ in sessions]
        for run in range(runs):
            order = range(len(sessions)) if run % 2 == 0 else reversed(range(len(sessions)))
            for index in order:
                start = time.perf_counter()
                sessions[index].run(None, feeds)
                times[index].append(time.perf_counter() - start)
        best = [min(b, statistics.median(t)) for b, t in zip(best, times)]
    return best


def input_feeds(graph, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in v.shape]).astype(v.dtype)
            for v in graph.inputs}


def bench_channel_prune(workdir: Path, runs: int, repeats: int) -> None:
    import zoo

    source = workdir / "light_resnet50.onnx"
    if not source.exists():
        zoo.build_light("resnet50")(workdir)
    graph = circ.optimize(circ.load(source), "fold_constants")
    result = PassManager.from_pipeline("channel_prune(target_macs=0.5)").run(graph.copy())
    entry = result.report["passes"][-1]
    details = entry["details"]
    pruned = result.graph
    before_path, after_path = workdir / "resnet50_before.onnx", workdir / "resnet50_pruned.onnx"
    circ.save(graph, before_path)
    circ.save(pruned, after_path)
    before, after = graph_stats(graph), graph_stats(pruned)

    print(f"channel_prune on light ResNet-50 (random weights), target_macs=0.5 "
          f"(round_to={details['round_to']}), batch 1")
    print(f"  MACs    {before.macs / 1e9:8.3f} G -> {after.macs / 1e9:8.3f} G  ({after.macs / before.macs:.3f})")
    print(f"  params  {before.params / 1e6:8.3f} M -> {after.params / 1e6:8.3f} M  "
          f"({after.params / before.params:.3f})")
    print(f"  channels removed: {details['channels_removed']} of {details['channels_total']}; "
          f"declined groups: {len(result.declines)}")
    seconds = entry["seconds"]
    print(f"  pass run time {seconds:.2f} s  (target < {TARGET_PASS_SECONDS:.0f} s: "
          f"{'met' if seconds < TARGET_PASS_SECONDS else 'NOT met'})")
    feeds = input_feeds(graph)
    for threads, label in ((1, "1 thread"), (0, "default threads")):
        slow, fast = paired_latency((before_path, after_path), feeds, runs, repeats, threads)
        speedup = slow / fast
        verdict = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
        print(f"  onnxruntime {label:>15}: {slow * 1e3:7.1f} ms -> {fast * 1e3:7.1f} ms  "
              f"speed-up {speedup:.2f}x (target >= {TARGET_SPEEDUP}x: {verdict})")


def bench_torch_pruning(workdir: Path) -> None:
    try:
        import torch
        import torch_pruning as tp
    except ImportError:
        print("torch_pruning: not installed (pip install torch-pruning); comparison skipped")
        return
    import zoo

    def fresh():
        zoo._seeded(1)
        return zoo._prepare(zoo._resnet8())

    example = torch.randn(1, 3, 32, 32)
    ratio = 0.5

    model = fresh()
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, ignored_layers=[model.fc])
    start = time.perf_counter()
    pruner.step()
    tp_seconds = time.perf_counter() - start
    tp_path = zoo._torch_export(model.eval(), example, workdir / "resnet8_torch_pruning.onnx",
                                opset=13, dynamic_batch=False)
    tp_stats = graph_stats(circ.load(tp_path))

    original_path = zoo._torch_export(fresh(), example, workdir / "resnet8_original.onnx",
                                      opset=13, dynamic_batch=False)
    original = circ.load(original_path)
    result = PassManager.from_pipeline(f"channel_prune(ratio={ratio})").run(original.copy())
    circ_stats = graph_stats(result.graph)
    base = graph_stats(original)

    print(f"\nResNet-8 (tests/zoo.py), ratio {ratio} per group, L1 norm, classifier kept; counted by circ")
    print(f"  {'':16} {'params':>10} {'MACs':>12} {'seconds':>8}")
    print(f"  {'original':16} {base.params:10d} {base.macs:12d}")
    print(f"  {'circ':16} {circ_stats.params:10d} {circ_stats.macs:12d} "
          f"{result.report['passes'][-1]['seconds']:8.3f}")
    print(f"  {'Torch-Pruning':16} {tp_stats.params:10d} {tp_stats.macs:12d} {tp_seconds:8.3f}")


PARTS = {"channel_prune": bench_channel_prune, "torch_pruning": bench_torch_pruning}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed onnxruntime runs per model (median)")
    parser.add_argument("--repeats", type=int, default=3, help="medians taken per model (the best counts)")
    parser.add_argument("--workdir", type=Path, default=None, help="build and keep the models here")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of: {', '.join(PARTS)}")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        for part in parts:
            if part == "channel_prune":
                bench_channel_prune(workdir, args.runs, args.repeats)
            else:
                PARTS[part](workdir)


if __name__ == "__main__":
    main()
