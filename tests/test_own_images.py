"""Your own images (issue 21): polarity and input statistics, folder size/channel inference, eval of a grayscale
folder run on RGB images, missing split folders and skipped files."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED_DATA
from metassl.api import FewShotClassifier
from metassl.cli.main import main
from metassl.data import load_dataset

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "mnist").exists(), reason="needs MNIST in the shared data")


def _write(root: Path, split, digits, per_class, start=0, invert=False, mode="L"):
    g = torch.Generator().manual_seed(len(digits) + start)
    for d in digits:
        k = split.class_names.index(d)
        o, n = int(split.offsets[k]), int(split.counts[k])
        (root / d).mkdir(parents=True, exist_ok=True)
        for j, i in enumerate((torch.randperm(n, generator=g)[start:start + per_class] + o).tolist()):
            a = split.images[i, 0].numpy()
            Image.fromarray(255 - a if invert else a, "L").convert(mode).save(root / d / f"{d}_{j}.png")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, one_thread):
    """A ProtoNet trained for a few seconds on a grayscale MNIST folder (train/: digits 0-6; test/: 7-9), with no
    size or channel given: both come from the images."""
    mnist = load_dataset("mnist", "test", SHARED_DATA)
    base = tmp_path_factory.mktemp("own")
    root = base / "data"
    _write(root / "train", mnist, list("0123456"), 20)
    _write(root / "test", mnist, list("789"), 12)
    run = base / "run"
    assert main(["train", "omniglot/protonet_5w1s", "data.dataset=folder", "data.train_split=train", "model.hidden=16",
                 "tasks.ways=5", "tasks.shots=5", "tasks.queries=5", "train.steps=60", "train.progress=false",
                 "train.tensorboard=false", "optim.lr=0.003", "train.report=false", "--run-dir", str(run),
                 "--data-root", str(root)]) == 0
    return run, root, mnist, base


def _predict(run, support, query, out, *extra):
    assert main(["predict", str(run), "--support", str(support), "--query", str(query), "--out", str(out),
                 *extra]) == 0
    with out.open(encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], {Path(r[0]).name: r for r in rows[1:]}


def test_inverted_images_give_the_same_predictions(folder_run, tmp_path, capsys):
    run, _, mnist, _ = folder_run
    for inv in (False, True):
        _write(tmp_path / f"s{inv}", mnist, list("0123"), 3, start=100, invert=inv)
        _write(tmp_path / f"q{inv}", mnist, list("0123"), 10, start=200, invert=inv)
    head, plain = _predict(run, tmp_path / "sFalse", tmp_path / "qFalse", tmp_path / "a.csv")
    assert head[:3] == ["path", "predicted", "probability"] and head[-2:] == ["error", "input_warning"]
    _, inverted = _predict(run, tmp_path / "sTrue", tmp_path / "qTrue", tmp_path / "b.csv")
    err = capsys.readouterr().err
    assert "polarity: inverted 12 of 12 support, 40 of 40 query images" in err and "warning" not in err
    acc = {k: np.mean([r[1] == n.split("_")[0] for n, r in rows.items()]) for k, rows in
           (("plain", plain), ("inverted", inverted))}
    assert acc["plain"] > 0.5 and abs(acc["plain"] - acc["inverted"]) <= 0.01, acc
    assert not any(r[-1] for r in {**plain, **inverted}.values())
    # polarity kept: the model sees white on black, and says so
    _, kept = _predict(run, tmp_path / "sTrue", tmp_path / "qTrue", tmp_path / "c.csv", "--polarity", "keep")
    err = capsys.readouterr().err
    assert len([x for x in err.splitlines() if x.startswith("warning:")]) == 1
    assert "40 of 40 query and 12 of 12 support images are far outside" in err
    assert all("polarity kept" in r[-1] for r in kept.values())
    clf = FewShotClassifier.load(run, polarity="keep").fit_folder(tmp_path / "sTrue")
    assert sum(w is not None for w in clf.support_warnings) == 12


def test_old_checkpoint_without_statistics_still_predicts(folder_run, tmp_path, capsys):
    run, _, mnist, base = folder_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    for state in old.glob("checkpoints/*/state.json"):
        d = json.loads(state.read_text())
        del d["preprocess"]["stats"]
        state.write_text(json.dumps(d))
    _write(tmp_path / "s", mnist, list("012"), 2, start=100, invert=True)
    _, rows = _predict(old, tmp_path / "s", tmp_path / "s", tmp_path / "o.csv")
    err = capsys.readouterr().err
    assert err.count("was trained before metassl recorded") == 1 and "polarity:" not in err
    assert len(rows) == 6 and not any(r[-1] for r in rows.values())


def test_folder_size_and_channels_come_from_the_images(folder_run, tmp_path, capsys):
    run, root, mnist, _ = folder_run
    cfg = json.loads(next(run.glob("checkpoints/*/state.json")).read_text())
    assert cfg["image_shape"] == [1, 28, 28] and cfg["preprocess"]["stats"]["background"] == 0.0
    gray = tmp_path / "gray"
    _write(gray / "train", mnist, list("01"), 3)
    Image.fromarray(np.zeros((20, 16), np.uint8), "L").save(gray / "train" / "0" / "small.png")
    capsys.readouterr()
    s = load_dataset("folder", "train", gray)
    assert s.image_shape == (1, 28, 28) and s.preprocess.mean == ()
    line = capsys.readouterr().err
    assert "7 images, median 28x28, all grayscale: read at 28x28, 1 channel" in line
    assert load_dataset("folder", "train", gray, image_size=16, options={"channels": 3}).image_shape == (3, 16, 16)
    Image.new("RGB", (100, 120), (200, 10, 10)).save(gray / "train" / "1" / "red.png")
    for i in range(8):  # most images now larger than the 84 cap
        Image.new("RGB", (120, 110)).save(gray / "train" / "1" / f"big{i}.png")
    s = load_dataset("folder", "train", gray)
    assert s.image_shape == (3, 84, 84) and "9 in colour: read at 84x84, 3 channels" in capsys.readouterr().err


def test_eval_of_a_grayscale_folder_run_on_rgb_images(folder_run, tmp_path, capsys):
    run, root, _, _ = folder_run
    rgb = tmp_path / "rgb"
    for f in (root / "test").rglob("*.png"):
        dst = rgb / "test" / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.open(f).convert("RGB").save(dst)
    args = ["eval", str(run), "--dataset", "folder", "--split", "test", "--ways", "3", "--shots", "1",
            "--queries", "5", "--episodes", "20", "--json"]
    assert main(args + ["--data-root", str(root)]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(args + ["--data-root", str(rgb)]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["accuracy"] == a["accuracy"] and "converted to grayscale" in cap.err


def test_missing_split_folder_and_skipped_files(folder_run, tmp_path, capsys):
    _, _, mnist, _ = folder_run
    root = tmp_path / "d"
    _write(root / "train", mnist, list("012345"), 6)
    (root / "train" / "0" / "notes.txt").write_text("not an image")
    (root / "train" / "1" / "scan.raw").write_bytes(b"\0" * 10)
    assert main(["train", "omniglot/protonet_5w1s", "data.dataset=folder", "data.train_split=train",
                 "data.val_split=val", "train.val_every=5", "train.steps=2", "tasks.ways=5", "model.hidden=8", "train.progress=false",
                 "train.tensorboard=false", "train.report=false", "--run-dir", str(tmp_path / "r"),
                 "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    msg = [x for x in err.splitlines() if x.startswith("metassl train: error")]
    assert len(msg) == 1 and f"the val split folder {root / 'val'} is missing" in msg[0]
    assert "set data.val_split=null" in msg[0] and "has train/" in msg[0]
    assert f"{root / 'train'}: skipped 2 files without an image extension (notes.txt, scan.raw)" in err
