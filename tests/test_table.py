"""The `table` data set: reading CSV / .npy / .npz (Parquet when pandas is there), one-hot and standardization fitted on
the training split only (checked by hand), class and row splits, bad input named by file, row and column, training
through the command (classification and regression) and `metassl predict` on CSV rows."""

import csv
import json

import numpy as np
import pytest
import torch

from metassl.cli.main import main
from metassl.config import ConfigError, load_config
from metassl.data.loaders.table import read_table
from metassl.data.registry import load_dataset

ROWS = [  # a, b, color, label: classes x and y train, z test
    (1.0, 10.0, "red", "x"), (2.0, 20.0, "blue", "x"), (3.0, 30.0, "red", "x"),
    (4.0, 50.0, "blue", "y"), (6.0, 60.0, "red", "y"), (8.0, 70.0, "blue", "y"),
    (10.0, 0.0, "green", "z"), (12.0, 5.0, "red", "z"), (14.0, 9.0, "blue", "z"),
]
OPTS = {"file": "t.csv", "label_column": "label", "categorical_columns": ["color"],
        "classes": {"train": ["x", "y"], "test": ["z"]}}


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_encoding_and_standardization_are_fitted_on_the_training_split_only(tmp_path):
    write_csv(tmp_path / "t.csv", ["a", "b", "color", "label"], ROWS)
    train = load_dataset("table", "train", tmp_path, options=OPTS)
    test = load_dataset("table", "test", tmp_path, options=OPTS)
    # by hand: the training rows are the first six; population mean and std of a and b over them
    a_tr, b_tr = [1, 2, 3, 4, 6, 8], [10, 20, 30, 50, 60, 70]
    ma, mb = sum(a_tr) / 6, sum(b_tr) / 6
    sa = (sum((v - ma) ** 2 for v in a_tr) / 6) ** 0.5
    sb = (sum((v - mb) ** 2 for v in b_tr) / 6) ** 0.5
    cats = ["blue", "red"]  # sorted categories of the training split (green is test-only)
    assert train.class_names == ["x", "y"] and test.class_names == ["z"]
    for split, rows in ((train, ROWS[:6]), (test, ROWS[6:])):
        for i, (a, b, color, _) in enumerate(rows):
            want = [(a - ma) / sa, (b - mb) / sb] + [1.0 if color == c else 0.0 for c in cats]
            assert torch.allclose(split.images[i], torch.tensor(want), atol=1e-5), (split.name, i)
    enc = train.preprocess.to_dict()["table"]
    assert enc["categorical"] == {"color": cats} and enc["features"] == ["a", "b", "color"]
    assert abs(enc["mean"]["a"] - ma) < 1e-12 and abs(enc["std"]["b"] - sb) < 1e-12
    assert test.preprocess.to_dict()["table"] == enc  # the test split carries the training split's encoding


