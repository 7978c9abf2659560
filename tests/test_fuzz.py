"""Fuzzing the command-line tools with damaged inputs.

Valid seed files (a small ONNX model, two ``.circ`` containers, an ``.npz`` of inputs, an EIE
and a DPU program) are damaged by byte mutations (bit flips, truncations, insertions,
overwrites), by mutations of one container section or of a program's payload re-sealed with
correct lengths and checksums (so the damage gets past the CRCs to the decoders and
simulators behind them), and by structural edits of the ONNX protobuf (cycles, undefined
inputs, unknown types, absurd opsets, raw data that does not match its shape).
Each damaged file goes through ``circ-opt`` and ``circ-run`` in-process, and every run must:

* exit 0 or 2, and on 2 print exactly one line on stderr, never a traceback;
* on an error, leave no output (and no temporary file) behind;
* never change its input files.

The helpers here are shared with ``benchmarks/fuzz_soak.py``, which runs the same checks for
minutes; ``tests/corpus/`` keeps the nastiest inputs found as regression cases.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import struct
import tempfile
import traceback
import warnings
import zlib
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

CORPUS = Path(__file__).parent / "corpus"

# ----------------------------------------------------------------------------- seed files


def seed_model() -> onnx.ModelProto:
    """Conv-Relu-Conv with a residual Add, a Reshape by a constant shape and a Gemm: small
    (about 1.5 KB) so that a random byte lands in graph structure as often as in weights."""
    rng = np.random.default_rng(3)

    def init(name, array, dtype=np.float32):
        return numpy_helper.from_array(np.asarray(array, dtype), name)

    initializers = [
        init("w1", 0.5 * rng.standard_normal((4, 2, 3, 3))), init("b1", rng.standard_normal(4)),
        init("w2", 0.5 * rng.standard_normal((4, 4, 1, 1))), init("shape", [0, -1], np.int64),
        init("fc", rng.standard_normal((3, 4 * 4 * 4))), init("fc_b", rng.standard_normal(3))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["sum"], name="add"),
        helper.make_node("Reshape", ["sum", "shape"], ["flat"], name="reshape"),
        helper.make_node("Gemm", ["flat", "fc", "fc_b"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(
        nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def seed_eie_model() -> onnx.ModelProto:
    """What the EIE backend runs, on the same input as :func:`seed_model`: conv + relu, max
    pool, flatten, Gemm (every EIE instruction kind once)."""
    rng = np.random.default_rng(4)
    initializers = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in [
        ("w1", 0.5 * rng.standard_normal((3, 2, 3, 3))), ("b1", rng.standard_normal(3)),
        ("fc", rng.standard_normal((3, 12))), ("fc_b", rng.standard_normal(3))]]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Flatten", ["p1"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fc_b"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(
        nodes, "fuzz_eie", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def write_seeds(folder: Path) -> dict[str, Path]:
    """The valid seed files in ``folder``: model.onnx, clustered.circ (prune, cluster,
    huffman: coded tensors), quantized.circ, input.npz, and the programs program.eie (of
    :func:`seed_eie_model`) and program.dpu (of the seed model, calibrated on input.npz)."""
    from circ.cli import opt

    folder.mkdir(parents=True, exist_ok=True)
    seeds = {"onnx": folder / "model.onnx", "circ": folder / "clustered.circ",
             "qcirc": folder / "quantized.circ", "npz": folder / "input.npz",
             "eie": folder / "program.eie", "dpu": folder / "program.dpu"}
    onnx.save(seed_model(), str(seeds["onnx"]))
    np.savez(seeds["npz"], x=np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32))
    for key, pipeline in [("circ", "prune(sparsity=0.5),cluster(bits=3),huffman"),
                          ("qcirc", "quant(bits=5)")]:
        with contextlib.redirect_stdout(io.StringIO()):
            code = opt.main([f"--passes={pipeline}", str(seeds["onnx"]), "-o", str(seeds[key]), "-q"])
        assert code == 0
    eie_model = folder / "eie_model.onnx"
    onnx.save(seed_eie_model(), str(eie_model))
    for key, model, extra in [("eie", eie_model, ["--target=eie(pes=2,v_bits=2)"]),
                              ("dpu", seeds["onnx"], ["--target=dpu", "--data", str(seeds["npz"])])]:
        with contextlib.redirect_stdout(io.StringIO()):
            code = opt.main(["--passes=prune(sparsity=0.3),cluster(bits=2)" if key == "eie" else
                             "--passes=", *extra, str(model), "-o", str(seeds[key]), "-q"])
        assert code == 0
    eie_model.unlink()
    return seeds


# ----------------------------------------------------------------------------- mutations

BYTE_OPS = ("flip", "truncate", "insert", "overwrite", "delete")


def mutate_bytes(data: bytes, ops) -> bytes:
    """Apply ``ops``, each ``(kind, position, payload)``; positions wrap around the length."""
    data = bytearray(data)
    for kind, position, payload in ops:
        at = position % (len(data) + 1)
        if kind == "flip" and data:
            at %= len(data)
            data[at] ^= 1 << (payload[0] % 8 if payload else 0)
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = payload
        elif kind == "overwrite":
            data[at:at + len(payload)] = payload
        elif kind == "delete":
            del data[at:at + max(1, len(payload))]
    return bytes(data)


def circ_sections(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(kind, name, payload) of every section of a valid .circ file."""
    from circ.container import _split

    return [(kind, name.encode("utf-8"), payload) for kind, name, payload in _split(data, "seed")]


