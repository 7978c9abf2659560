"""circ.progress through the tools: circ-opt and circ-viz draw progress bars on stderr only when
it is a terminal and -q is not given; library calls stay silent."""

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import circ
from circ import progress
from circ.cli.opt import main as opt_main
from circ.cli.viz import main as viz_main
from opcheck import make_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(0)
    nodes, consts, x = [], {}, "x"
    for i in range(3):
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
        consts[f"w{i}"] = rng.standard_normal((16, 16)).astype(np.float32)
        x = f"h{i}"
    path = tmp_path_factory.mktemp("progress") / "m.onnx"
    onnx.save(make_model(nodes, {"x": [1, 16]}, [x], consts), str(path))
    return path


def _stderr_on_a_terminal(args) -> str:
    """Run ``python -m args...`` with stderr on a pseudo-terminal; what it wrote there."""
    leader, follower = pty.openpty()
    # A fresh pty is 0 columns wide, and tqdm draws nothing in 0 columns: make it 100 wide.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL,
                            stderr=follower, cwd=ROOT)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=120) == 0, b"".join(chunks)
    return b"".join(chunks).decode("utf-8", "replace")


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def progress_off_after():
    yield
    progress.enable(False)  # the tools switch it on for the process: leave it as it was


@pytest.mark.parametrize("tool", ["opt", "viz"])
@pytest.mark.parametrize("stream, quiet, shown", [(FakeTerminal, False, True), (FakeTerminal, True, False),
                                                  (io.StringIO, False, False)])
def test_progress_only_on_a_terminal_and_not_with_q(model, tmp_path, monkeypatch, progress_off_after,
                                                    tool, stream, quiet, shown):
    if tool == "opt":
        main = opt_main
        args = ["--passes=cluster(bits=2),huffman", str(model), "-o", str(tmp_path / "o.onnx")]
    else:
        main = viz_main
        args = [str(model), "--pipeline", "cluster(bits=2),huffman", "-o", str(tmp_path / "g.dot")]
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(args + ["-q"] * quiet) == 0
    if shown:  # the bars: "cluster: ... 3/3 ... layer/s", then huffman's
        assert "cluster" in err.getvalue() and "huffman" in err.getvalue() and "layer" in err.getvalue()
    else:
        assert err.getvalue() == ""


def test_progress_on_a_real_terminal(model, tmp_path):
    args = ["circ.cli.opt", "--passes=cluster(bits=2)", str(model), "-o", str(tmp_path / "o.onnx")]
    assert "cluster" in _stderr_on_a_terminal(args)


def test_library_calls_are_silent(model, capfd):
    assert not progress.enabled()
    circ.optimize(circ.load(str(model)), "cluster(bits=2),huffman")
    assert capfd.readouterr().err == ""
