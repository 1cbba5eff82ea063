"""Use it on your own images: predict from folders (CLI and API), export, report, bad input."""

import csv
import dataclasses
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
from metassl.registry import LEARNERS, TASK_SOURCES

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


@pytest.mark.parametrize("learner", sorted(n for n, s in LEARNERS.items() if not getattr(s.build, "regression_only",
                                                                                          False)))
def test_every_registered_learner_adapts_and_predicts(learner, tmp_path):
    """Each learner (present and future) trains two steps and labels images through the API."""
    from metassl.config import apply_overrides, resolve
    from metassl.engine.trainer import train

    def overrides(name):
        return [
            f"learner.name={name}", "data.dataset=digits", "data.train_split=train", "data.val_split=null",
            *(["model.backbone=vit", "model.dim=16", "model.depth=1", "model.heads=2", "model.patch_size=2",
               "model.image_size=8"] if name == "mae" else  # MAE masks the patches of a ViT
              ["model.backbone=conv4", "model.hidden=8", "model.depth=2", "model.track_running_stats=false"]),
            "tasks.ways=3", "tasks.shots=2",
            "tasks.queries=2", "train.steps=2", "train.progress=false", "train.tensorboard=false", "optim.name=adam",
            "train.report=false"] + ([] if TASK_SOURCES[LEARNERS[name].default_source].batch == "episodes"
                                    else ["tasks.batch_size=16"]) + small_heads(name)

    def small_heads(name):  # the papers' 8192-wide projectors (VICReg, Barlow Twins) take minutes to build and step
        keys = {f.name for f in dataclasses.fields(LEARNERS[name].config)}
        return [f"learner.{k}=32" for k in ("proj_hidden", "proj_dim") if k in keys]

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


# --------------------------------------------------------------------------------------------------------------
# transductive prediction: the query images (and an unlabeled pool) classified together


@pytest.fixture(scope="module")
def pool_folder(tmp_path_factory, mnist_run):
    """Unlabeled images: 8 more of each support digit (not among the queries) and 8 of a distractor digit."""
    _, ds = mnist_run
    split = load_dataset(ds, "test", SHARED_DATA if ds == "mnist" else None)
    root = tmp_path_factory.mktemp("pool")
    g = torch.Generator().manual_seed(1)
    for digit in DIGITS + ["0"]:
        k = split.class_names.index(digit)
        o, n = int(split.offsets[k]), int(split.counts[k])
        for j, i in enumerate((torch.randperm(n - 20, generator=g)[:8] + o + 20).tolist()):
            Image.fromarray(split.images[i, 0].numpy(), "L").save(root / f"u{digit}_{j}.png")
    (root / "junk.png").write_bytes(b"\x89PNG broken")
    return root


def _accuracy(rows):
    good = [r for r in rows if not r["error"]]
    return np.mean([r["predicted"] == truth(r["path"]) for r in good]), len(good)


@pytest.mark.parametrize("method", ["softkmeans", "ptmap"])
def test_cli_predict_transductive_keeps_the_csv_and_is_at_least_as_accurate(mnist_run, folders, pool_folder,
                                                                             method, tmp_path, capsys):
    """Soft k-means with a pool holding a distractor digit; PT-MAP on the (balanced) query images alone: its
    balanced Sinkhorn marginals do not fit a pool of unknown classes."""
    run, _ = mnist_run
    support, query = folders
    base = ["predict", str(run), "--support", str(support), "--query", str(query)]
    assert main(base + ["--out", str(tmp_path / "ind.csv")]) == 0
    pool = ["--unlabeled", str(pool_folder)] if method == "softkmeans" else []
    assert main(base + ["--out", str(tmp_path / "tr.csv"), "--transductive", method] + pool) == 0
    err = capsys.readouterr().err
    assert "classified together" in err
    if pool:
        assert "unlabeled pool: 32 images" in err and "1 unreadable" in err
    else:
        assert "assumes balanced query classes" in err
    ind = list(csv.DictReader((tmp_path / "ind.csv").open(encoding="utf-8")))
    tr = list(csv.DictReader((tmp_path / "tr.csv").open(encoding="utf-8")))
    assert list(tr[0]) == list(ind[0]) and [r["path"] for r in tr] == [r["path"] for r in ind]  # same columns, rows
    assert not any("pool" in r["path"] or Path(r["path"]).name.startswith("u") for r in tr)  # the pool is not output
    (acc_i, n_i), (acc_t, n_t) = _accuracy(ind), _accuracy(tr)
    assert n_i == n_t == 30 and acc_t >= acc_i, (acc_t, acc_i)
    assert [r for r in tr if r["error"]][0]["path"].endswith("broken.png")


def test_api_transductive_reads_no_query_order_and_uses_the_pool(mnist_run, folders, pool_folder):
    run, _ = mnist_run
    support, query = folders
    files = sorted(str(p) for p in query.rglob("*.png") if p.name != "broken.png")
    clf = FewShotClassifier.load(run, transductive="softkmeans").fit_folder(support)
    p = clf.predict_proba(files)
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0)).tolist()
    p_shuffled = clf.predict_proba([files[i] for i in order])
    assert np.allclose(p[order], p_shuffled, atol=1e-5)  # each image's answer, whatever the order
    inductive = FewShotClassifier.load(run).fit_folder(support).predict_proba(files)
    assert not np.allclose(p, inductive, atol=1e-3)  # the queries were used
    # the pool, streamed 5 images at a time, gives the same answers as in one chunk, and changes them
    small = FewShotClassifier.load(run, transductive="softkmeans").fit_folder(support)
    small.batch_size = 5
    whole = FewShotClassifier.load(run, transductive="softkmeans").fit_folder(support)
    a = small.add_unlabeled(pool_folder).predict_proba(files)
    b = whole.add_unlabeled(pool_folder).predict_proba(files)
    assert small.unlabeled_count == whole.unlabeled_count == 32 and small.unlabeled_skipped == 1
    assert np.allclose(a, b, atol=1e-5) and not np.allclose(a, p, atol=1e-4)


def test_transductive_predict_on_one_image_and_bad_flags(mnist_run, folders, tmp_path, capsys):
    run, _ = mnist_run
    support, query = folders
    one = sorted(p for p in query.rglob("*.png") if p.name != "broken.png")[0]
    assert main(["predict", str(run), "--support", str(support), "--query", str(one), "--transductive", "ptmap",
                 "--json"]) == 0
    cap = capsys.readouterr()
    (row,) = json.loads(cap.out)["predictions"]
    assert row["error"] is None and abs(sum(row["probabilities"].values()) - 1) < 1e-4
    assert "ran with unbalanced=true, center=false" in cap.err
    args = ["predict", str(run), "--support", str(support), "--query", str(query)]
    assert main(args + ["--unlabeled", str(tmp_path)]) == 2
    assert "read by transductive methods only" in capsys.readouterr().err
    assert main(args + ["--transductive", "ptmap", "--classifier", "logistic"]) == 2
    assert "replaces the classifier" in capsys.readouterr().err
    assert main(args + ["--transductive", "ptmapp"]) == 2
    assert "Did you mean ptmap" in capsys.readouterr().err
    assert main(args + ["--transductive", "ptmap", "--unlabeled", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