def seal_circ(sections, version=(1, 0)) -> bytes:
    """A .circ file with correct lengths and checksums around ``sections`` (see
    circ/container.py): damage inside a payload then reaches the tensor and graph readers."""
    header = struct.pack("<8sHHI", b"\x89CIRC\r\n\x1a", version[0], version[1], len(sections))
    parts = [header, struct.pack("<I", zlib.crc32(header))]
    for kind, name, payload in sections:
        frame = struct.pack("<4sH", kind, len(name)) + name + struct.pack("<Q", len(payload))
        parts += [frame, payload, struct.pack("<I", zlib.crc32(payload, zlib.crc32(frame)))]
    size = sum(len(p) for p in parts) + 12 + 4
    parts.append(struct.pack("<4sQ", b"CEND", size))
    return b"".join(parts) + struct.pack("<I", zlib.crc32(b"".join(parts)))


def mutate_circ_section(data: bytes, section: int, ops) -> bytes:
    """Damage the payload of one section (index wraps) and re-seal the file."""
    sections = circ_sections(data)
    index = section % len(sections)
    kind, name, payload = sections[index]
    sections[index] = (kind, name, mutate_bytes(payload, ops))
    return seal_circ(sections)


PROGRAM_KINDS = ("eie", "dpu")


def mutate_program(data: bytes, ops) -> bytes:
    """Damage the payload of an .eie/.dpu program (same framing: 8-byte magic, u16 version,
    u16 reserved, u64 payload length, payload, CRC-32) and re-seal length and checksum."""
    header = struct.Struct("<8sHHQ")
    magic, version, reserved, _ = header.unpack_from(data)
    payload = mutate_bytes(data[header.size:-4], ops)
    body = header.pack(magic, version, reserved, len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


def _set_dim(model, value):
    model.graph.initializer[0].dims[0] = value


def _raw_too_short(model):
    tensor = model.graph.initializer[0]
    tensor.raw_data = tensor.raw_data[: len(tensor.raw_data) // 2]


def _cycle(model):
    # relu1 reads the output of add, which (through conv2) reads relu1.
    model.graph.node[1].input[0] = "sum"


def _external(location):
    def edit(model):
        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=location)
    return edit


# Structural damage a byte mutation rarely produces: each edit gives a protobuf that parses.
ONNX_EDITS: dict[str, Callable[[onnx.ModelProto], None]] = {
    "undefined_input": lambda m: m.graph.node[2].input.__setitem__(0, "nowhere"),
    "cycle": _cycle,
    "duplicate_output": lambda m: m.graph.node[2].output.__setitem__(0, "r1"),
    "unknown_dtype": lambda m: setattr(m.graph.initializer[1], "data_type", 99),
    "string_weight": lambda m: setattr(m.graph.initializer[0], "data_type", TensorProto.STRING),
    "raw_too_short": _raw_too_short,
    "huge_dim": lambda m: _set_dim(m, 1 << 40),
    "negative_dim": lambda m: _set_dim(m, -4),
    "opset_absurd": lambda m: setattr(m.opset_import[0], "version", 100000),
    "opset_zero": lambda m: setattr(m.opset_import[0], "version", 0),
    "unknown_op": lambda m: setattr(m.graph.node[1], "op_type", "NoSuchOp"),
    "unknown_domain": lambda m: setattr(m.graph.node[1], "domain", "com.example.evil"),
    "bad_attribute": lambda m: m.graph.node[0].attribute[0].ClearField("ints"),
    "wrong_kernel_shape": lambda m: m.graph.node[0].attribute.append(
        helper.make_attribute("kernel_shape", [5, 5])),
    "reshape_bad_shape": lambda m: m.graph.initializer[3].CopyFrom(
        numpy_helper.from_array(np.array([7, -1, -1], np.int64), "shape")),
    "no_outputs": lambda m: m.graph.ClearField("output"),
    "output_undefined": lambda m: setattr(m.graph.output[0], "name", "ghost"),
    "empty_node_name_clash": lambda m: m.graph.node[3].output.__setitem__(0, "x"),
    "external_absolute": _external("/etc/passwd"),
    "external_climb": _external("../../../../etc/passwd"),
    "external_missing": _external("weights.bin"),
    "graph_input_is_initializer_type": lambda m: setattr(
        m.graph.input[0].type.tensor_type, "elem_type", TensorProto.INT8),
    "ir_version_absurd": lambda m: setattr(m, "ir_version", 1 << 40),
}


def edit_onnx(data: bytes, edit: str) -> bytes:
    model = onnx.ModelProto.FromString(data)
    ONNX_EDITS[edit](model)
    return model.SerializeToString()


def random_byte_ops(rng: np.random.Generator, count: Optional[int] = None) -> list:
    """Random ``mutate_bytes`` ops (for the soak run, which does not use hypothesis)."""
    ops = []
    for _ in range(count or int(rng.integers(1, 5))):
        payload = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        ops.append((BYTE_OPS[int(rng.integers(len(BYTE_OPS)))], int(rng.integers(1 << 31)), payload))
    return ops


# ----------------------------------------------------------------------------- running


def commands(kind: str, damaged: Path, seeds: dict, out_dir: Path) -> list[tuple[str, list[str], Path]]:
    """(tool, argv, output path) runs that read the damaged file of kind ``kind``."""
    out_onnx, out_circ, out_npz = out_dir / "out.onnx", out_dir / "out.circ", out_dir / "out.npz"
    if kind == "onnx":
        return [("opt", ["--passes=fold_constants,prune,dce", str(damaged), "-o", str(out_onnx), "-q"], out_onnx),
                ("run", [str(damaged), "--input", str(seeds["npz"]), "-o", str(out_npz)], out_npz)]
    if kind in ("circ", "qcirc"):
        return [("opt", [str(damaged), "-o", str(out_onnx), "-q"], out_onnx),
                ("opt", ["--passes=huffman", str(damaged), "-o", str(out_circ), "-q"], out_circ)]
    if kind == "npz":
        return [("run", [str(seeds["onnx"]), "--input", str(damaged), "-o", str(out_npz)], out_npz),
                ("opt", ["--passes=quant", "--data", str(damaged), str(seeds["onnx"]), "-o",
                         str(out_onnx), "-q"], out_onnx),
                ("run", [str(seeds["eie"]), "--input", str(damaged), "-o", str(out_npz), "--stats"],
                 out_npz)]
    if kind in PROGRAM_KINDS:
        return [("run", [str(damaged), "--input", str(seeds["npz"]), "-o", str(out_npz), "--stats",
                         "--asm"], out_npz)]
    raise ValueError(kind)


def call_tool(tool: str, argv: list[str]) -> tuple[Optional[int], str, str]:
    """Run circ-opt or circ-run in-process: (exit code or None, stderr, traceback text).

    Python warnings are recorded and added to stderr as an interpreter would print them;
    the categories Python ignores by default are left out."""
    from circ.cli import opt, run

    main = {"opt": opt.main, "run": run.main}[tool]
    err, tb = io.StringIO(), ""
    code = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:  # noqa: BLE001  anything escaping main is a crash
                tb = traceback.format_exc()
    stderr = err.getvalue() + "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    return code, stderr, tb


def check_run(tool: str, argv: list[str], output: Path,
              protected: list[Path]) -> tuple[Optional[int], list[str]]:
    """Run one command: its exit code and the rules it broke (empty when it behaved)."""
    folder = output.parent
    inputs = {p: p.read_bytes() for p in protected}
    before = set(os.listdir(folder))
    code, stderr, tb = call_tool(tool, argv)
    problems = []
    if tb:
        problems.append("traceback: " + tb.strip().splitlines()[-1])
    elif code not in (0, 2):
        problems.append(f"exit code {code}")
    if "Traceback" in stderr:
        problems.append("traceback on stderr")
    lines = stderr.strip().splitlines()
    if code == 2 and len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr: {stderr.strip()[:300]!r}")
    after = set(os.listdir(folder))
    if code != 0 and after != before:
        problems.append(f"left behind after an error: {sorted(after - before)}")
    if code == 0 and not output.exists():
        problems.append("exit 0 but no output")
    for path, data in inputs.items():
        if path.read_bytes() != data:
            problems.append(f"input {path.name} was changed")
    for name in after - before:  # the next run starts from the same folder
        target = folder / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return code, [f"{tool} {' '.join(argv)}: {p} (stderr: {stderr.strip()[:200]!r})" for p in problems]


def check_input(kind: str, data: bytes, seeds: dict, folder: Path) -> tuple[list[str], list[int]]:
    """Write ``data`` as a damaged file of ``kind`` into ``folder``, run every command on it;
    (problems, exit codes)."""
    extension = {"onnx": ".onnx", "circ": ".circ", "qcirc": ".circ", "npz": ".npz", "eie": ".eie",
                 "dpu": ".dpu"}[kind]
    damaged = folder / f"damaged{extension}"
    damaged.write_bytes(data)
    out_dir = folder / "out"
    out_dir.mkdir(exist_ok=True)
    problems, codes = [], []
    for tool, argv, output in commands(kind, damaged, seeds, out_dir):
        protected = [damaged] + [seeds[k] for k in ("onnx", "npz", "eie")]
        code, found = check_run(tool, argv, output, protected)
        problems += found
        codes.append(code)
    damaged.unlink()
    return problems, codes


# ----------------------------------------------------------------------------- tests


class Seeds(dict):
    """The seed paths by kind, plus ``"bytes"``: their contents (short repr for hypothesis)."""

    def __repr__(self):
        return "<seeds>"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    paths = write_seeds(tmp_path_factory.mktemp("fuzz_seeds"))
    return Seeds(paths, bytes={key: path.read_bytes() for key, path in paths.items()})


def _check(kind: str, data: bytes, seeds: dict) -> None:
    with tempfile.TemporaryDirectory() as folder:
        problems, _ = check_input(kind, data, seeds, Path(folder))
    assert problems == [], "\n".join(problems)


def test_seeds_run_cleanly(seeds):
    """The undamaged seeds pass every command with exit 0 (the checks can see success)."""
    for kind in ("onnx", "circ", "qcirc", "npz", *PROGRAM_KINDS):
        with tempfile.TemporaryDirectory() as folder:
            damaged = Path(folder) / ("seed" + {"npz": ".npz", "onnx": ".onnx", "eie": ".eie",
                                                "dpu": ".dpu"}.get(kind, ".circ"))
            damaged.write_bytes(seeds["bytes"][kind])
            out_dir = Path(folder) / "out"
            out_dir.mkdir()
            for tool, argv, output in commands(kind, damaged, seeds, out_dir):
                code, stderr, tb = call_tool(tool, argv)
                assert (code, tb) == (0, ""), stderr + tb
                assert output.exists()


byte_ops = st.lists(st.tuples(st.sampled_from(BYTE_OPS), st.integers(0, 1 << 20),
                              st.binary(min_size=1, max_size=8)), min_size=1, max_size=4)
FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(kind=st.sampled_from(["onnx", "circ", "qcirc", "npz"]), ops=byte_ops)
def test_byte_mutations(seeds, kind, ops):
    _check(kind, mutate_bytes(seeds["bytes"][kind], ops), seeds)


@FUZZ
@given(kind=st.sampled_from(["circ", "qcirc"]), section=st.integers(0, 20), ops=byte_ops)
def test_resealed_container_mutations(seeds, kind, section, ops):
    _check(kind, mutate_circ_section(seeds["bytes"][kind], section, ops), seeds)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(PROGRAM_KINDS), reseal=st.booleans(), ops=byte_ops)
