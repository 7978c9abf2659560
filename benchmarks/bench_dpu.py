"""The DPU backend on LeNet-5 and a ResNet-style CNN: per-layer cost model, and the simulator's
speed against onnxruntime on the same quantized graph.

    python benchmarks/bench_dpu.py [--batch 64] [--runs 5] [--models lenet5,resnet]

Each model is a seeded torch network (random weights: the cost model and the speed do not
depend on training) exported to ONNX, batch norm folded, lowered for the default DPU
(16x16 MAC array, 32/32/16 KB buffers, 8 DRAM bytes per cycle) with activation exponents
calibrated on 64 seeded random inputs. Printed per model:

* per layer, per sample: MACs, cycles (max of compute and transfer: buffers are
  double-buffered), MAC utilisation = MACs / (cycles x mac_rows x mac_cols), DRAM bytes read
  and written, and energy (Horowitz 45 nm costs; docs/dpu.md);
* the wall time of the DPU simulator on a batch (``sim.run``: validation, every instruction,
  the cycle model) against onnxruntime (one thread, all graph optimizations) on the QDQ
  model of the same graph (``reference_graph``: the program's integer weights times their
  powers of two and a QuantizeLinear/DequantizeLinear pair on every tensor the DPU stores,
  exported to ONNX) — best of ``--runs``, the two interleaved in each round so machine load
  hits both alike; the ratio is simulator / onnxruntime. Before timing, the DPU's outputs
  are compared with onnxruntime's (the largest difference in output grid steps is printed;
  0 means bit-exact).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import circ  # noqa: E402
from backends.dpu.lower import reference_graph  # noqa: E402
from backends.dpu.sim import Config, Simulator  # noqa: E402
from circ.printer import format_table  # noqa: E402


def lenet5():
    """LeNet-5 (LeCun 1998) with ReLU and max pooling, on 1x28x28 digits."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                          nn.Linear(84, 10))
    return model.eval(), (1, 28, 28)


def resnet():
    """tests/test_dpu_models.py's small ResNet (tests/zoo.py) at twice the width, on 3x32x32 images."""
    from zoo import small_resnet

    return small_resnet(width=16), (3, 32, 32)


MODELS = {"lenet5": lenet5, "resnet": resnet}


def export(model, shape, folder: Path) -> circ.Graph:
    import torch

    path = folder / "model.onnx"
    torch.onnx.export(model, (torch.zeros((1,) + shape),), str(path), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
                      opset_version=13, dynamo=False)
    return circ.optimize(circ.load(str(path)), "fold_bn,dce")


def layer_table(stats, batch: int, config: Config) -> str:
    headers = ["layer", "kind", "MACs", "cycles", "MAC util", "DRAM rd B", "DRAM wr B",
               "energy uJ"]
    rows, totals = [], np.zeros(5)
    for s in stats:
        figures = np.array([s.macs, s.cycles, s.dram_read, s.dram_written, s.energy_pj]) / batch
        totals += figures
        rows.append([s.layer, s.kind, f"{figures[0]:,.0f}", f"{figures[1]:,.0f}",
                     _utilisation(figures[0], figures[1], config), f"{figures[2]:,.0f}",
                     f"{figures[3]:,.0f}", f"{figures[4] / 1e6:.3f}"])
    rows.append(["total", "", f"{totals[0]:,.0f}", f"{totals[1]:,.0f}",
                 _utilisation(totals[0], totals[1], config), f"{totals[2]:,.0f}",
                 f"{totals[3]:,.0f}", f"{totals[4] / 1e6:.3f}"])
    return format_table(headers, rows, align="ll" + "r" * (len(headers) - 2))


def _utilisation(macs: float, cycles: float, config: Config) -> str:
    if not macs:
        return ""
    return f"{macs / (cycles * config.mac_rows * config.mac_cols):.1%}"


def bench(name: str, batch: int, runs: int, folder: Path) -> str:
    import onnx
    import onnxruntime as ort

    model, shape = MODELS[name]()
    graph = export(model, shape, folder)
    rng = np.random.default_rng(0)
    calibration = {"x": rng.standard_normal((64,) + shape).astype(np.float32)}
    x = rng.standard_normal((batch,) + shape).astype(np.float32)
    config = Config()
    reference, program = reference_graph(graph, config, calibration=calibration)
    qdq_path = folder / f"{name}_qdq.onnx"
    circ.save(reference, str(qdq_path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(qdq_path), options, providers=["CPUExecutionProvider"])
    simulator = Simulator(program, config)

    outputs, stats = simulator.run({"x": x})
    expected = session.run(None, {"x": x})[0]
    step = np.ldexp(1.0, program.tensors[program.outputs[0][1]].exp)
    steps = float(np.abs(outputs["y"] - expected).max() / step)

    sim_times, ort_times = [], []
    for _ in range(runs):
        start = time.perf_counter()
        simulator.run({"x": x})
        sim_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        session.run(None, {"x": x})
        ort_times.append(time.perf_counter() - start)
    nodes = len(onnx.load(str(qdq_path)).graph.node)
    lines = [f"== {name}: input {shape}, batch {batch}, {len(program.layers)} DPU layers, "
             f"{len(program.instructions)} instructions; QDQ model {nodes} ONNX nodes",
             layer_table(stats, batch, config),
             f"DPU vs onnxruntime on the QDQ model: largest difference {steps:g} output grid "
             f"steps",
             f"wall time, batch {batch}, best of {runs}: DPU simulator {1e3 * min(sim_times):.2f} ms, "
             f"onnxruntime (1 thread) {1e3 * min(ort_times):.2f} ms, ratio "
             f"{min(sim_times) / min(ort_times):.1f}x"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="samples per run (default 64)")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds, best kept (default 5)")
    parser.add_argument("--models", default="lenet5,resnet",
                        help=f"comma-separated, of {', '.join(MODELS)}")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    with tempfile.TemporaryDirectory(prefix="bench_dpu_") as folder:
        for name in names:
            print(bench(name, args.batch, args.runs, Path(folder)))
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
