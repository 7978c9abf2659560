"""Structural passes: what they buy in onnxruntime, and what they cost to run.

    python benchmarks/bench_structural.py [--runs 20] [--repeats 3] [--round-to 1,8,32,auto] [--workdir DIR]
                                          [--parts channel_prune,torch_pruning]

Parts:

* ``channel_prune``: the onnx wheel's light ResNet-50 (random He-scaled weights, seeded,
  batch 1, 3x224x224) pruned by ``channel_prune(target_macs=0.5)``. Prints the MACs and
  parameters before and after, the pass's own run time (target: under 10 s) and the median
  onnxruntime latency of the model before and after (target: speed-up >= 1.6x), with
  onnxruntime on one thread and on its default threads, all graph optimizations on (as a
  user gets them). Both models are written by circ from the same graph (after
  ``fold_constants``), so the only difference is the pruning. Each round visits every
  model in turn (in alternating order) so that a busy machine slows all alike, with one
  session alive at a time (a live session's spinning pool threads would steal a core from the
  one being timed); each model's latency is the best of ``--repeats`` medians of ``--runs`` runs. One row per ``round_to``
  of ``--round-to`` (1: no rounding; auto: the pass's default, 8, 16 or 32 by group size),
  all timed in the same turns; the targets are checked on the default.
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
from circ.printer import format_table

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
    """Best-of-``repeats`` median latency of each model. Each repeat times every model in
    turn (the order reversed every other repeat, so drifting load hurts none of them more),
    with one session alive at a time: onnxruntime's pool threads spin for a while after a
    run, and a second session's spinning threads would take a core from the one being timed
    — a cost a user running one model never pays."""
    best = [float("inf")] * len(paths)
    for repeat in range(repeats):
        order = range(len(paths)) if repeat % 2 == 0 else reversed(range(len(paths)))
        for index in order:
            session = ort_session(paths[index], threads)
            session.run(None, feeds)  # warm-up
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, feeds)
                times.append(time.perf_counter() - start)
            del session
            best[index] = min(best[index], statistics.median(times))
    return best


def input_feeds(graph, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in v.shape]).astype(v.dtype)
            for v in graph.inputs}


def bench_channel_prune(workdir: Path, runs: int, repeats: int, round_to: list) -> None:
    import zoo

    source = workdir / "light_resnet50.onnx"
    if not source.exists():
        zoo.build_light("resnet50")(workdir)
    graph = circ.optimize(circ.load(source), "fold_constants")
    before = graph_stats(graph)
    before_path = workdir / "resnet50_before.onnx"
    circ.save(graph, before_path)
    variants = []  # (label, path, stats, details, seconds, declines)
    for quantum in round_to:
        option = "" if quantum == "auto" else f",round_to={quantum}"
        result = PassManager.from_pipeline(f"channel_prune(target_macs=0.5{option})").run(graph.copy())
        entry = result.report["passes"][-1]
        path = workdir / f"resnet50_pruned_round{quantum}.onnx"
        circ.save(result.graph, path)
        label = "default (8/16/32)" if quantum == "auto" else f"round_to={quantum}"
        variants.append((label, path, graph_stats(result.graph), entry["details"], entry["seconds"],
                         len(result.declines)))

    print(f"channel_prune(target_macs=0.5) on light ResNet-50 (random weights), batch 1: "
          f"{before.macs / 1e9:.3f} G MACs, {before.params / 1e6:.3f} M params before")
    feeds = input_feeds(graph)
    paths = [before_path] + [variant[1] for variant in variants]
    latency = {threads: paired_latency(paths, feeds, runs, repeats, threads) for threads in (1, 0)}
    rows = []
    for index, (label, _, stats, details, seconds, declines) in enumerate(variants, start=1):
        speedups = [latency[threads][0] / latency[threads][index] for threads in (1, 0)]
        rows.append([label, f"{stats.macs / before.macs:.3f}", f"{stats.params / before.params:.3f}",
                     f"{details['channels_removed']}/{details['channels_total']}", declines,
                     f"{seconds:.2f}", f"{latency[1][index] * 1e3:.1f}", f"{speedups[0]:.2f}x",
                     f"{latency[0][index] * 1e3:.1f}", f"{speedups[1]:.2f}x"])
    rows.append(["original", "1.000", "1.000", "", "", "", f"{latency[1][0] * 1e3:.1f}", "",
                 f"{latency[0][0] * 1e3:.1f}", ""])
    print(format_table(["model", "MACs", "params", "removed", "declines", "pass s", "1 thread ms", "speed-up",
                        "default ms", "speed-up"], rows))
    for label, _, _, _, seconds, _ in variants:
        if "default" not in label:
            continue
        index = 1 + [v[0] for v in variants].index(label)
        verdicts = []
        for threads, name in ((1, "1 thread"), (0, "default threads")):
            speedup = latency[threads][0] / latency[threads][index]
            verdicts.append(f"{name} {speedup:.2f}x {'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}")
        print(f"targets ({label}): speed-up >= {TARGET_SPEEDUP}x: {', '.join(verdicts)}; "
              f"pass < {TARGET_PASS_SECONDS:.0f} s: {'met' if seconds < TARGET_PASS_SECONDS else 'NOT met'} "
              f"({seconds:.2f} s)")


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
    parser.add_argument("--runs", type=int, default=20, help="timed onnxruntime runs per model (median)")
    parser.add_argument("--repeats", type=int, default=3, help="medians taken per model (the best counts)")
    parser.add_argument("--round-to", default="1,8,32,auto",
                        help="channel_prune round_to values compared (comma list; auto: the default)")
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
                bench_channel_prune(workdir, args.runs, args.repeats,
                                    [v if v == "auto" else int(v) for v in args.round_to.split(",") if v])
            else:
                PARTS[part](workdir)


if __name__ == "__main__":
    main()
