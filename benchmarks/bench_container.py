"""The .circ container on ResNet-50: end-to-end time and memory, and size against zlib / lzma.

Model: the onnx wheel's ``light_resnet50`` with seeded random weights (``tests/zoo.py``'s
randomizer; 25.6M parameters), written to a temporary folder first.

End to end, timed as one job: ``circ.load`` the ONNX file, run
``fold_constants,prune,cluster,huffman`` (default options: 50% magnitude pruning, 8-bit
clusters for conv and 5-bit for fc, the paper's 8/5-bit relative index) and write the .circ
file. Reported: wall time (target < 30 s) and peak memory (target < 4x the float32 model):
the peak traced by ``tracemalloc`` (every NumPy buffer included) and the growth of the
process's peak RSS (``resource.getrusage``) over the job.

Size: the .circ file against zlib and lzma applied to (a) the original float32 weights,
(b) the pruned, clustered weights as float32, (c) the raw cluster indices (int8/int16, -1 for
pruned) with their codebooks — the "quantized indices". lzma on the incompressible original
floats uses preset 1 (slow otherwise; it gains nothing on random floats anyway), the rest
preset 6; zlib level 6 everywhere.

Run: ``python benchmarks/bench_container.py [--skip-sizes]``.
"""

from __future__ import annotations

import argparse
import gc
import lzma
import os
import resource
import sys
import tempfile
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import circ  # noqa: E402
from circ.analysis.stats import is_parameter  # noqa: E402
from circ.passmanager import optimize as run_pipeline  # noqa: E402
from circ.tensors import Clustered  # noqa: E402

PIPELINE = "fold_constants,prune,cluster,huffman"


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def end_to_end(onnx_path: str, circ_path: str):
    """Load, compress, write; returns (graph, info, seconds, tracemalloc peak, RSS growth)."""
    gc.collect()
    rss_before = peak_rss_bytes()
    tracemalloc.start()
    start = time.perf_counter()
    graph = circ.load(onnx_path)
    run_pipeline(graph, PIPELINE)
    info = circ.save(graph, circ_path)
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return graph, info, seconds, traced_peak, peak_rss_bytes() - rss_before


def compressed_sizes(data: bytes, lzma_preset: int) -> tuple[int, int]:
    return len(zlib.compress(data, 6)), len(lzma.compress(data, preset=lzma_preset))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-sizes", action="store_true", help="only the end-to-end run")
    args = parser.parse_args(argv)
    from zoo import build_light

    folder = Path(tempfile.mkdtemp(prefix="bench_container_"))
    onnx_path = str(build_light("resnet50")(folder))
    circ_path = str(folder / "resnet50.circ")

    graph, info, seconds, traced, rss = end_to_end(onnx_path, circ_path)
    params = sum(v.const.size for v in graph.consts.values() if is_parameter(v))
    model_bytes = 4 * params
    print(f"ResNet-50 light, seeded random weights: {params:,} parameters, float32 model "
          f"{model_bytes / 1e6:.1f} MB")
    print(f"end to end (load ONNX, {PIPELINE}, write .circ): {seconds:.1f} s (target < 30 s)")
    print(f"peak memory: tracemalloc {traced / 1e6:.0f} MB = {traced / model_bytes:.2f}x the model; "
          f"peak RSS grew by {rss / 1e6:.0f} MB = {rss / model_bytes:.2f}x (target < 4x)")
    print(f".circ file: {info.file_bytes:,} bytes = {model_bytes / info.file_bytes:.1f}x smaller "
          f"than float32")
    if args.skip_sizes:
        return 0

    from circ.printer import format_table

    original = circ.load(onnx_path)
    run_pipeline(original, "fold_constants")
    streams = {
        "float32 weights (original)": (b"".join(v.const.to_numpy().astype(np.float32).tobytes()
                                                for v in original.consts.values() if is_parameter(v)), 1),
        "pruned+clustered float32": (b"".join(v.const.to_numpy().astype(np.float32).tobytes()
                                              for v in graph.consts.values() if is_parameter(v)), 6),
    }
    raw_indices = []
    for value in graph.consts.values():
        decoded = value.const.decode() if hasattr(value.const, "decode") else value.const
        if isinstance(decoded, Clustered):
            raw_indices.append(decoded.codebook.tobytes() + decoded.indices.tobytes())
        elif is_parameter(value):
            raw_indices.append(value.const.to_numpy().tobytes())  # biases etc. stay float
    streams["cluster indices (raw ints) + rest"] = (b"".join(raw_indices), 6)
    rows = []
    for name, (data, preset) in streams.items():
        start = time.perf_counter()
        size_zlib, size_lzma = compressed_sizes(data, preset)
        rows.append([name, f"{len(data):,}", f"{size_zlib:,}", f"{size_lzma:,}",
                     f"{size_zlib / info.file_bytes:.2f}x", f"{size_lzma / info.file_bytes:.2f}x",
                     f"{time.perf_counter() - start:.0f} s"])
    print()
    print(f".circ ({info.file_bytes:,} bytes) against general-purpose compressors:")
    print(format_table(["input", "raw bytes", "zlib -6", "lzma", "zlib / .circ", "lzma / .circ",
                        "compressor time"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
