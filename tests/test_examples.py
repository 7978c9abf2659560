"""The scripts in examples/ run as a user runs them (a subprocess, small sizes) and print what
their README says; their outputs are checked against the files they write."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import circ

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_examples_readme_lists_every_script():
    readme = (ROOT / "examples" / "README.md").read_text()
    for script in sorted((ROOT / "examples").glob("*.py")):
        assert f"`{script.name}`" in readme, script.name


def test_deep_compression_mlp(tmp_path):
    out = _run("deep_compression_mlp.py", "--out", tmp_path, "--hidden", 24, "--epochs", 1,
               "--sparsity", 0.7, "--bits", 4)
    accuracies = dict(re.findall(r"^(.+?)\s+test accuracy\s+([\d.]+)%$", out, re.M))
    assert float(accuracies["trained (float32)"]) > 85
    # the container holds exactly the retrained clustered model: same accuracy after reload
    assert accuracies["Huffman-coded .circ (reloaded)"] == accuracies["  + centroids retrained"]
    onnx_bytes, circ_bytes = (tmp_path / "mlp.onnx").stat().st_size, (tmp_path / "mlp.circ").stat().st_size
    assert f"{circ_bytes:,} bytes" in out and circ_bytes * 3 < onnx_bytes
    graph = circ.load(tmp_path / "mlp.circ")
    weights = graph.consts["fc2.weight"].const.to_numpy()
    assert np.mean(weights == 0) == pytest.approx(0.7, abs=0.01)
    assert len(np.unique(weights[weights != 0])) <= 16
    assert re.search(r"^total\s+[\d,]+\s+" + re.escape(f"{circ_bytes:,}"), out, re.M)


def test_channel_prune_resnet(tmp_path):
    out = _run("channel_prune_resnet.py", "--out", tmp_path, "--width", 8, "--batch", 2, "--repeats", 2)
    before = circ.stats(circ.load(tmp_path / "resnet.onnx")).totals()
    after = circ.stats(circ.load(tmp_path / "resnet.pruned.onnx")).totals()
    assert after["macs"] * 3 < before["macs"] and after["params"] < before["params"]
    macs_line = re.search(r"^MACs per image\s+([\d,]+)\s+([\d,]+)$", out, re.M)
    assert macs_line.groups() == (f"{before['macs']:,}", f"{after['macs']:,}")
    assert "fold_bn alone 0 " in out or re.search(r"fold_bn alone [0-9.e-]+ ", out)


def test_lower_to_eie(tmp_path):
    out = _run("lower_to_eie.py", "--out", tmp_path, "--hidden", 64, "--pes", 8, "--batch", 2)
    assert re.search(r"EIE program: 3 layers, [\d,]+ non-zero weights of 54,912", out)
    assert (tmp_path / "mlp.eie").stat().st_size > 0
    assert (tmp_path / "mlp.eie.s").read_text().count("fc") >= 3
    totals = re.search(r"^total\s+(\d+)\s+(\d+)\s+([\d.]+)", out, re.M)
    assert totals and int(totals.group(2)) > 0 and 0 < float(totals.group(3)) <= 1