def test_random_class_partition_is_seeded_and_disjoint(tmp_path):
    rows = [(float(i), f"c{i % 10}") for i in range(100)]
    write_csv(tmp_path / "t.csv", ["v", "label"], rows)
    opts = {"file": "t.csv", "label_column": "label", "split_seed": 3}
    parts = {s: set(load_dataset("table", s, tmp_path, options=opts).class_names) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert not (parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"])
    again = set(load_dataset("table", "train", tmp_path, options=opts).class_names)
    other = set(load_dataset("table", "train", tmp_path, options={**opts, "split_seed": 4}).class_names)
    assert again == parts["train"] and other != parts["train"]


@pytest.mark.parametrize("rows, opts, match", [
    (ROWS, {**OPTS, "label_column": "species"}, r"t\.csv: data\.options\.label_column names column 'species'.*"
                                                 r"columns are: a, b, color, label"),
    ([*ROWS[:4], (5.0, "lots", "red", "y"), *ROWS[5:]], OPTS, r"t\.csv: line 6, numeric column 'b': 'lots' is not a "
                                                                r"number.*categorical_columns"),
    (ROWS, {**OPTS, "categorical_columns": []}, r"line 2, numeric column 'color': 'red'"),
    ([(1.0, 2.0, "x")], {"file": "t.csv", "label_column": "label", "target_columns": ["b"]}, "exactly one of them"),
])
def test_bad_tables_are_named(rows, opts, match, tmp_path):
    header = ["a", "b", "color", "label"][: len(rows[0])] if len(rows[0]) == 4 else ["a", "b", "label"]
    write_csv(tmp_path / "t.csv", header, rows)
    with pytest.raises(ConfigError, match=match):
        load_dataset("table", "train", tmp_path, options=opts)


def test_regression_target_with_nan_names_the_row(tmp_path):
    write_csv(tmp_path / "r.csv", ["a", "y"], [(1, 2), (2, 3), (3, "nan"), (4, 5)])
    with pytest.raises(ConfigError, match=r"r\.csv: line 4, target column 'y' has no value"):
        load_dataset("table", "all", tmp_path, options={"file": "r.csv", "target_columns": ["y"]})


def test_too_few_rows_per_class_names_the_class_and_counts(tmp_path):
    from metassl.engine.trainer import train

    write_csv(tmp_path / "t.csv", ["a", "b", "color", "label"], ROWS)
    cfg = load_config("tabular/digits_protonet", [f"data.root={tmp_path}", "data.options.file=t.csv",
                                                  "data.options.label_column=label",
                                                  "data.options.categorical_columns=[color]",
                                                  "data.options.classes={train: [x, y], test: [z]}",
                                                  "tasks.ways=2", "tasks.shots=2", "tasks.queries=2",
                                                  "train.progress=false", "train.steps=1"])
    with pytest.raises(ConfigError, match=r"2 shots \+ 2 queries = 4 .* class 'x' has 3"):
        train(cfg, tmp_path / "run")


def test_npy_npz_and_parquet(tmp_path):
    a = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(tmp_path / "t.npy", a)
    t = read_table(tmp_path / "t.npy")
    assert list(t) == ["0", "1", "2"] and np.array_equal(t["1"], a[:, 1])
    x = np.random.default_rng(0).normal(size=(6, 2, 5))
    np.savez(tmp_path / "s.npz", x=x, y=np.array([0, 0, 0, 1, 1, 1]))
    # every class in train: the standardization (fitted on train) is then over all six rows
    s = load_dataset("table", "all", tmp_path, options={"file": "s.npz", "label_column": "y",
                                                        "classes": {"train": ["0", "1"]}})
    assert s.image_shape == (2, 5) and s.class_names == ["0", "1"]
    want = (x - x.reshape(6, -1).mean(0).reshape(2, 5)) / x.reshape(6, -1).std(0).reshape(2, 5)
    assert torch.allclose(s.images, torch.tensor(want).float(), atol=1e-5)
    try:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "t.parquet").write_bytes(b"PAR1")
        with pytest.raises(ConfigError, match="Parquet needs pandas and pyarrow"):
            read_table(tmp_path / "t.parquet")
    else:
        pandas.DataFrame({"a": [1.0, 2.0]}).to_parquet(tmp_path / "t.parquet")
        assert list(read_table(tmp_path / "t.parquet")["a"]) == [1.0, 2.0]


def test_group_column_draws_each_task_from_one_group(tmp_path):
    rows = [(float(i), float(i % 3) * 100 + i, f"g{i % 3}") for i in range(30)]
    write_csv(tmp_path / "r.csv", ["a", "y", "g"], rows)
    s = load_dataset("table", "all", tmp_path, options={"file": "r.csv", "target_columns": ["y"],
                                                        "group_column": "g", "standardize": False})
    b = s.sample(3, 2, 20, torch.Generator().manual_seed(0))
    groups = torch.cat([b.support_y, b.query_y], 1).squeeze(-1).div(100).floor()  # y // 100 is the group
    assert bool((groups == groups[:, :1]).all()) and len(set(groups[:, 0].tolist())) > 1
    x = torch.cat([b.support_x, b.query_x], 1).squeeze(-1)
    assert all(len(set(r.tolist())) == 5 for r in x)  # distinct rows within a task


def _csv_run(tmp_path, capsys, learner_args, name):
    rng = np.random.default_rng(0)
    rows = []
    for c in range(8):  # 8 classes of 12 rows: a Gaussian blob per class in 4-d, plus a categorical column
        centre = rng.normal(scale=3, size=4)
        rows += [(*np.round(centre + rng.normal(size=4), 4), ["u", "v"][i % 2], f"k{c}") for i in range(12)]
    write_csv(tmp_path / "blobs.csv", ["f1", "f2", "f3", "f4", "kind", "label"], rows)
    run = tmp_path / name
    args = ["train", "tabular/digits_protonet", f"data.root={tmp_path}", "data.options.file=blobs.csv",
            "data.options.label_column=label", "data.options.categorical_columns=[kind]",
            "data.options.classes={train: [k0, k1, k2, k3, k4], test: [k5, k6, k7]}", "tasks.ways=3",
            "tasks.shots=2", "tasks.queries=3", "eval.ways=3", "eval.shots=[2]", "eval.queries=3",
            "eval.episodes=10", "model.hidden=[16,8]", "train.steps=2", "train.progress=false",
            "train.tensorboard=false", "train.report=false", *learner_args, "--run-dir", str(run), "--eval"]
    assert main(args) == 0
    assert "table/test 3-way 2-shot" in capsys.readouterr().out
    return run, rows


@pytest.mark.parametrize("learner_args", [[], ["learner={name: anil, inner_steps: 2}", "model.norm=none",
                                                "tasks.tasks_per_batch=2"]])
def test_train_and_predict_on_csv_rows(learner_args, tmp_path, capsys):
    run, rows = _csv_run(tmp_path, capsys, learner_args, "run")
    support = [r for r in rows if r[-1] in ("k5", "k6", "k7")][::4]  # 3 rows per class
    write_csv(tmp_path / "s.csv", ["f1", "f2", "f3", "f4", "kind", "label"], support)
    query = [r[:-1] for r in rows if r[-1] in ("k5", "k6", "k7")][1::4]
    write_csv(tmp_path / "q.csv", ["f1", "f2", "f3", "f4", "kind"], query)
    assert main(["predict", str(run), "--support", str(tmp_path / "s.csv"), "--query", str(tmp_path / "q.csv"),
                 "--out", str(tmp_path / "p.csv")]) == 0
    out = list(csv.reader(open(tmp_path / "p.csv")))
    assert out[0] == ["row", "predicted", "probability", "p(k5)", "p(k6)", "p(k7)"]
    assert len(out) == 1 + len(query) and {r[1] for r in out[1:]} <= {"k5", "k6", "k7"}
    truth = [r[-1] for r in rows if r[-1] in ("k5", "k6", "k7")][1::4]
    assert sum(p[1] == t for p, t in zip(out[1:], truth)) > len(truth) / 3  # better than chance: blobs separate
    for r in out[1:]:
        assert abs(sum(float(v) for v in r[3:]) - 1) < 1e-4
    # the query file lacks a feature the model was trained on: named
    write_csv(tmp_path / "bad.csv", ["f1", "f2", "f3", "kind"], [q[:3] + q[4:] for q in query])
    capsys.readouterr()
    assert main(["predict", str(run), "--support", str(tmp_path / "s.csv"), "--query", str(tmp_path / "bad.csv")]) != 0
    assert "bad.csv: lacks the feature column(s) ['f4'] the model was trained on" in capsys.readouterr().err


def test_regression_table_trains_and_predicts_in_original_units(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.uniform(-2, 2, size=(200, 3))
    y = 50 + 10 * x[:, 0] - 5 * x[:, 1]
    write_csv(tmp_path / "r.csv", ["a", "b", "c", "y"], [(*np.round(r, 5), round(v, 5)) for r, v in zip(x, y)])
    run = tmp_path / "run"
    assert main(["train", "tabular/diabetes_maml", f"data.root={tmp_path}", "data.options.file=r.csv",
                 "data.options.target_columns=[y]", "model.hidden=[8,8]", "train.steps=2", "train.val_every=2",
                 "train.val_episodes=3", "eval.episodes=5", "train.progress=false", "train.tensorboard=false",
                 "train.report=false", "--run-dir", str(run), "--eval"]) == 0
    assert "table/test 10-shot regression" in capsys.readouterr().out
    write_csv(tmp_path / "s.csv", ["a", "b", "c", "y"], [(*r, v) for r, v in zip(x[:10], y[:10])])
    write_csv(tmp_path / "q.csv", ["a", "b", "c"], x[10:15].tolist())
    assert main(["predict", str(run), "--support", str(tmp_path / "s.csv"), "--query", str(tmp_path / "q.csv"),
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["task_type"] == "regression" and res["columns"] == ["y"] and len(res["predictions"]) == 5
    # predictions are in the target's units (standardized internally): around its mean of ~50, not around 0
    assert all(20 < p[0] < 80 for p in res["predictions"])


def test_sklearn_tables_load_offline():
    opts = {"file": "sklearn:wine", "label_column": "target"}
    s = load_dataset("table", "train", options=opts)
    assert s.image_shape == (13,) and s.num_classes == 2  # 3 classes at 60/20/20: 2 train, 1 val, 0 test
    with pytest.raises(ConfigError, match="split 'test' has no classes"):
        load_dataset("table", "test", options=opts)
    with pytest.raises(ConfigError, match="sklearn:nope.*sklearn:digits"):
        load_dataset("table", "test", options={"file": "sklearn:nope", "label_column": "target"})


def test_digits_presets_evaluate_five_way_on_five_unseen_classes():
    """tabular/digits_*: classes 0-4 train, 5-9 test, so the presets' 5-way episodes draw from five unseen digits."""
    for preset in ("tabular/digits_protonet", "tabular/digits_anil"):
        cfg = load_config(preset)
        train = load_dataset("table", cfg.data.train_split, options=dict(cfg.data.options))
        test = load_dataset("table", cfg.data.test_split, options=dict(cfg.data.options))
        assert list(train.class_names) == ["0", "1", "2", "3", "4"] and list(test.class_names) == ["5", "6", "7", "8", "9"]
        assert cfg.tasks.ways == cfg.eval.ways == 5 and tuple(train.images.shape[1:]) == (64,)
