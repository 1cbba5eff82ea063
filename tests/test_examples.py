"""The examples run as written: examples/protonet_omniglot.py trains a few steps and prints a test accuracy line."""

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "protonet_omniglot.py"
TINY = ["--steps", "3", "--episodes", "5", "--threads", "1"]


def run_example(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("METASSL_DATA", None)  # the data root comes from the arguments (or the example's default)
    return subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)


def test_protonet_omniglot_example_trains_and_reports_accuracy():
    r = run_example(*TINY, "--data-root", str(SHARED_DATA))
    if not (SHARED_DATA / "omniglot").exists():
        # without the shared data the example must stop with the library's clear missing-data message instead
        assert r.returncode != 0 and "not found under the data root" in r.stderr, r.stderr[-3000:]
        return
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step 3: loss" in r.stdout
    line = re.search(r"omniglot test 5-way 1-shot \(5 episodes, 3 training steps\): accuracy ([\d.]+) ± ([\d.]+)%",
                     r.stdout)
    assert line, r.stdout
    assert 20.0 <= float(line[1]) <= 100.0  # 5-way: chance is 20%; a few steps already do better than nothing


def test_protonet_omniglot_example_names_a_missing_data_root(tmp_path):
    r = run_example(*TINY, "--data-root", str(tmp_path / "no-data-here"))
    assert r.returncode != 0
    assert "not found under the data root" in r.stderr and "omniglot" in r.stderr
