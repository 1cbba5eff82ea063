"""VICReg's two weightings of the variance term against the loss written out: the paper's lambda s + mu [v(Z) +
v(Z')] + nu [c(Z) + c(Z')] (Bardes et al. 2022); the authors' released code halves the variance term only."""

import dataclasses

import pytest
import torch

from metassl.ssl.losses import vicreg_loss

SIM, VAR, COV = 2.0, 3.0, 5.0  # distinct weights, so a term weighted by the wrong one shows


def _views():
    g = torch.Generator().manual_seed(0)
    # std ~0.5 < gamma = 1 per dimension, so the variance hinge is active in both views
    z1 = 0.5 * torch.randn(8, 4, generator=g, dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(8, 4, generator=g, dtype=torch.float64)
    return z1, z2


def _terms(z1, z2, gamma=1.0, eps=1e-4):
    b, d = z1.shape
    s = ((z1 - z2) ** 2).mean()  # MSE: mean over B and D

    def v(z):  # mean_j relu(gamma - sqrt(Var(z_j) + eps)), Var unbiased
        return torch.relu(gamma - torch.sqrt(z.var(0, unbiased=True) + eps)).mean()

    def c(z):  # sum_{i != j} Cov(Z)_ij^2 / D, Cov with B - 1
        zc = z - z.mean(0)
        cov = zc.t() @ zc / (b - 1)
        return (cov ** 2).sum().sub((cov.diagonal() ** 2).sum()) / d

    return s, v(z1), v(z2), c(z1), c(z2)


def test_paper_form_is_eq_6():
    z1, z2 = _views()
    s, v1, v2, c1, c2 = _terms(z1, z2)
    assert float(v1) > 0.1 and float(v2) > 0.1 and float(c1 + c2) > 0
    loss, terms = vicreg_loss(z1, z2, SIM, VAR, COV, variance_form="paper")
    assert loss.dtype == torch.float64
    assert float(loss) == pytest.approx(float(SIM * s + VAR * (v1 + v2) + COV * (c1 + c2)), abs=1e-7)
    # the reported terms are what the weights multiply
    assert float(terms["invariance"]) == pytest.approx(float(s), abs=1e-7)
    assert float(terms["variance"]) == pytest.approx(float(v1 + v2), abs=1e-7)
    assert float(terms["covariance"]) == pytest.approx(float(c1 + c2), abs=1e-7)


def test_code_form_halves_only_the_variance_weight():
    z1, z2 = _views()
    s, v1, v2, c1, c2 = _terms(z1, z2)
    default, _ = vicreg_loss(z1, z2, SIM, VAR, COV)
    code, terms = vicreg_loss(z1, z2, SIM, VAR, COV, variance_form="code")
    paper, _ = vicreg_loss(z1, z2, SIM, VAR, COV, variance_form="paper")
    assert float(default) == float(code)
    assert float(code) == pytest.approx(float(SIM * s + VAR / 2 * (v1 + v2) + COV * (c1 + c2)), abs=1e-7)
    assert float(terms["variance"]) == pytest.approx(float(v1 + v2) / 2, abs=1e-7)
    # the forms differ by exactly half the variance term (not by a halved covariance or invariance term)
    assert float(paper - code) == pytest.approx(float(VAR / 2 * (v1 + v2)), abs=1e-7)
    assert float(paper - code) > 0.1


def test_unknown_variance_form_is_refused():
    z1, z2 = _views()
    with pytest.raises(ValueError, match="variance_form"):
        vicreg_loss(z1, z2, variance_form="papers")


def test_config_option_reaches_the_loss(monkeypatch):
    from metassl.ssl import vicreg

    field = {f.name: f for f in dataclasses.fields(vicreg.VICRegConfig)}["variance_form"]
    assert field.default == "code" and field.metadata["choices"] == ("code", "paper")
    seen = {}

    def spy(*args, **kwargs):  # records what the learner passes and what the loss returned
        seen.update(kwargs, result=vicreg_loss(*args, **kwargs))
        return seen["result"]

    monkeypatch.setattr(vicreg, "vicreg_loss", spy)
    learner = vicreg.VICReg.__new__(vicreg.VICReg)  # only `loss` is exercised: its config and projections
    learner.config = vicreg.VICRegConfig(variance_form="paper")
    z1, z2 = _views()
    learner.project_views = lambda params, buffers, batch: (torch.stack([z1, z2]).float(),)  # [views, B, D]
    learner.loss(None, None, None)
    assert seen["variance_form"] == "paper"
    s, v1, v2, c1, c2 = _terms(z1.float().double(), z2.float().double())
    assert float(seen["result"][0]) == pytest.approx(float(25 * s + 25 * (v1 + v2) + 1 * (c1 + c2)), rel=1e-5)
