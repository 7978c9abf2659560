"""Determinism: the same input, pipeline and seed give byte-identical outputs (ONNX, .circ,
JSON reports minus timing fields) within a process and across processes whose
``PYTHONHASHSEED`` differs (set and dict order of strings must never leak into results).

The pipelines are the ones that draw random numbers (k-means++ and random centroid seeding,
calibration with --data, channel ranking with ties) and write both output formats, and
lowerings to the EIE and DPU backends (``--target``): program bytes must not vary either; so
does fine-tuning (shuffled batches, batch statistics, centroid updates) and its HTML report.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from circ.cli import opt

PIPELINES = {
    "kmeanspp": ("cluster(init=kmeans++,bits=3)", "onnx", False),
    "random": ("cluster(init=random,bits=3)", "onnx", False),
    "quant_data": ("quant(bits=6)", "onnx", True),
    "channel_prune": ("channel_prune(ratio=0.5),fold_bn", "onnx", False),
    "deep_compression": ("prune(sparsity=0.7),cluster(init=kmeans++,bits=4),huffman", "circ", False),
    "quant_circ": ("channel_prune(target_macs=0.6),quant(per_channel=true)", "circ", True),
    "eie": ("fold_bn,prune(sparsity=0.7),cluster(init=kmeans++,bits=4)", "eie", False),
    "dpu": ("fold_bn", "dpu", True),
    # Training: shuffling, BN batch statistics and clustered centroid updates; with an HTML report.
    "finetune": ("prune(sparsity=0.5),finetune(epochs=2,batch=4),cluster(bits=3),finetune(batch=3)",
                 "onnx", True),
}
HTML = {"finetune"}  # pipelines that also write --report-html (compared minus timing cells)
TARGETS = ("eie", "dpu")
TIMING_KEYS = {"seconds", "time", "timing", "elapsed"}


def write_model(folder: Path) -> tuple[Path, Path]:
    """A conv-BN-relu-conv-gemm model (symbolic batch) and an .npz of calibration inputs.

    Two channels of the second conv are exact copies, so channel ranking has ties: an order
    that depended on hashing or on an unstable sort would show up here."""
    rng = np.random.default_rng(7)

    def init(name, array):
        return numpy_helper.from_array(np.asarray(array, np.float32), name)

    w2 = rng.standard_normal((16, 8, 3, 3))
    w2[5] = w2[3]
    initializers = [
        init("w1", rng.standard_normal((8, 3, 3, 3))), init("b1", rng.standard_normal(8)),
        init("gamma", rng.uniform(0.5, 1.5, 8)), init("beta", rng.standard_normal(8)),
        init("mean", 0.1 * rng.standard_normal(8)), init("var", rng.uniform(0.5, 1.5, 8)),
        init("w2", w2), init("fc", rng.standard_normal((10, 16 * 8 * 8)))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    data = folder / "calib.npz"
    np.savez(data, x=rng.standard_normal((6, 3, 8, 8)).astype(np.float32), y=rng.integers(0, 10, 6))
    return path, data


def without_timing(obj):
    """A report with its wall-clock fields and its file paths removed."""
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items()
                if k not in TIMING_KEYS and k not in ("input", "output")}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def argv_for(key: str, model: Path, data: Path, out_dir: Path, seed: int = 0) -> list[str]:
    pipeline, extension, with_data = PIPELINES[key]
    argv = [f"--passes={pipeline}", str(model), "-o", str(out_dir / f"{key}.{extension}"),
            "--report", str(out_dir / f"{key}.json"), "--seed", str(seed), "-q", "--time-passes"]
    if with_data:
        argv += ["--data", str(data)]
    if extension in TARGETS:
        argv.append(f"--target={extension}")
    if key in HTML:
        argv += ["--report-html", str(out_dir / f"{key}.html")]
    return argv


def outputs_of(key: str, out_dir: Path) -> tuple[bytes, dict]:
    extension = PIPELINES[key][1]
    report = json.loads((out_dir / f"{key}.json").read_text())
    if key in HTML:
        report["html"] = html_without_timing((out_dir / f"{key}.html").read_text(), out_dir)
    return (out_dir / f"{key}.{extension}").read_bytes(), without_timing(report)


def html_without_timing(page: str, out_dir: Path) -> str:
    """An HTML report with its wall-clock cells emptied and its output folder name removed."""
    page = re.sub(r'(<td class="[^"]*timing[^"]*">)[^<]*(</td>)', r"\1\2", page)
    assert "timing" in page  # the page marks its timing cells, so the line above did something
    return page.replace(str(out_dir), "OUT").replace(out_dir.name, "OUT")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("det_in"))


@pytest.fixture(scope="module")
def first_run(inputs, tmp_path_factory):
    """Every pipeline once, in this process."""
    model, data = inputs
    out_dir = tmp_path_factory.mktemp("det_run1")
    for key in PIPELINES:
        assert opt.main(argv_for(key, model, data, out_dir)) == 0
    return out_dir


@pytest.mark.parametrize("key", sorted(PIPELINES))
def test_same_process_runs_are_identical(inputs, first_run, tmp_path, key):
    model, data = inputs
    assert opt.main(argv_for(key, model, data, tmp_path)) == 0
    first_bytes, first_report = outputs_of(key, first_run)
    again_bytes, again_report = outputs_of(key, tmp_path)
    assert first_bytes == again_bytes
    assert first_report == again_report


def test_seed_matters_for_random_init(inputs, first_run, tmp_path):
    """The comparison above can fail: a different seed changes a randomly seeded result."""
    model, data = inputs
    assert opt.main(argv_for("random", model, data, tmp_path, seed=1)) == 0
    assert outputs_of("random", tmp_path)[0] != outputs_of("random", first_run)[0]


SUBPROCESS_SCRIPT = """
import sys
from circ.cli import opt
for argv in {argvs!r}:
    code = opt.main(argv)
    if code:
        sys.exit(code)
"""


@pytest.mark.parametrize("hash_seed", ["0", "4242"])
def test_separate_processes_are_identical(inputs, first_run, tmp_path, hash_seed):
    """All pipelines in a fresh interpreter with another PYTHONHASHSEED, plus the
    circ-opt entry point itself for one of them."""
    model, data = inputs
    argvs = [argv_for(key, model, data, tmp_path) for key in PIPELINES]
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    script = SUBPROCESS_SCRIPT.format(argvs=argvs)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    for key in PIPELINES:
        assert outputs_of(key, tmp_path) == outputs_of(key, first_run), key

    cli_dir = tmp_path / "cli"
    cli_dir.mkdir()
    done = subprocess.run([sys.executable, "-m", "circ.cli.opt",
                           *argv_for("deep_compression", model, data, cli_dir)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert outputs_of("deep_compression", cli_dir) == outputs_of("deep_compression", first_run)