def test_program_mutations(seeds, kind, reseal, ops):
    """Bad magic, version, checksum, truncation and bit flips of .eie/.dpu programs; re-sealed
    payload damage reaches the decoders, the DPU's validation and the simulators."""
    data = seeds["bytes"][kind]
    _check(kind, mutate_program(data, ops) if reseal else mutate_bytes(data, ops), seeds)


@pytest.mark.parametrize("kind", PROGRAM_KINDS)
@pytest.mark.parametrize("damage", ["magic", "version", "checksum", "truncated", "empty"])
def test_program_header_damage_is_one_line(seeds, kind, damage, tmp_path):
    data = bytearray(seeds["bytes"][kind])
    if damage == "magic":
        data[0] ^= 0x20
    elif damage == "version":
        data[8] += 1
    elif damage == "checksum":
        data[-1] ^= 1
    elif damage == "truncated":
        del data[len(data) // 2:]
    else:
        data = bytearray()
    damaged = tmp_path / f"damaged.{kind}"
    damaged.write_bytes(bytes(data))
    code, stderr, tb = call_tool("run", [str(damaged), "--input", str(seeds["npz"]), "-o",
                                         str(tmp_path / "out.npz")])
    assert (code, tb) == (2, "")
    expected = {"magic": "bad magic", "version": "version", "checksum": "checksum",
                "truncated": "truncated", "empty": "truncated"}[damage]
    assert stderr.count("\n") == 1 and f"damaged.{kind}" in stderr and expected in stderr, stderr
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("edit", sorted(ONNX_EDITS))
def test_structural_onnx_edits(seeds, edit):
    _check("onnx", edit_onnx(seeds["bytes"]["onnx"], edit), seeds)


def corpus_cases() -> list[tuple[str, str]]:
    """(kind, file name) of every regression input listed in tests/corpus/README.md."""
    cases = []
    for line in (CORPUS / "README.md").read_text().splitlines():
        if line.startswith("- `"):
            name = line[3:line.index("`", 3)]
            kind = {".onnx": "onnx", ".circ": "circ", ".npz": "npz", ".eie": "eie",
                    ".dpu": "dpu"}[Path(name).suffix]
            cases.append((kind, name))
    return cases


@pytest.mark.parametrize("kind,name", corpus_cases())
def test_corpus(seeds, kind, name):
    data = (CORPUS / name).read_bytes()
    assert len(data) < 20_000
    _check(kind, data, seeds)
