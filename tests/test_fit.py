"""`metassl fit` (issue 21, items 3 and 4): the folder presets, unlabeled folders read whatever their layout, and
folders to predictions within a time budget."""

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import SHARED_DATA
from metassl.cli.main import main
from metassl.config import ConfigError, load_config
from metassl.data import load_dataset

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "mnist").exists(), reason="needs MNIST in the shared data")


def _save(split, digit: str, idx: list[int], folder: Path, prefix: str = "") -> None:
    k = split.class_names.index(digit)
    folder.mkdir(parents=True, exist_ok=True)
    for j in idx:
        Image.fromarray(split.images[int(split.offsets[k]) + j, 0].numpy(), "L").save(folder / f"{prefix}{digit}_{j}.png")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """unlabeled/: 300 MNIST digits 0-9 in nested and flat places; labeled/: digits 0-4, 6 each; support/ and
    query/: digits 5-9 (never labeled), 5 and 10 each."""
    mnist = load_dataset("mnist", "test", SHARED_DATA)
    root = tmp_path_factory.mktemp("fit")
    for d in "0123456789":
        _save(mnist, d, list(range(100, 130)), root / "unlabeled" / ("nested/deeper" if int(d) % 2 else ""), "u")
    for d in "01234":
        _save(mnist, d, list(range(6)), root / "labeled" / d)
    for d in "56789":
        _save(mnist, d, list(range(5)), root / "support" / d)
        _save(mnist, d, list(range(10, 20)), root / "query" / d)
    return root


def test_folder_presets_follow_the_data(folders):
    cfg = load_config("folder/simclr")
    assert cfg.data.dataset == "folder" and cfg.data.image_size is None  # size and channels from the images
    from metassl.data.augment import resolve_augment

    spec = resolve_augment(cfg.augment, cfg.data.dataset, cfg.learner.name)
    assert cfg.augment.preset == "generic" and spec.flip > 0  # not the Omniglot character augmentation
    assert load_config("folder/practical_protonet").data.train_split == "all"
    split = load_dataset("folder", "all", folders / "unlabeled", options={"unlabeled": True})
    assert split.class_names == ["unlabeled"] and int(split.counts[0]) == 300
    assert tuple(split.images.shape[1:]) == (1, 28, 28)
    with pytest.raises(ConfigError, match="data.options.unlabeled must be true or false"):
        load_dataset("folder", "all", folders / "unlabeled", options={"unlabeled": "yes"})


def test_fit_then_predict_within_the_budget(folders, tmp_path, capsys):
    out = tmp_path / "run"
    t0 = __import__("time").monotonic()
    assert main(["fit", "--unlabeled", str(folders / "unlabeled"), "--labeled", str(folders / "labeled"),
                 "--minutes", "0.6", "--out", str(out), "--device", "cpu", "model.hidden=16",
                 "tasks.batch_size=32"]) == 0
    seconds = __import__("time").monotonic() - t0
    text = capsys.readouterr().out
    assert "stage 1" in text and "stage 2" in text and "predict with: metassl predict" in text
    # within the budget, with the slack of the setup the budget does not include (the first data read)
    assert seconds < 0.6 * 60 * 2.5, seconds
    encoder = tmp_path / "run.simclr"
    stage1 = yaml_config(encoder)
    stage2 = yaml_config(out)
    assert stage1["learner"]["name"] == "simclr" and stage1["data"]["options"] == {"unlabeled": True}
    assert stage2["learner"]["name"] == "protonet" and stage2["init_from"] == str(encoder)
    assert stage2["tasks"]["ways"] == 5 and stage2["tasks"]["queries"] == 5  # 5 classes of 6 images
    for s, cfg in ((encoder, stage1), (out, stage2)):
        steps = cfg["train"]["steps"]
        assert steps >= 20 and cfg["optim"]["warmup_steps"] == steps // 20  # the schedule fits the run
        assert (s / "checkpoints").is_dir()
    assert main(["predict", str(out), "--support", str(folders / "support"), "--query", str(folders / "query"),
                 "--out", str(tmp_path / "p.csv")]) == 0
    with (tmp_path / "p.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 50
    acc = sum(r["predicted"] == Path(r["path"]).parent.name for r in rows) / len(rows)
    assert acc > 0.4, acc  # chance is 0.2 on these unseen digits


def yaml_config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


def test_fit_refuses_what_it_cannot_use(folders, tmp_path, capsys):
    base = ["fit", "--unlabeled", str(folders / "unlabeled"), "--out", str(tmp_path / "r"), "--minutes", "0.2"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["fit", "--unlabeled", str(empty), "--out", str(tmp_path / "r"), "--minutes", "0.2"]) == 2
    assert "0 image(s) found" in capsys.readouterr().err
    one = tmp_path / "one"
    (one / "a").mkdir(parents=True)
    Image.new("L", (28, 28)).save(one / "a" / "x.png")
    assert main(base + ["--labeled", str(one)]) == 2
    assert "1 class folder(s)" in capsys.readouterr().err
    assert main(base + ["model.hiden=8"]) == 2
    assert "model.hiden" in capsys.readouterr().err
    assert main(base + ["--minutes", "0"]) == 2
    assert "--minutes" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["fit", "--unlabeled", str(folders / "unlabeled"), "--out", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing half-made
