"""The README's Python example runs as written (from the repository root, with ../shared/data beside it)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    if not (ROOT.parent / "shared" / "data" / "omniglot").exists():
        # without the shared data the example must fail with the clear missing-data message instead
        r = subprocess.run([sys.executable, "-c", blocks[0]], cwd=ROOT, capture_output=True, text=True)
        assert "not found under the data root" in r.stderr
        return
    try:
        r = subprocess.run([sys.executable, "-c", blocks[0]], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "torch.Size([8, 5, 1, 28, 28])" in r.stdout
        assert "5-way 1-shot" in r.stdout and "torch.Size([8, 75, 5])" in r.stdout
    finally:
        shutil.rmtree(ROOT / "runs" / "api-example", ignore_errors=True)
