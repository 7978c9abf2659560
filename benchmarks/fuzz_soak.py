"""A longer fuzz run of circ-opt and circ-run than the test suite can afford.

::

    python benchmarks/fuzz_soak.py                 # about two minutes
    python benchmarks/fuzz_soak.py --seconds 600 --seed 3 --save-dir /tmp/finds
    python benchmarks/fuzz_soak.py --families eie-bytes,eie-reseal,dpu-bytes,dpu-reseal

Damaged inputs come from the same mutators as ``tests/test_fuzz.py`` (byte mutations of
ONNX, .circ, .npz, .eie and .dpu seeds; container sections and program payloads damaged and
re-sealed with valid lengths and checksums; structural ONNX edits followed by byte damage). Each input runs through the CLI tools in a
worker process with an address-space limit (so a memory bomb fails there instead of taking
the machine) and a per-input timeout (a worker that does not answer in time is killed and
the input counted as a hang). A run is *rejected* when every command exits 2 with one clean
line, *accepted* when at least one exits 0, a *crash* when any rule of the fuzz test breaks
(traceback, other exit code, several stderr lines, output left behind, input changed).

Prints a table per input family and exits 1 if there was any crash or hang; the inputs that
caused them are written to ``--save-dir`` for tests/corpus/.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import test_fuzz as fuzz  # noqa: E402  (the shared mutators and checks)

FAMILIES = ("onnx-bytes", "circ-bytes", "qcirc-bytes", "npz-bytes", "circ-reseal", "qcirc-reseal",
            "onnx-edit", "eie-bytes", "eie-reseal", "dpu-bytes", "dpu-reseal")


def make_input(rng: np.random.Generator, family: str, seed_bytes: dict) -> tuple[str, bytes]:
    """(kind, damaged bytes) for one input of ``family``."""
    kind, how = family.split("-")
    if how == "bytes":
        return kind, fuzz.mutate_bytes(seed_bytes[kind], fuzz.random_byte_ops(rng))
    if how == "reseal" and kind in fuzz.PROGRAM_KINDS:
        return kind, fuzz.mutate_program(seed_bytes[kind], fuzz.random_byte_ops(rng))
    if how == "reseal":
        section = int(rng.integers(0, 16))
        return kind, fuzz.mutate_circ_section(seed_bytes[kind], section, fuzz.random_byte_ops(rng))
    edits = sorted(fuzz.ONNX_EDITS)
    data = fuzz.edit_onnx(seed_bytes["onnx"], edits[int(rng.integers(len(edits)))])
    if rng.random() < 0.5:
        data = fuzz.mutate_bytes(data, fuzz.random_byte_ops(rng, 1))
    return "onnx", data


def worker(connection, seed_dir: str, memory_limit: int) -> None:
    """Check inputs sent over ``connection`` until it closes; answer (problems, codes)."""
    if memory_limit:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    seeds = {key: Path(seed_dir) / name for key, name in
             [("onnx", "model.onnx"), ("circ", "clustered.circ"), ("qcirc", "quantized.circ"),
              ("npz", "input.npz"), ("eie", "program.eie"), ("dpu", "program.dpu")]}
    with tempfile.TemporaryDirectory(prefix="circ_soak_") as folder:
        while True:
            try:
                kind, data = connection.recv()
            except EOFError:
                return
            try:
                answer = fuzz.check_input(kind, data, seeds, Path(folder))
            except BaseException as err:  # noqa: BLE001  a failure of the checker itself
                answer = ([f"checker failed: {type(err).__name__}: {err}"], [])
            connection.send(answer)


class Worker:
    """A worker process and its end of the pipe; restarted after a hang."""

    def __init__(self, seed_dir: str, memory_limit: int):
        self.seed_dir, self.memory_limit = seed_dir, memory_limit
        self.start()

    def start(self):
        self.connection, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=worker, daemon=True,
                                               args=(child, self.seed_dir, self.memory_limit))
        self.process.start()
        child.close()

    def check(self, kind: str, data: bytes, timeout: float):
        """(problems, codes), or None after ``timeout`` seconds (the worker is restarted)."""
        self.connection.send((kind, data))
        if self.connection.poll(timeout):
            try:
                return self.connection.recv()
            except EOFError:  # the worker died (a signal, the memory limit in C code)
                self.process.join()
                code = self.process.exitcode
                self.start()
                return [f"worker died (exit code {code})"], []
        self.process.kill()
        self.process.join()
        self.start()
        return None

    def stop(self):
        self.connection.close()
        self.process.join(timeout=5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="how long to run (default 120)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the mutations")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per input before it is a hang")
    parser.add_argument("--memory-limit-gb", type=float, default=4.0,
                        help="address-space limit of the worker (0: none)")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help="comma-separated input families to run (default: all)")
    parser.add_argument("--save-dir", default=os.path.join(tempfile.gettempdir(), "circ_fuzz_finds"),
                        help="where inputs that crashed or hung are written")
    args = parser.parse_args(argv)
    families = args.families.split(",")
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")

    rng = np.random.default_rng(args.seed)
    seed_dir = tempfile.mkdtemp(prefix="circ_soak_seeds_")
    seed_paths = fuzz.write_seeds(Path(seed_dir))
    seed_bytes = {key: path.read_bytes() for key, path in seed_paths.items()}
    counts = {family: dict(tried=0, rejected=0, accepted=0, crashes=0, hangs=0) for family in families}
    findings = []
    pool = Worker(seed_dir, int(args.memory_limit_gb * (1 << 30)))
    deadline = time.monotonic() + args.seconds
    index = 0
    while time.monotonic() < deadline:
        family = families[index % len(families)]
        kind, data = make_input(rng, family, seed_bytes)
        row = counts[family]
        row["tried"] += 1
        answer = pool.check(kind, data, args.timeout)
        if answer is None:
            row["hangs"] += 1
            findings.append((family, kind, data, [f"no answer within {args.timeout} s"]))
        else:
            problems, codes = answer
            if problems:
                row["crashes"] += 1
                findings.append((family, kind, data, problems))
            elif 0 in codes:
                row["accepted"] += 1
            else:
                row["rejected"] += 1
        index += 1
    pool.stop()

    print(format_table(counts))
    if findings:
        os.makedirs(args.save_dir, exist_ok=True)
        for number, (family, kind, data, problems) in enumerate(findings):
            extension = {"qcirc": "circ"}.get(kind, kind)
            path = os.path.join(args.save_dir, f"find_{number:03d}_{family}.{extension}")
            with open(path, "wb") as handle:
                handle.write(data)
            print(f"\n{path}:")
            for problem in problems[:3]:
                print(f"  {problem[:400]}")
    return 1 if findings else 0


def format_table(counts: dict) -> str:
    columns = ["tried", "rejected", "accepted", "crashes", "hangs"]
    total = {c: sum(row[c] for row in counts.values()) for c in columns}
    rows = [[family] + [str(row[c]) for c in columns] for family, row in counts.items()]
    rows.append(["total"] + [str(total[c]) for c in columns])
    header = ["family"] + columns
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(r, widths))) for r in [header] + rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
