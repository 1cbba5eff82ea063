"""Optimizers and schedules (metassl.engine.optim)."""

import torch

from metassl.engine.optim import LARS


def test_lars_step_formula_and_exclusions():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # |w| = 5
    b = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    w.grad, b.grad = torch.tensor([[0.6, 0.8]]), torch.tensor([0.5, 0.5])
    opt = LARS([w, b], lr=0.1, momentum=0.9, weight_decay=0.1, trust_coefficient=0.01)
    opt.step()
    g = torch.tensor([[0.6, 0.8]]) + 0.1 * torch.tensor([[3.0, 4.0]])  # g + wd w, |.| = 1.5
    trust = 0.01 * 5.0 / 1.5
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.1 * trust * g, atol=1e-6)
    assert torch.allclose(b.detach(), torch.tensor([1.0, 2.0]) - 0.1 * torch.tensor([0.5, 0.5]))  # excluded


def test_piecewise_schedule_and_its_errors():
    import pytest

    from metassl.config import ConfigError, apply_overrides, resolve
    from metassl.engine.optim import lr_factor

    cfg = resolve(apply_overrides({}, ["optim.schedule=piecewise", "optim.milestones=[10,20,25]",
                                       "optim.factors=[0.06,0.012,0.0024]"])).optim
    got = [lr_factor(s, cfg, 30) for s in (0, 9, 10, 19, 20, 24, 25, 29)]
    assert got == [1.0, 1.0, 0.06, 0.06, 0.012, 0.012, 0.0024, 0.0024]
    with pytest.raises(ConfigError, match="strictly increasing"):
        resolve(apply_overrides({}, ["optim.milestones=[20,10]", "optim.factors=[0.1,0.01]"]))
    with pytest.raises(ConfigError, match="one per entry"):
        resolve(apply_overrides({}, ["optim.milestones=[10]", "optim.factors=[0.1,0.01]"]))
    with pytest.raises(ConfigError, match="needs optim.milestones"):
        resolve(apply_overrides({}, ["optim.schedule=piecewise"]))
