"""The README's set-up command runs as written (its circ part: build the example, run circ-opt)."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import circ

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up on a fresh machine.*?```bash\n(.*?)```", text, flags=re.S).group(1)
    steps = [step.strip() for step in block.strip().split("&&")]
    # installing is CI's job (.ci/run does the same); the rest is the main job
    return [s for s in steps if not s.startswith(("apt-get", "pip"))]


def test_readme_main_job_runs_and_writes_a_smaller_container(tmp_path):
    steps = _setup_commands()
    assert [shlex.split(s)[0] for s in steps] == ["python", "circ-opt"]
    for step in steps:
        argv = [a.replace("/tmp/", f"{tmp_path}/") for a in shlex.split(step)]
        if argv[0] == "python":
            argv[0] = sys.executable
        else:
            argv[:1] = [sys.executable, "-m", "circ.cli.opt"]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
    model, container = tmp_path / "lenet5.onnx", tmp_path / "lenet5.circ"
    assert (tmp_path / "lenet5.report.json").exists()
    assert container.stat().st_size * 20 < model.stat().st_size
    # the container decodes to exactly the weights the same pipeline gives in Python
    import numpy as np

    pipeline = re.search(r"--passes='([^']*)'", steps[-1]).group(1)
    expected = circ.optimize(circ.load(str(model)), pipeline)
    loaded = circ.load(str(container))
    assert sorted(loaded.consts) == sorted(expected.consts)
    for name, value in expected.consts.items():
        np.testing.assert_array_equal(loaded.consts[name].numpy(), value.numpy(), err_msg=name)
    x = np.random.default_rng(0).uniform(0, 255, (2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(circ.run(loaded, {"data": x})["prob_0"], circ.run(expected, {"data": x})["prob_0"])
