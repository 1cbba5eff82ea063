"""A plugin is one file: a copied learner, SSL method or data set module trains with no other file touched, and a
separately installed package registers a learner through the `metassl.plugins` entry point group."""

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import metassl

PKG = Path(metassl.__file__).parent
TINY = ["data.dataset=digits", "data.train_split=train", "data.val_split=null", "data.test_split=test",
        "model.backbone=mlp", "model.hidden=[16,8]", "model.image_size=8", "tasks.ways=3", "tasks.shots=1",
        "tasks.queries=2", "eval.ways=3", "eval.shots=[1]", "eval.episodes=5", "train.steps=3",
        "train.progress=false", "train.tensorboard=false", "train.report=false", "train.threads=1"]


def tiny_config(tmp_path: Path) -> str:
    """A config with no learner keys, so any learner can be named on the command line."""
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\nlearner: {name: protonet}\n")
    return str(path)


def metassl_cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "metassl", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, cwd=cwd)


@pytest.fixture
def copied(request):
    """Copy a plugin file under a new file name, renaming its registered name; removed afterwards."""
    made = []

    def copy(rel: str, old: str, new: str) -> Path:
        src = PKG / rel
        dst = src.with_name(f"{src.stem}_copy_{uuid.uuid4().hex[:8]}.py")
        dst.write_text(src.read_text().replace(old, new))
        made.append(dst)
        return dst

    yield copy
    for p in made:
        p.unlink(missing_ok=True)


@pytest.mark.parametrize("rel,old,new,extra", [
    ("learners/protonet.py", '"protonet"', '"protonet_copy"', ["learner.name=protonet_copy"]),
    ("ssl/simclr.py", '"simclr"', '"simclr_copy"', ["learner.name=simclr_copy", "tasks.batch_size=16",
                                                     "learner.proj_hidden=16", "learner.proj_dim=8"]),
    ("data/loaders/digits.py", 'name="digits"', 'name="digits_copy"', ["data.dataset=digits_copy"]),
], ids=["learner", "ssl-method", "dataset"])
def test_a_copied_plugin_file_trains_alone(copied, tmp_path, rel, old, new, extra):
    copied(rel, old, new)
    r = metassl_cli("train", tiny_config(tmp_path), *TINY, *extra, "--run-dir", str(tmp_path / "run"), "--eval")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "accuracy" in r.stdout and (tmp_path / "run" / "checkpoints" / "latest").is_file()
    assert (tmp_path / "run" / "config.yaml").read_text().count(new.split("=")[-1].strip('"')) >= 1


def test_a_plugin_from_an_installed_package_trains(tmp_path):
    site = tmp_path / "site"
    pkg = site / "tiny_metassl_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nearest_mean.py").write_text(textwrap.dedent('''
        """A third-party learner: nearest class mean by cosine similarity, registered from outside metassl."""
        from dataclasses import dataclass

        import torch.nn.functional as F

        from metassl.config import LearnerConfig, option
        from metassl.learners import Learner, register_learner
        from metassl.learners.protonet import prototypes


        @dataclass
        class NearestMeanConfig(LearnerConfig):
            name: str = "nearest_mean"
            scale: float = option(10.0, range=(0.0, None), help="cosine logits are multiplied by this")


        @register_learner("nearest_mean", NearestMeanConfig, description="a plugin from another package")
        class NearestMean(Learner):
            def adapt(self, params, buffers, support_x, support_y, ways):
                z = F.normalize(self.embed(params, buffers, support_x, per_task=True), dim=-1)
                return F.normalize(prototypes(z, support_y, ways), dim=-1)

            def classify(self, params, buffers, state, query_x):
                q = F.normalize(self.embed(params, buffers, query_x, per_task=True), dim=-1)
                return self.config.scale * q @ state.transpose(1, 2)
    '''))
    dist = site / "tiny_metassl_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-metassl-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[metassl.plugins]\nnearest_mean = tiny_metassl_plugin.nearest_mean\n")
    (dist / "RECORD").write_text("")
    env = {"PYTHONPATH": str(site)}
    r = metassl_cli("presets", "--keys", env=env)
    assert r.returncode == 0 and "learner.name: nearest_mean" in r.stdout and "learner.scale" in r.stdout
    r = metassl_cli("train", tiny_config(tmp_path), *TINY, "learner.name=nearest_mean", "learner.scale=5",
                    "--run-dir", str(tmp_path / "run"), "--eval", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "accuracy" in r.stdout
    # without the package the run's learner is unknown, and the error says which names are known
    r = metassl_cli("eval", str(tmp_path / "run"))
    assert r.returncode == 2 and "unknown learner 'nearest_mean'" in r.stderr


def test_a_broken_plugin_names_itself(tmp_path):
    site = tmp_path / "site"
    (site / "broken_plugin").mkdir(parents=True)
    (site / "broken_plugin" / "__init__.py").write_text("raise RuntimeError('boom')\n")
    dist = site / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[metassl.plugins]\nbroken = broken_plugin\n")
    r = metassl_cli("presets", "--keys", env={"PYTHONPATH": str(site)})
    assert r.returncode != 0
    assert "broken_plugin" in r.stderr and "broken-plugin" in r.stderr and "boom" in r.stderr
