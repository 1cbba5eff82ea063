"""Convert time-series classification files in the `.ts` format (sktime / aeon, the UCR and UEA archives) into one
`.npz` that the `table` data set reads: `x` [M, C, L] float32 (C dimensions of length L) and `y` [M] class labels.

    python scripts/ts_to_npz.py ACSF1_TRAIN.ts ACSF1_TEST.ts --out acsf1.npz

Several files are concatenated (the archive's own train/test division is not kept: few-shot splits the classes,
with `data.options.classes` or `split_fractions`). Only equal-length series without missing values are accepted.
`--znorm` z-normalizes each series (per row and dimension), as the UCR archive does for most of its sets.
Nothing is downloaded: the files come from wherever you have them (e.g. the data folder of the aeon wheel).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def read_ts(path: Path) -> tuple[list[np.ndarray], list[str]]:
    xs, ys, data = [], [], False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not data:
            if line.lower().startswith("@data"):
                data = True
            elif line.lower().startswith("@equallength") and line.split()[-1].lower() == "false":
                sys.exit(f"{path}: series of unequal length (@equalLength false); not supported")
            continue
        *dims, label = line.split(":")
        try:
            x = np.array([[float(v) for v in d.split(",")] for d in dims], dtype=np.float32)
        except ValueError as e:
            sys.exit(f"{path}:{n}: not a number ({e}); missing values ('?') are not supported")
        xs.append(x)
        ys.append(label.strip())
    if not data:
        sys.exit(f"{path}: no @data line; is this a .ts file?")
    return xs, ys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--znorm", action="store_true", help="z-normalize each series (per row and dimension)")
    a = p.parse_args(argv)
    xs, ys = [], []
    for f in a.files:
        x, y = read_ts(f)
        xs += x
        ys += y
    shapes = {x.shape for x in xs}
    if len(shapes) != 1:
        sys.exit(f"series of different shapes {sorted(shapes)[:5]}; only equal-length series are supported")
    x = np.stack(xs)
    if a.znorm:
        x = (x - x.mean(-1, keepdims=True)) / np.maximum(x.std(-1, keepdims=True), 1e-8)
    y = np.array(ys)
    np.savez(a.out, x=x, y=y)
    classes, counts = np.unique(y, return_counts=True)
    print(f"{a.out}: x {list(x.shape)}, {len(classes)} classes, "
          + ", ".join(f"{c}: {k}" for c, k in zip(classes, counts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
