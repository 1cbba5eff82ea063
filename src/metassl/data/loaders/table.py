"""Tables as few-shot data sets: rows of a CSV, Parquet or NumPy file (or a table scikit-learn ships), with a label
column (classification: episodes over the classes, like images) or target columns (regression: a task is K + Q
rows of one group, `data.regression.RowSplit`).

Options (`data.options.*`, checked by `TableOptions`):
- `file`: one file holding every split (relative to the data root, or absolute), or `sklearn:NAME` for a table
  bundled with scikit-learn (digits, iris, wine, breast_cancer, diabetes; label column `target`); or `files:
  {train: a.csv, val: b.csv, test: c.csv}`, one file per split.
- `label_column` (classification) or `target_columns` (regression); `feature_columns` (default: every other
  column except `drop_columns` and `group_column`), `categorical_columns` (one-hot; the categories are those of the
  training split, recorded; a category seen only later encodes as all zeros). Every other feature must be numeric.
- splits from one file: the classes (classification), the groups (`group_column`), or else the rows (regression)
  are partitioned at random by `split_seed` in the proportions `split_fractions` (train / val / test), or the
  classes of each split are given (`classes: {train: [...], test: [...]}`); `all` is every row.
- `standardize` (default true): numeric features are standardized with the mean and standard deviation of the
  training split only (also when val / test are loaded), recorded with the one-hot categories in the checkpoint
  (`TablePreprocess`), so `metassl predict RUN --support S.csv --query Q.csv` encodes new rows the same way;
  `standardize_targets` does the same for regression targets (predictions are returned in the original units).
- `shape`: each row's encoded features reshaped, e.g. [1, 64] for the `conv1d` backbone (default [D]).

`.npy`: a 2-D numeric array, columns named "0", "1", ...; `.npz`: arrays `x` [M, ...] (each row's features in
any shape, e.g. signals [M, C, L]) and `y` [M] (labels, or targets [M] / [M, P] with `target_columns: [y]`).
CSV files need a header row; values are read as text, numbers parsed per column (bad values are named by row and
column). Parquet needs pandas and pyarrow (not dependencies of metassl).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import ConfigError, build
from ..episodic import ClassSplit, Preprocess
from ..regression import RowSplit
from ..registry import DatasetSpec, register_dataset
from ..root import DatasetNotFoundError

__all__ = ["TableOptions", "TablePreprocess", "read_table", "encode_rows", "encode_targets", "load_table",
           "natural_key", "SKLEARN_TABLES"]

SPLITS = ("train", "val", "test", "all")
SKLEARN_TABLES = ("digits", "iris", "wine", "breast_cancer", "diabetes")


@dataclass
class TableOptions:
    file: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    label_column: str | None = None
    target_columns: list[str] = field(default_factory=list)
    feature_columns: list[str] | None = None
    categorical_columns: list[str] = field(default_factory=list)
    drop_columns: list[str] = field(default_factory=list)
    group_column: str | None = None
    classes: dict[str, list[str]] = field(default_factory=dict)
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.6, "val": 0.2, "test": 0.2})
    split_seed: int = 0
    standardize: bool = True
    standardize_targets: bool = False
    shape: list[int] | None = None

    def validate(self):
        if bool(self.file) == bool(self.files):
            raise ConfigError("data.options: give the table as data.options.file=PATH (every split in one file, or "
                              "sklearn:digits etc.) or as data.options.files={train: a.csv, test: b.csv}, not both "
                              f"and not neither (got file={self.file!r}, files={self.files})")
        if bool(self.label_column) == bool(self.target_columns):
            raise ConfigError("data.options: give data.options.label_column=NAME (classification) or "
                              "data.options.target_columns=[NAME, ...] (regression), exactly one of them (got "
                              f"label_column={self.label_column!r}, target_columns={self.target_columns})")
        bad = {k: v for k, v in self.split_fractions.items() if k not in ("train", "val", "test") or not 0 <= v <= 1}
        if bad or not 0.999 <= sum(self.split_fractions.values()) <= 1.001:
            raise ConfigError(f"data.options.split_fractions must give train / val / test fractions in [0, 1] that "
                              f"sum to 1, got {self.split_fractions}")
        unknown = sorted(set(self.classes) - {"train", "val", "test"}) + sorted(set(self.files) - set(SPLITS))
        if unknown:
            raise ConfigError(f"data.options.classes / data.options.files: unknown split(s) {unknown}; use train, "
                              f"val, test")
        if self.shape is not None and (not self.shape or any(int(s) < 1 for s in self.shape)):
            raise ConfigError(f"data.options.shape must be a list of positive sizes, e.g. [1, 64], got {self.shape}")

    @property
    def regression(self) -> bool:
        return bool(self.target_columns)


@dataclass(frozen=True)
class TablePreprocess(Preprocess):
    """Rows are encoded when loaded (inputs are floats, so the call is the identity); `table` records the encoding
    (columns, categories, means and standard deviations of the training split) for prediction on new rows."""

    table: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "table": self.table}


# -- reading ---------------------------------------------------------------------------------------------------

Table = dict[str, np.ndarray]  # column name -> values [M] (object: text from CSV; float: numeric sources)


def _resolve(root: Path, name: str) -> Path:
    p = Path(name).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.is_file():
        raise DatasetNotFoundError(f"data set 'table': file {p} not found (data.options.file / files are read "
                                   f"relative to the data root {root} unless absolute)")
    return p


def _sklearn(name: str) -> Table:
    import sklearn.datasets as ds

    if name not in SKLEARN_TABLES:
        raise ConfigError(f"data.options.file=sklearn:{name}: not a table scikit-learn bundles; use one of "
                          f"{', '.join('sklearn:' + n for n in SKLEARN_TABLES)}")
    bunch = ds.load_diabetes(scaled=False) if name == "diabetes" else getattr(ds, f"load_{name}")()
    data = np.asarray(bunch.data, dtype=np.float64)
    names = [str(n) for n in getattr(bunch, "feature_names", None) or [f"x{i}" for i in range(data.shape[1])]]
    table = {n: data[:, i] for i, n in enumerate(names)}
    target = np.asarray(bunch.target)
    table["target"] = target.astype(np.float64) if name == "diabetes" else target.astype(np.int64).astype(str)
    return table


def read_table(path: str | Path) -> Table:
    """The columns of a CSV / TSV, Parquet, .npy or .npz file (or `sklearn:NAME`)."""
    s = str(path)
    if s.startswith("sklearn:"):
        return _sklearn(s.split(":", 1)[1])
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f, delimiter="\t" if suffix == ".tsv" else ","))
        if not rows or not rows[0]:
            raise ConfigError(f"{path}: empty; a table needs a header row naming its columns, then one row per example")
        header = [h.strip() for h in rows[0]]
        body = rows[1:]
        for i, r in enumerate(body):
            if len(r) != len(header):
                raise ConfigError(f"{path}: line {i + 2} has {len(r)} values but the header has {len(header)} "
                                  f"columns ({', '.join(header[:8])}{'...' if len(header) > 8 else ''})")
        return {h: np.array([r[j] for r in body], dtype=object) for j, h in enumerate(header)}
    if suffix == ".parquet":
        try:
            import pandas as pd  # noqa: F401
            frame = pd.read_parquet(path)
        except ImportError as e:
            raise ConfigError(f"{path}: reading Parquet needs pandas and pyarrow (pip install pandas pyarrow), "
                              f"which are not installed; or save the table as CSV") from e
        return {str(c): frame[c].to_numpy() for c in frame.columns}
    if suffix == ".npy":
        a = np.load(path, allow_pickle=False)
        if a.ndim != 2:
            raise ConfigError(f"{path}: a .npy table must be 2-D [rows, columns], got shape {a.shape}; for other "
                              f"shapes use .npz with arrays x and y")
        return {str(j): a[:, j] for j in range(a.shape[1])}
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise ConfigError(f"{path}: an .npz table needs arrays 'x' (features, [rows, ...]) and 'y' (labels or "
                                  f"targets, [rows]); it has {', '.join(z.files)}")
            x, y = np.asarray(z["x"]), np.asarray(z["y"])
        if len(x) != len(y):
            raise ConfigError(f"{path}: x has {len(x)} rows but y has {len(y)}")
        return {"__x__": x, "y": y if y.dtype.kind == "f" else y.astype(str)}
    raise ConfigError(f"{path}: unknown table format {suffix!r}; use .csv, .tsv, .parquet, .npy or .npz")


def _where(path: Any, i: int) -> str:
    """How a row is named in errors: the line of a CSV (header = line 1), else the row index."""
    s = str(path)
    return f"line {i + 2}" if s.lower().endswith((".csv", ".tsv", ".txt")) else f"row {i}"


def _numbers(values: np.ndarray, column: str, path: Any, what: str = "numeric column") -> np.ndarray:
    if values.dtype.kind in "fiub":
        out = values.astype(np.float64)
    else:
        out = np.empty(len(values), dtype=np.float64)
        for i, v in enumerate(values):
            try:
                out[i] = float(str(v).strip()) if str(v).strip() != "" else math.nan
            except ValueError:
                hint = (" (list the column in data.options.categorical_columns if it holds categories)"
                        if what == "numeric column" else "")
                raise ConfigError(f"{path}: {_where(path, i)}, {what} {column!r}: {str(v)!r} is not a "
                                  f"number{hint}") from None
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise ConfigError(f"{path}: {_where(path, int(bad[0]))}, {what} {column!r} has no value (empty, NaN or "
                          f"inf; {bad.size} such rows); fill or drop those rows")
    return out


def _check_columns(table: Table, opts: TableOptions, path: Any) -> list[str]:
    """The feature columns, after checking that every named column exists."""
    have = [c for c in table if c != "__x__"]
    named = ([("label_column", opts.label_column)] if opts.label_column else []) + \
        [("target_columns", c) for c in opts.target_columns] + \
        ([("group_column", opts.group_column)] if opts.group_column else []) + \
        [("categorical_columns", c) for c in opts.categorical_columns] + \
        [("feature_columns", c) for c in (opts.feature_columns or [])] + [("drop_columns", c) for c in opts.drop_columns]
    for key, c in named:
        if c not in table:
            raise ConfigError(f"{path}: data.options.{key} names column {c!r}, which the file does not have; its "
                              f"columns are: {', '.join(have[:30])}{'...' if len(have) > 30 else ''}")
    if "__x__" in table:
        return ["__x__"]
    skip = {opts.label_column, opts.group_column, *opts.target_columns, *opts.drop_columns}
    feats = list(opts.feature_columns) if opts.feature_columns is not None else [c for c in have if c not in skip]
    if not feats:
        raise ConfigError(f"{path}: no feature columns left (columns {have}); check data.options.feature_columns")
    return feats


# -- encoding --------------------------------------------------------------------------------------------------


def fit_encoding(table: Table, opts: TableOptions, path: Any) -> dict:
    """The encoding of feature columns from the training rows: categories of the categorical columns, mean and
    standard deviation of the numeric ones (population std; 1 where a column is constant)."""
    feats = _check_columns(table, opts, path)
    enc: dict[str, Any] = {"features": feats, "categorical": {}, "mean": {}, "std": {}, "standardize": opts.standardize,
                           "label_column": opts.label_column, "target_columns": list(opts.target_columns),
                           "shape": None if opts.shape is None else [int(s) for s in opts.shape]}
    for c in feats:
        if c in opts.categorical_columns:
            enc["categorical"][c] = sorted({str(v).strip() for v in table[c]})
        elif c == "__x__":
            x = np.asarray(table[c], dtype=np.float64).reshape(len(table[c]), -1)
            enc["mean"][c] = x.mean(0).tolist() if opts.standardize else None
            sd = x.std(0)
            enc["std"][c] = np.where(sd > 0, sd, 1.0).tolist() if opts.standardize else None
            enc["x_shape"] = list(np.asarray(table[c]).shape[1:])
        else:
            v = _numbers(table[c], c, path)
            sd = float(v.std())
            enc["mean"][c], enc["std"][c] = float(v.mean()), (sd if sd > 0 else 1.0)
    if opts.regression and opts.standardize_targets:
        ys = {c: _numbers(table[c], c, path, "target column") for c in opts.target_columns}
        enc["target_mean"] = {c: float(v.mean()) for c, v in ys.items()}
        enc["target_std"] = {c: (float(v.std()) or 1.0) for c, v in ys.items()}
    return enc


def encode_rows(table: Table, enc: dict, path: Any) -> torch.Tensor:
    """Rows of `table` as float features [M, *shape] under a recorded encoding (also for rows to predict)."""
    missing = [c for c in enc["features"] if c not in table]
    if missing:
        have = [c for c in table if c != "__x__"]
        raise ConfigError(f"{path}: lacks the feature column(s) {missing} the model was trained on; its columns "
                          f"are: {', '.join(have[:30])}")
    parts = []
    for c in enc["features"]:
        if c in enc["categorical"]:
            cats = enc["categorical"][c]
            index = {k: i for i, k in enumerate(cats)}
            onehot = np.zeros((len(table[c]), len(cats)))
            for i, v in enumerate(table[c]):
                j = index.get(str(v).strip())
                if j is not None:  # a category the training split did not have: all zeros
                    onehot[i, j] = 1.0
            parts.append(onehot)
        elif c == "__x__":
            x = np.asarray(table[c], dtype=np.float64)
            if list(x.shape[1:]) != enc["x_shape"]:
                raise ConfigError(f"{path}: x rows have shape {list(x.shape[1:])}, the model's {enc['x_shape']}")
            x = x.reshape(len(x), -1)
            if not np.isfinite(x).all():
                raise ConfigError(f"{path}: row {int(np.flatnonzero(~np.isfinite(x).all(1))[0])} of x has NaN or inf")
            if enc["mean"][c] is not None:
                x = (x - np.asarray(enc["mean"][c])) / np.asarray(enc["std"][c])
            parts.append(x)
        else:
            v = _numbers(table[c], c, path)
            if enc["standardize"]:
                v = (v - enc["mean"][c]) / enc["std"][c]
            parts.append(v[:, None])
    x = torch.from_numpy(np.concatenate(parts, 1)).float()
    shape = enc.get("shape") or (enc.get("x_shape") if enc["features"] == ["__x__"] else None)
    if shape:
        if math.prod(shape) != x.shape[1]:
            raise ConfigError(f"data.options.shape={shape} holds {math.prod(shape)} values but a row encodes to "
                              f"{x.shape[1]} features")
        x = x.reshape(len(x), *shape)
    return x


def encode_targets(table: Table, enc: dict, path: Any) -> torch.Tensor:
    """Regression targets [M, P] (standardized when the encoding says so); a missing value names its row."""
    cols = []
    for c in enc["target_columns"]:
        if c not in table:
            raise ConfigError(f"{path}: has no target column {c!r}; its columns are: {', '.join(list(table)[:30])}")
        v = np.asarray(table[c])
        if v.ndim == 1:
            v = _numbers(v, c, path, "target column")
        else:  # an .npz `y` of several values per row
            v = v.astype(np.float64).reshape(len(v), -1)
            bad = np.flatnonzero(~np.isfinite(v).all(1))
            if bad.size:
                raise ConfigError(f"{path}: row {int(bad[0])}, target {c!r} has NaN or inf ({bad.size} such rows)")
        if "target_mean" in enc:
            v = (v - enc["target_mean"][c]) / enc["target_std"][c]
        cols.append(v.reshape(len(v), -1))
    return torch.from_numpy(np.concatenate(cols, 1)).float()


# -- splits ----------------------------------------------------------------------------------------------------


def _take(table: Table, rows: np.ndarray) -> Table:
    return {k: v[rows] for k, v in table.items()}


def _partition(names: list[str], opts: TableOptions) -> dict[str, set[str]]:
    """Classes / groups of each split: given, or a random partition (seed split_seed) in split_fractions."""
    if opts.classes:
        out = {k: {str(c) for c in v} for k, v in opts.classes.items()}
        unknown = sorted(set().union(*out.values()) - set(names))
        if unknown:
            raise ConfigError(f"data.options.classes names {unknown[:5]}, which the label column does not hold; "
                              f"its classes are {names[:20]}")
        return out
    order = np.random.default_rng(opts.split_seed).permutation(len(names))
    f = opts.split_fractions
    n_train = round(f.get("train", 0) * len(names))
    n_val = round(f.get("val", 0) * len(names))
    cut = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {k: {names[i] for i in v} for k, v in cut.items()}


def _split_rows(table: Table, opts: TableOptions, split: str, path: Any) -> np.ndarray:
    """Row indices of `split` in a table holding every split."""
    m = len(next(iter(table.values())))
    if split == "all":
        return np.arange(m)
    key = opts.label_column or opts.group_column
    if key is None:  # regression without groups: the rows themselves are partitioned
        order = np.random.default_rng(opts.split_seed).permutation(m)
        f = opts.split_fractions
        n_train, n_val = round(f.get("train", 0) * m), round(f.get("val", 0) * m)
        rows = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
        return np.sort(rows[split])
    values = np.array([str(v).strip() for v in table[key]], dtype=object)
    names = sorted(set(values.tolist()), key=natural_key)
    part = _partition(names, opts)
    keep = part.get(split, set())
    if not keep:
        raise ConfigError(f"{path}: split {split!r} has no classes (data.options.classes / split_fractions "
                          f"{opts.classes or opts.split_fractions}); give it some or choose another split")
    return np.flatnonzero(np.isin(values, list(keep)))


def natural_key(s: str) -> tuple:
    """Sort key: numbers by value ("2" < "10"), then text."""
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def load_table(root: Path, split: str, options: dict) -> ClassSplit | RowSplit:
    opts: TableOptions = build(TableOptions, options, "data.options")
    if opts.files:
        if split not in opts.files or "train" not in opts.files:
            raise ConfigError(f"data.options.files has no file for split {split!r} (or none for train, whose rows "
                              f"fit the standardization): it gives {sorted(opts.files)}")
        train_path, path = _resolve(root, opts.files["train"]), _resolve(root, opts.files[split])
        train_table, table = read_table(train_path), read_table(path)
        rows = np.arange(len(next(iter(table.values()))))
        train_rows = np.arange(len(next(iter(train_table.values()))))
    else:
        path = opts.file if opts.file.startswith("sklearn:") else _resolve(root, opts.file)
        train_path = path
        table = train_table = read_table(path)
        _check_columns(table, opts, path)
        rows, train_rows = _split_rows(table, opts, split, path), _split_rows(table, opts, "train", path)
    enc = fit_encoding(_take(train_table, train_rows), opts, train_path)  # the training split's statistics only
    part = _take(table, rows)
    x = encode_rows(part, enc, path)
    pre = TablePreprocess(table=enc)
    name = f"table/{split}"
    if opts.regression:
        y = encode_targets(part, enc, path)
        if opts.group_column:
            g = np.array([str(v).strip() for v in part[opts.group_column]], dtype=object)
            groups = sorted(set(g.tolist()), key=natural_key)
            index = {k: i for i, k in enumerate(groups)}
            gid = torch.tensor([index[v] for v in g])
        else:
            groups, gid = ["all"], torch.zeros(len(x), dtype=torch.int64)
        order = torch.argsort(gid, stable=True)
        counts = torch.bincount(gid, minlength=len(groups))
        return RowSplit(x[order], y[order], counts, groups, name, pre)
    labels_text = np.array([str(v).strip() for v in part[opts.label_column]], dtype=object)
    for i, v in enumerate(labels_text):
        if v == "":
            raise ConfigError(f"{path}: {_where(path, int(rows[i]))}, label column {opts.label_column!r} is empty")
    classes = sorted(set(labels_text.tolist()), key=natural_key)
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[v] for v in labels_text], dtype=torch.int64)
    return ClassSplit.from_labels(x, labels, classes, name=name, preprocess=pre)


def load(root: Path, split: str, size, options: dict):
    return load_table(root, split, options)


def locate(root: Path) -> Path:
    return root


register_dataset(DatasetSpec(
    name="table", splits=SPLITS, image_size=1, channels=1, inputs="vectors", generic=True,
    description="rows of a CSV / Parquet / .npy / .npz file or a scikit-learn table (data.options.file, "
                "label_column or target_columns); classification episodes or regression tasks",
    load=load, locate=locate))
