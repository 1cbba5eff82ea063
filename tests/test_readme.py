"""The README's Python example runs as written (from the repository root, with ../shared/data beside it)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_examples_run(tmp_path):
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
        # the "own images" example, on folders made from Omniglot test images, run beside the trained run
        _make_folders(tmp_path)
        (tmp_path / "runs").symlink_to(ROOT / "runs")
        r = subprocess.run([sys.executable, "-c", blocks[1]], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "['alpha', 'beta'] ['beta'] [[" in r.stdout
    finally:
        shutil.rmtree(ROOT / "runs" / "api-example", ignore_errors=True)


def _make_folders(root: Path) -> None:
    from PIL import Image

    from metassl.data import load_dataset

    test = load_dataset("omniglot", "test", data_root=ROOT.parent / "shared" / "data")
    for name, c in (("alpha", 0), ("beta", 7)):
        (root / "support" / name).mkdir(parents=True)
        for j in range(2):
            Image.fromarray(test.images[int(test.offsets[c]) + j, 0].numpy()).save(root / "support" / name / f"{j}.png")
    (root / "query").mkdir()
    Image.fromarray(test.images[int(test.offsets[7]) + 5, 0].numpy()).save(root / "query" / "x.png")
