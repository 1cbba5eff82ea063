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
