"""circ-run: run a model on inputs from an ``.npz`` file.

::

    circ-run model.onnx --input in.npz [-o out.npz] [--time] [--runs N]
    circ-run prog.eie --input in.npz [-o out.npz] [--stats] [--asm]
    circ-run prog.eie --input in.npz --stats --target-options 'fifo_depth=8,sram_bytes=0'
    circ-run prog.dpu --asm

``in.npz`` maps input names to arrays; when the model has one input, a file holding a single
array is accepted whatever the array is called. ``out.npz`` maps output names to arrays;
without ``-o`` a short summary of each output is printed. ``--time`` prints the median
latency of ``--runs`` runs after a first, untimed one.

What runs a file is chosen by its extension in :data:`RUNNERS`: ``.onnx`` models run on the
reference interpreter; other extensions are looked up among the backends' targets
(:func:`backends.target_for_file`), so ``.eie`` and ``.dpu`` programs (written by ``circ-opt
--target``) run on their simulators, on the whole batch. For a program, ``--stats`` prints the
target's per-instruction table (instructions, cycles, memory read and written by level,
energy; load-balance efficiency for EIE) and ``--asm`` its assembly (``--input`` is then
optional). A program runs under its target's default options (EIE ``fifo_depth``,
``sram_bytes``; DPU MAC array, buffer sizes, DRAM bandwidth) unless ``--target-options``
gives others, as ``key=value`` pairs separated by commas, parsed and checked by the target's
own option parser (:func:`backends.parse_target`, as ``circ-opt --target`` does).
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

from circ.cli.common import ArgumentParser, UsageError, check_writable, require_file, run_tool
from circ.errors import BackendError, CircError, DataError, ModelError

PROG = "circ-run"


@attrs.define
class Runnable:
    """A loaded model or program: its input names and types, and how to run it."""

    inputs: list  # input names, in order
    run: Callable[[dict], dict]  # name -> array feeds to name -> array outputs
    check: Callable[[dict], dict] = lambda feeds: feeds  # feeds checked/converted; DataError if not
    describe: Callable[[str], str] = lambda name: name  # "x: f32[N,3]" for messages
    target: object = None  # a backends.Target when this is a lowered program
    program: object = None
    last_stats: list = attrs.field(factory=list)  # [stats] of the latest run of a program


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


def configured_target(target, options: Optional[str]):
    """``target`` with ``options`` (``"fifo_depth=8,sram_bytes=0"``) parsed by the target's
    own option parser; the default-option target when ``options`` is None."""
    if options is None:
        return target
    from backends import parse_target

    try:
        return parse_target(f"{target.name}({options})")
    except CircError as err:
        raise type(err)(f"--target-options {options!r}: {err}") from None


def _load_program(path: str, target) -> Runnable:
    """A backend program (``.eie``, ``.dpu``) on its target's simulator."""
    program = target.read(path)
    runnable = Runnable(list(target.inputs(program)), lambda feeds: {}, target=target,
                        program=program)

    def run(feeds):
        try:
            outputs, stats = target.run(program, feeds)
        except BackendError as err:  # a program that breaks the target's limits: name the file
            raise BackendError(f"{path}: {err}") from None
        runnable.last_stats[:] = [stats]
        return outputs

    runnable.run = run
    return runnable


def load_runnable(path: str, target_options: Optional[str] = None) -> Runnable:
    """What runs ``path``; ``target_options`` configure a backend program's target."""
    require_file(path, "a model", ModelError)
    extension = os.path.splitext(path)[1].lower()
    loader = RUNNERS.get(extension)
    if loader is None and extension:
        from backends import target_for_file

        target = target_for_file(path)
        if target is not None:
            return _load_program(path, configured_target(target, target_options))
    if loader is None:
        from backends import TARGETS

        known = ", ".join(sorted(RUNNERS) + ["." + name for name in sorted(TARGETS)])
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
    parser.add_argument("model", metavar="MODEL",
                        help="the model (" + ", ".join(sorted(RUNNERS)) + ") or program (.eie, .dpu)")
    parser.add_argument("--input", metavar="IN.npz", help="input name -> array (batch on axis 0)")
    parser.add_argument("-o", "--output", metavar="OUT.npz", help="write outputs (name -> array)")
    parser.add_argument("--time", action="store_true", help="print the median latency")
    parser.add_argument("--runs", type=int, default=5, help="timed runs for --time (default 5)")
    parser.add_argument("--stats", action="store_true",
                        help="program: per instruction cycles, memory traffic by level, energy")
    parser.add_argument("--asm", action="store_true", help="program: print its assembly")
    parser.add_argument("--target-options", metavar="K=V,...",
                        help="program: simulate with these target options instead of the "
                             "defaults (e.g. 'fifo_depth=8' for .eie, 'mac_rows=8' for .dpu)")
    return parser


def _body(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.runs < 1:
        raise DataError(f"--runs must be at least 1, got {args.runs}")
    if args.input is None and not args.asm:
        raise UsageError(f"the following arguments are required: --input (see {PROG} --help)")
    if args.output:
        if args.input is None:
            raise UsageError(f"-o needs --input (see {PROG} --help)")
        check_writable(args.output, protect=[args.model, args.input])
    runnable = load_runnable(args.model, args.target_options)
    if (args.stats or args.asm or args.target_options is not None) and runnable.target is None:
        raise UsageError(f"{args.model}: --stats, --asm and --target-options are for backend "
                         "programs (.eie, .dpu), not ONNX models")
    if args.asm:
        print(runnable.target.asm(runnable.program), end="")
        if args.input is None:
            return 0
    feeds = read_feeds(args.input, runnable)
    try:
        outputs = runnable.run(feeds)
    except DataError as err:
        raise DataError(f"{args.input}: {err}") from None

    if args.output:
        from circ.fileio import atomic_write

        atomic_write(args.output, lambda handle: write_npz(handle, outputs),
                     protect=[args.model, args.input])
    else:
        print(describe_outputs(outputs))
    if args.stats:
        print(runnable.target.format_stats(runnable.last_stats[0]))
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
