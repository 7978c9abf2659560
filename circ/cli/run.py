"""circ-run: run a model on inputs from an ``.npz`` file.

::

    circ-run model.onnx --input in.npz [-o out.npz] [--time] [--runs N]

``in.npz`` maps input names to arrays; when the model has one input, a file holding a single
array is accepted whatever the array is called. ``out.npz`` maps output names to arrays;
without ``-o`` a short summary of each output is printed. ``--time`` prints the median
latency of ``--runs`` runs after a first, untimed one.

What runs a file is chosen by its extension in :data:`RUNNERS`: ``.onnx`` models run on the
reference interpreter; backends add their program formats (``.eie``, ``.dpu``) with
:func:`register_runner`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import zipfile
from typing import Callable, Optional, Sequence

import attrs
import numpy as np

from circ.cli.common import ArgumentParser, check_writable, require_file, run_tool
from circ.errors import DataError, ModelError

PROG = "circ-run"


@attrs.define
class Runnable:
    """A loaded model or program: its input names and types, and how to run it."""

    inputs: list  # input names, in order
    run: Callable[[dict], dict]  # name -> array feeds to name -> array outputs
    check: Callable[[dict], dict] = lambda feeds: feeds  # feeds checked/converted; DataError if not
    describe: Callable[[str], str] = lambda name: name  # "x: f32[N,3]" for messages


def _load_onnx(path: str) -> Runnable:
    import circ
    from circ.graph import format_type
    from circ.interpreter import Interpreter

    graph = circ.load(path)
    interpreter = Interpreter(graph)  # fails here, naming the node, if an op has no kernel
    types = {v.name: format_type(v.dtype, v.shape) for v in graph.inputs}

    def check(feeds):
        env = interpreter.check_feeds(feeds)
        return {v.name: env[id(v)] for v in graph.inputs}

    return Runnable([v.name for v in graph.inputs], interpreter.run, check,
                    lambda name: f"{name}: {types[name]}")


RUNNERS: dict[str, Callable[[str], Runnable]] = {".onnx": _load_onnx}


def register_runner(extension: str, loader: Callable[[str], Runnable]) -> None:
    """Make circ-run open files ending in ``extension`` (e.g. ``".eie"``) with ``loader``."""
    RUNNERS[extension.lower()] = loader


def load_runnable(path: str) -> Runnable:
    require_file(path, "a model", ModelError)
    extension = os.path.splitext(path)[1].lower()
    loader = RUNNERS.get(extension)
    if loader is None:
        known = ", ".join(sorted(RUNNERS))
        raise ModelError(f"{path}: cannot run files of type {extension or '(no extension)'!r}; "
                         f"circ-run runs {known}")
    return loader(path)


def read_feeds(path: str, runnable: Runnable) -> dict:
    """The arrays of ``path`` matched to the inputs of ``runnable`` and checked."""
    from circ.npzio import read_arrays

    require_file(path, "an .npz file", DataError)
    arrays = read_arrays(path)  # a .npy file gives one array named ""

    names = runnable.inputs
    if len(names) == 1 and len(arrays) == 1:
        feeds = {names[0]: next(iter(arrays.values()))}
    else:
        missing = [n for n in names if n not in arrays]
        unknown = sorted(set(arrays) - set(names))
        if missing or unknown:
            problem = (f"has no array for input {missing[0]!r}" if missing
                       else f"has array {unknown[0]!r}, which is not an input")
            expected = ", ".join(runnable.describe(n) for n in names)
            raise DataError(f"{path}: {problem}; the model's inputs are {expected}")
        feeds = {n: arrays[n] for n in names}
    try:
        return runnable.check(feeds)
    except DataError as err:
        raise DataError(f"{path}: {err}") from None


def write_npz(handle, arrays: dict) -> None:
    """``np.savez`` for any array names (np.savez's own keywords, such as ``file``, included)."""
    with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Run a model on inputs from an .npz file.")
    parser.add_argument("model", metavar="MODEL", help="the model (" + ", ".join(sorted(RUNNERS)) + ")")
    parser.add_argument("--input", required=True, metavar="IN.npz", help="input name -> array")
    parser.add_argument("-o", "--output", metavar="OUT.npz", help="write outputs (name -> array)")
    parser.add_argument("--time", action="store_true", help="print the median latency")
    parser.add_argument("--runs", type=int, default=5, help="timed runs for --time (default 5)")
    return parser


def _body(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.runs < 1:
        raise DataError(f"--runs must be at least 1, got {args.runs}")
    if args.output:
        check_writable(args.output, protect=[args.model, args.input])
    runnable = load_runnable(args.model)
    feeds = read_feeds(args.input, runnable)
    outputs = runnable.run(feeds)

    if args.output:
        from circ.fileio import atomic_write

        atomic_write(args.output, lambda handle: write_npz(handle, outputs),
                     protect=[args.model, args.input])
    else:
        print(describe_outputs(outputs))
    if args.time:
        seconds = []
        for _ in range(args.runs):
            start = time.perf_counter()
            runnable.run(feeds)
            seconds.append(time.perf_counter() - start)
        print(f"latency: median {1e3 * statistics.median(seconds):.3f} ms over {args.runs} runs "
              f"(min {1e3 * min(seconds):.3f} ms, max {1e3 * max(seconds):.3f} ms)")
    return 0


def describe_outputs(outputs: dict, head: int = 6) -> str:
    """One line per output: name, dtype, shape, range, mean and the first few values."""
    lines = []
    for name, array in outputs.items():
        array = np.asarray(array)
        text = f"{name}: {array.dtype}{list(array.shape)}"
        if array.size and array.dtype.kind in "fiub":
            values = array.astype(np.float64)
            text += f"  min {values.min():.6g}  max {values.max():.6g}  mean {values.mean():.6g}"
            first = ", ".join(f"{v:.6g}" for v in values.reshape(-1)[:head])
            text += f"  [{first}{', ...' if array.size > head else ''}]"
        lines.append(text)
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_tool(PROG, _body, argv)


if __name__ == "__main__":
    sys.exit(main())
