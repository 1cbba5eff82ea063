"""Conv4 applies its ReLU after the max-pool (a speed choice, models/conv4.py): the same outputs and the same
gradients as the papers' conv -> norm -> ReLU -> pool, bit for bit, with the same parameter names."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metassl.models.conv4 import Conv4, Conv4Config


@pytest.mark.parametrize("ceil", [False, True])
def test_pool_then_relu_equals_relu_then_pool(ceil):
    torch.manual_seed(0)
    net = Conv4(Conv4Config(hidden=8, pool_ceil=ceil), 1)
    ref = []  # the papers' order, built from the same modules
    mods = list(net.features)
    for i in range(0, len(mods), 4):
        conv, norm, pool, relu = mods[i:i + 4]
        assert isinstance(pool, nn.MaxPool2d) and isinstance(relu, nn.ReLU)
        ref += [conv, norm, relu, pool]
    ref = nn.Sequential(*ref)
    params = dict(net.named_parameters())
    x = torch.randn(6, 1, 28, 28)
    y = net(x)
    y_ref = ref(x).flatten(1)
    assert torch.equal(y, y_ref)
    g = torch.autograd.grad(y.square().sum(), list(params.values()))
    g_ref = torch.autograd.grad(y_ref.square().sum(), list(params.values()))
    assert all(torch.equal(a, b) for a, b in zip(g, g_ref))
    # parameter names are those of checkpoints written before the change (conv at 0, 4, ...; norm at 1, 5, ...)
    assert {"features.0.weight", "features.1.weight", "features.4.weight", "features.13.bias"} <= set(params)
    assert torch.equal(functional_call(net, params, (x,)), y)
