"""The tuned allocator (engine/allocator.py) never changes numerics, and its growth guard releases memory only when
the resident size has grown past its bound."""

import json
import os
import subprocess
import sys

from metassl.engine.allocator import MemoryGuard, opted_out, preloaded_allocator

TINY = ["data.dataset=digits", "data.train_split=train", "data.val_split=test", "data.test_split=test",
        "model.backbone=mlp", "model.hidden=[64,32]", "model.image_size=8", "tasks.ways=5", "tasks.shots=2",
        "tasks.queries=3", "tasks.tasks_per_batch=4", "train.steps=6", "train.log_every=1", "train.val_every=0",
        "train.progress=false", "train.tensorboard=false", "train.report=false", "train.threads=1"]

PROBE = """
import sys
from metassl.engine.allocator import tune_allocator
from metassl.cli.main import main
code = main(sys.argv[1:])
print("TUNED", tune_allocator())
sys.exit(code)
"""


def train_losses(tmp_path, name, system_malloc):
    env = {k: v for k, v in os.environ.items() if k != "METASSL_SYSTEM_MALLOC"}
    if system_malloc:
        env["METASSL_SYSTEM_MALLOC"] = "1"
    run = tmp_path / name
    p = subprocess.run([sys.executable, "-c", PROBE, "train", "omniglot/protonet_5w1s", *TINY, "--run-dir", str(run)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("kind") == "train"], "TUNED True" in p.stdout


def test_tuned_allocator_gives_the_same_losses_bit_for_bit(tmp_path):
    tuned, applied = train_losses(tmp_path, "tuned", system_malloc=False)
    plain, not_applied = train_losses(tmp_path, "plain", system_malloc=True)
    if sys.platform.startswith("linux"):
        assert applied and not not_applied
    assert len(tuned) == 6 and tuned == plain


def test_opt_out_values(monkeypatch):
    for value, out in [("1", True), ("yes", True), ("0", False), ("", False), ("false", False)]:
        monkeypatch.setenv("METASSL_SYSTEM_MALLOC", value)
        assert opted_out() is out, value
    monkeypatch.delenv("METASSL_SYSTEM_MALLOC")
    assert not opted_out()


def test_memory_guard_releases_only_past_its_bound():
    GB = 1 << 30
    readings = iter([1 * GB, 2 * GB, 2 * GB, 3.9 * GB, 4.5 * GB, 2.5 * GB, 4.9 * GB, 5.2 * GB, 5.0 * GB])
    released = []
    g = MemoryGuard(True, settle=2, factor=2.0, min_growth=GB, rss=lambda: next(readings),
                    release=lambda: released.append(1) or True)
    out = [g.check() for _ in range(5)]
    # settle: baseline 2 GB; 2 GB and 3.9 GB stay under 2 x 2 GB; 4.5 GB is over: released, 2.5 GB stays resident
    assert out == [False, False, False, False, True] and g.baseline == 2.5 * GB and len(released) == 1
    # the new bound is 2 x 2.5 GB = 5 GB: 4.9 stays, 5.2 is over again
    assert [g.check(), g.check()] == [False, True] and g.releases == 2 and g.baseline == 5.0 * GB


def test_memory_guard_is_inert_when_the_allocator_was_not_tuned():
    g = MemoryGuard(False, rss=lambda: 1 / 0, release=lambda: 1 / 0)
    assert not any(g.check() for _ in range(10))


def test_a_preloaded_allocator_is_recognized(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    assert preloaded_allocator() == "libtcmalloc_minimal.so.4"
    monkeypatch.setenv("LD_PRELOAD", "/opt/libfoo.so")
    assert preloaded_allocator() is None
