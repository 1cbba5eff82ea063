"""Run logs: metrics.jsonl (one JSON object per line), TensorBoard events and a learning-curve PNG.

Only the main process writes; other ranks get a logger that drops everything.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_path, atomic_write_text
from .distributed import DistInfo


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill is dropped, the rest is kept
    return rows


class RunLogger:
    def __init__(self, run_dir: Path, dist: DistInfo, tensorboard: bool = True, resume_step: int | None = None):
        self.run_dir, self.active = Path(run_dir), dist.is_main
        self.writer = None
        if not self.active:
            return
        path = self.run_dir / "metrics.jsonl"
        if resume_step is not None and path.exists():
            # rows logged after the checkpoint we resume from would be repeated: drop them
            kept = [r for r in read_metrics(self.run_dir) if int(r.get("step", 0)) <= resume_step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = open(path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step)
            except Exception as e:  # tensorboard missing or broken: the JSON log still has everything
                warnings.warn(f"TensorBoard logging disabled: {e}")

    def log(self, step: int, values: dict[str, Any], kind: str = "train") -> None:
        if not self.active:
            return
        row = {"step": step, "kind": kind, **{k: _plain(v) for k, v in values.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if not self.active:
            return
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v


def plot_learning_curves(run_dir: Path, out: Path | None = None) -> Path | None:
    """Training loss and accuracy (smoothed) and validation accuracy against step, as a PNG."""
    rows = read_metrics(run_dir)
    train = [r for r in rows if r.get("kind") == "train" and "loss" in r]
    val = [r for r in rows if r.get("kind") == "val" and "accuracy" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [r["step"] for r in train]
    ax1.plot(steps, [r["loss"] for r in train], lw=1.2, color="tab:blue")
    ax1.set(xlabel="step", ylabel="training loss", title="Loss")
    ax1.grid(alpha=0.3)
    acc = [r for r in train if "accuracy" in r]  # self-supervised losses may have no accuracy
    if acc:
        ax2.plot([r["step"] for r in acc], [100 * r["accuracy"] for r in acc], lw=1.2, color="tab:blue",
                 label="train (episode)")
    knn = [r for r in rows if r.get("kind") == "knn" and "knn_top1" in r]
    if knn:
        ax2.plot([r["step"] for r in knn], [100 * r["knn_top1"] for r in knn], color="tab:green", marker="s", ms=3,
                 label="kNN top-1 (test)")
    if val:
        ax2.errorbar([r["step"] for r in val], [r["accuracy"] for r in val], yerr=[r.get("ci95", 0) for r in val],
                     color="tab:orange", marker="o", ms=3, capsize=2, label="validation ± 95% CI")
    ax2.set(xlabel="step", ylabel="accuracy (%)", title="Accuracy")
    ax2.grid(alpha=0.3)
    if acc or knn or val:
        ax2.legend(loc="lower right")
    fig.tight_layout()
    out = out or Path(run_dir) / "learning_curves.png"
    with atomic_write_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out
