"""Use it on your own images: predict from folders (CLI and API), export, report, bad input."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED_DATA
from metassl.api import FewShotClassifier, SupportSetError
from metassl.cli.main import main
from metassl.data import load_dataset
from metassl.registry import LEARNERS

DIGITS = ["3", "5", "7"]


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """A tiny ProtoNet trained for a few seconds on MNIST train (digits data if MNIST is absent)."""
    run = tmp_path_factory.mktemp("mnist_run") / "run"
    ds = "mnist" if (SHARED_DATA / "mnist").exists() else "digits"
    args = ["train", "omniglot/protonet_5w1s", f"data.dataset={ds}", "data.train_split=train", "data.val_split=null",
            "data.test_split=test", "model.hidden=16", "tasks.ways=5", "tasks.shots=5", "tasks.queries=5",
            "train.steps=80", "train.progress=false", "train.tensorboard=false", "optim.lr=0.003", "train.report=false",
            "eval.ways=3", "eval.shots=[1,5]", "eval.episodes=30", "--run-dir", str(run)]
    if ds == "digits":
        args += ["model.depth=3"]
    assert main(args + (["--data-root", str(SHARED_DATA)] if ds == "mnist" else [])) == 0
    return run, ds


@pytest.fixture(scope="module")
def folders(tmp_path_factory, mnist_run):
    """support/<class>/ with 1-4 images per class in mixed modes and sizes; query/ with truth in the file name."""
    _, ds = mnist_run
    split = load_dataset(ds, "test", SHARED_DATA if ds == "mnist" else None)
    root = tmp_path_factory.mktemp("images")
    support, query = root / "support", root / "query" / "nested"
    g = torch.Generator().manual_seed(0)
    for c, digit in enumerate(DIGITS):
        k = split.class_names.index(digit)
        o, n = int(split.offsets[k]), int(split.counts[k])
        idx = (torch.randperm(n, generator=g)[:14] + o).tolist()
        name = f"chiffre {digit} é" if c == 0 else digit  # non-ASCII class name
        (support / name).mkdir(parents=True)
        for j, i in enumerate(idx[:[1, 3, 4][c]]):  # unequal counts, one class with a single image
            arr = split.images[i, 0].numpy()
            img = Image.fromarray(arr, "L")
            if j == 1:
                img = img.convert("RGB").resize((40, 40))  # RGB, another size
            if j == 2:
                img = img.convert("RGBA")
            img.save(support / name / f"ex{j}.png")
        query.mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(idx[4:]):
            Image.fromarray(split.images[i, 0].numpy(), "L").save(query / f"{name}__{j}_ñ.png")
    (query / "broken.png").write_bytes(b"not an image at all")
    return support, root / "query"


def truth(path: str) -> str:
    return Path(path).name.split("__")[0]


def test_cli_predict_csv_above_chance_with_error_rows(mnist_run, folders, tmp_path, capsys):
    run, _ = mnist_run
    support, query = folders
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), "--support", str(support), "--query", str(query), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 31  # 30 images + the broken file
    broken = [r for r in rows if r["path"].endswith("broken.png")]
    assert len(broken) == 1 and "cannot read image" in broken[0]["error"] and broken[0]["predicted"] == ""
    good = [r for r in rows if not r["error"]]
    classes = sorted(["chiffre 3 é", "5", "7"])
    for r in good:
        probs = [float(r[f"p({c})"]) for c in classes]
        assert abs(sum(probs) - 1) < 1e-4 and float(r["probability"]) == pytest.approx(max(probs), abs=1e-6)
    acc = np.mean([r["predicted"] == truth(r["path"]) for r in good])
    assert acc > 0.6, acc  # chance is 1/3
    # an existing output is not overwritten without --force
    capsys.readouterr()
    assert main(["predict", str(run), "--support", str(support), "--query", str(query), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["predict", str(run), "--support", str(support), "--query", str(query), "--out", str(out),
                 "--force", "--classifier", "logistic"]) == 0


def test_api_agrees_with_cli(mnist_run, folders, capsys):
    run, _ = mnist_run
    support, query = folders
    assert main(["predict", str(run), "--support", str(support), "--query", str(query), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    clf = FewShotClassifier.load(run).fit_folder(support)
    files = sorted(str(p) for p in query.rglob("*.png") if p.name != "broken.png")
    api = dict(zip(files, clf.predict(files)))
    assert {p["path"]: p["label"] for p in cli["predictions"] if p["error"] is None} == api
    # images given as arrays and tensors adapt the same way as paths
    paths = [p for p in support.rglob("*.png")]
    labels = [p.parent.name for p in paths]
    arrays = [np.asarray(Image.open(p)) for p in paths]
    p1 = FewShotClassifier.load(run).fit(paths, labels).predict_proba(files[:5])
    p2 = FewShotClassifier.load(run).fit(arrays, labels).predict_proba([torch.from_numpy(np.asarray(
        Image.open(f))) for f in files[:5]])
    assert np.allclose(p1, p2, atol=1e-5)


def test_bad_support_sets(mnist_run, tmp_path):
    run, _ = mnist_run
    clf = FewShotClassifier.load(run)
    (tmp_path / "s" / "a").mkdir(parents=True)
    (tmp_path / "s" / "b").mkdir()
    Image.new("L", (28, 28)).save(tmp_path / "s" / "a" / "x.png")
    with pytest.raises(SupportSetError, match=r"class folder .*b holds no images"):
        clf.fit_folder(tmp_path / "s")
    with pytest.raises(SupportSetError, match="one class"):
        clf.fit([np.zeros((28, 28), np.uint8)] * 2, ["a", "a"])
    with pytest.raises(SupportSetError, match="no class sub-folders"):
        clf.fit_folder(tmp_path / "s" / "a")


def test_checkpoint_of_newer_format_is_a_clear_error(mnist_run, tmp_path, capsys):
    import shutil

    run, _ = mnist_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    for state in copy.glob("checkpoints/*/state.json"):
        d = json.loads(state.read_text())
        d["format_version"] = 99
        state.write_text(json.dumps(d))
    assert main(["predict", str(copy), "--support", str(tmp_path), "--query", str(tmp_path)]) == 2
    assert "newer metassl" in capsys.readouterr().err


def test_export_onnx_and_torchscript_match_pytorch(mnist_run, tmp_path):
    import onnxruntime as ort

    from metassl.engine.build import load_model

    run, _ = mnist_run
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "e.onnx")]) == 0
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "e.pt")]) == 0
    meta = json.loads((tmp_path / "e.onnx.json").read_text())
    assert meta["input"]["shape"][1:] == [1, 28, 28] or meta["input"]["shape"][1:] == [1, 8, 8]
    m, _ = load_model(run)
    x = torch.rand(7, *m.image_shape)
    with torch.no_grad():
        ref = m.learner.embed(m.params, m.buffers, m.preprocess(x)).numpy()
        ts = torch.jit.load(str(tmp_path / "e.pt"))(x).numpy()
    onnx_out = ort.InferenceSession(str(tmp_path / "e.onnx")).run(None, {"images": x.numpy()})[0]
    assert np.abs(ts - ref).max() < 1e-4
    assert np.abs(onnx_out - ref).max() < 1e-4


def test_report_page_and_valid_images(mnist_run):
    run, ds = mnist_run
    assert main(["report", str(run), "--episodes", "20"] + (["--data-root", str(SHARED_DATA)] if ds == "mnist"
                                                           else [])) == 0
    page = (run / "report" / "report.html").read_text()
    for name in ("learning_curves.png", "accuracy_vs_shots.png", "confusion.png", "tsne.png"):
        assert f'src="{name}"' in page
        with Image.open(run / "report" / name) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 200
    assert "± " in page


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_every_registered_learner_adapts_and_predicts(learner, tmp_path):
    """Each learner (present and future) trains two steps and labels images through the API."""
    from metassl.config import apply_overrides, resolve
    from metassl.engine.trainer import train

    def overrides(name):
        return [
            f"learner.name={name}", "data.dataset=digits", "data.train_split=train", "data.val_split=null",
            "model.backbone=conv4", "model.hidden=8", "model.depth=2", "model.track_running_stats=false",
            "tasks.ways=3", "tasks.shots=2",
            "tasks.queries=2", "train.steps=2", "train.progress=false", "train.tensorboard=false", "optim.name=adam",
            "train.report=false"] + ([] if LEARNERS[name].default_source == "labeled" else ["tasks.batch_size=16"])

    spec, start = LEARNERS[learner], []
    if spec.needs_init_from:  # e.g. Meta-Baseline: first two steps of a learner whose run it starts from
        train(resolve(apply_overrides({}, overrides((spec.init_from_learners or ("protonet",))[0]))), tmp_path / "init")
        start = [f"init_from={tmp_path / 'init'}"]
    cfg = resolve(apply_overrides({}, overrides(learner) + start))
    train(cfg, tmp_path / "run")
    clf = FewShotClassifier.load(tmp_path / "run")
    split = load_dataset("digits", "test")
    xs = [split.images[int(split.offsets[c]) + j, 0].numpy() for c in range(3) for j in range(3)]
    ys = [c for c in range(3) for _ in range(3)]
    clf.fit(xs[::3] + xs[1::3], ys[::3] + ys[1::3])
    p = clf.predict_proba(xs[2::3])
    assert p.shape == (3, 3) and np.allclose(p.sum(1), 1, atol=1e-4)
