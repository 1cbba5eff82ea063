"""Sinusoid regression (Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning", ICML 2017, section 5.1).

A task is y = A sin(x - phi) with amplitude A ~ U[0.1, 5.0], phase phi ~ U[0, pi] and inputs x ~ U[-5, 5] (as the
reference code github.com/cbfinn/maml, `data_generator.py`: `amp * np.sin(x - phase)`), K support and Q query
points. Nothing is read from disk: the splits `train`, `val` and `test` are the same distribution; their test tasks
differ because fixed tasks are seeded by the split's name. Options (`data.options.*`): `amplitude: [lo, hi]`,
`phase: [lo, hi]`, `x: [lo, hi]` (defaults: the paper's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ...config import ConfigError, build
from ..regression import FunctionSplit
from ..registry import DatasetSpec, register_dataset

SPLITS = ("train", "val", "test")


@dataclass
class SinusoidOptions:
    amplitude: list[float] = (0.1, 5.0)  # type: ignore[assignment]
    phase: list[float] = (0.0, math.pi)  # type: ignore[assignment]
    x: list[float] = (-5.0, 5.0)  # type: ignore[assignment]

    def validate(self):
        for key in ("amplitude", "phase", "x"):
            v = list(getattr(self, key))
            if len(v) != 2 or not v[0] <= v[1]:
                raise ConfigError(f"data.options.{key} must be [low, high] with low <= high, got {v}")
            setattr(self, key, (float(v[0]), float(v[1])))


class SinusoidSplit(FunctionSplit):
    """y = A sin(x - phi), A ~ U[amplitude], phi ~ U[phase], x ~ U[x]; one input and one target value."""

    image_shape = (1,)
    target_dim = 1

    def __init__(self, name: str, options: SinusoidOptions | None = None, device="cpu"):
        super().__init__(name, device)
        self.options = options or SinusoidOptions()

    def draw_params(self, num_tasks, generator, device):
        (a0, a1), (p0, p1) = self.options.amplitude, self.options.phase
        amp = a0 + (a1 - a0) * torch.rand(num_tasks, 1, 1, generator=generator, device=device)
        phase = p0 + (p1 - p0) * torch.rand(num_tasks, 1, 1, generator=generator, device=device)
        return {"amplitude": amp, "phase": phase}

    def draw_inputs(self, num_tasks, points, generator, device):
        x0, x1 = self.options.x
        return x0 + (x1 - x0) * torch.rand(num_tasks, points, 1, generator=generator, device=device)

    def function(self, params, x):
        return params["amplitude"].to(x.device) * torch.sin(x - params["phase"].to(x.device))


def load(root: Path, split: str, size, options: dict) -> SinusoidSplit:
    return SinusoidSplit(f"sinusoid/{split}", build(SinusoidOptions, options, "data.options"))


def locate(root: Path) -> Path:
    return Path("(generated)")


register_dataset(DatasetSpec(
    name="sinusoid", splits=SPLITS, image_size=1, channels=1, inputs="functions",
    description="sinusoid regression tasks y = A sin(x - phase) (MAML, Finn et al. 2017), generated on the device",
    load=load, locate=locate, generic=True))
