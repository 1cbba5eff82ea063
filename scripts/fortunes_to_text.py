"""Turn the fortune(6) databases (Debian's `fortunes` / `fortunes-min` packages: /usr/share/games/fortunes/<category>,
entries separated by lines holding only `%`) into a text classification folder for the `text` data set:
OUT/<category>/<n>.txt, one fortune per file, the category (art, computers, food, law, medicine, politics, science,
sports, startrek, ...) as its class.

    apt-get install fortunes            # or: apt-get download fortunes && dpkg-deb -x fortunes_*.deb DIR
    python scripts/fortunes_to_text.py /usr/share/games/fortunes fortunes_text --per-class 100 --min-per-class 20

Categories with fewer than --min-per-class fortunes are left out; from the others, --per-class fortunes are drawn at
random (seed --seed; all of them with --per-class 0). Entries are kept as written (attribution lines included),
with surrounding blank space stripped. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path


def read_fortunes(path: Path) -> list[str]:
    entries, cur = [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip() == "%":
            entries.append("\n".join(cur).strip())
            cur = []
        else:
            cur.append(line.rstrip())
    entries.append("\n".join(cur).strip())
    return [e for e in entries if e]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="the fortunes folder, e.g. /usr/share/games/fortunes")
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, default=100, help="fortunes drawn per category (0: all)")
    p.add_argument("--min-per-class", type=int, default=20, help="leave out categories with fewer fortunes")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    files = sorted(f for f in a.src.iterdir()
                   if f.is_file() and not f.is_symlink() and not f.name.startswith(".") and "." not in f.name)
    if not files:
        sys.exit(f"{a.src}: no fortune files (install Debian's fortunes package, or point at its extracted folder)")
    kept, left = [], []
    for f in files:
        entries = read_fortunes(f)
        if len(entries) < a.min_per_class:
            left.append(f"{f.name} ({len(entries)})")
            continue
        if a.per_class and len(entries) > a.per_class:
            entries = random.Random(f"{a.seed}-{f.name}").sample(entries, a.per_class)
        d = a.out / f.name
        d.mkdir(parents=True, exist_ok=True)
        for i, e in enumerate(entries):
            (d / f"{i:04d}.txt").write_text(e + "\n", encoding="utf-8")
        kept.append(f"{f.name} ({len(entries)})")
    print(f"{a.out}: {len(kept)} categories: {', '.join(kept)}")
    if left:
        print(f"left out (fewer than {a.min_per_class}): {', '.join(left)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
