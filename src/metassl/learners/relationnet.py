"""Relation Networks, "Learning to Compare" (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018).

The encoder gives feature maps; a class is represented by the sum of its support images' maps (K-shot; the map
itself for 1-shot), and a learned relation module scores every (class, query) pair:
    r_{n,j} = g_phi( concat(m_n, f(x_j)) ),   m_n = sum_{i: y_i = n} f(x_i)
g_phi = 2 x [3x3 conv with `relation_channels` filters, BatchNorm, ReLU, 2x2 max-pool] on the 2C-channel
concatenation (class map first, query map second, as the reference code), flattened, FC to `relation_hidden`,
ReLU, FC to 1, sigmoid. The loss is the mean squared error between the relation scores [T, Q, N] and the
one-hot labels. `classify` returns the relation module's pre-sigmoid outputs as logits (sigmoid gives the scores;
the argmax is the same), for any number of ways.

Feature maps from a flattening backbone: the encoder's [D] features are reshaped to [C, h, w] with C =
`map_channels` (default: the out-channels of the encoder's last Conv2d) and h = w = sqrt(D / C) (square maps).
The paper's Omniglot encoder is 4 conv blocks with max-pooling in the first two only (64 x 7 x 7 maps for 28 x 28
inputs): conv4 with `model.pool_blocks: 2`, as the presets. A max-pool of the relation module is skipped where its input map is
smaller than 2 x 2 (tiny test images); the paper's 7 x 7 maps give 3 x 3 and then 1 x 1.

The relation module's tensors are `learner.relation.*` (conv/BN/FC weights, initialized as the reference code:
convs N(0, 2 / (9 * out_channels)), BN weight 1 / bias 0, FC weights N(0, 0.01) with biases 1). Its BatchNorm
(`relation_bn`):
  running (default): batch statistics of each episode's pairs while training (the encoder's train mode) and running
      averages in evaluation, like the encoder's own BatchNorm; the running statistics are `learner.relation.*`
      buffers that BatchNorm updates in place during the training forward, as the encoder's and the SSL heads'.
  batch: always the statistics of the episode's own pairs (the reference code never leaves train mode); a query's
      scores then depend on the other queries evaluated with it.
Each episode goes through the relation module on its own whenever batch statistics are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, LearnerConfig, option
from .base import Learner, LossOutput, Tensors, register_learner

REL = "learner.relation."
BLOCKS = 2


@dataclass
class RelationNetConfig(LearnerConfig):
    name: str = "relationnet"
    relation_channels: int = option(64, range=(1, 4096), help="filters of the relation module's two conv blocks")
    relation_hidden: int = option(8, range=(1, 4096), help="width of the relation module's hidden FC layer")
    relation_bn: str = option("running", choices=("running", "batch"),
                              help="relation-module BatchNorm in evaluation: running averages, or the episode's "
                                   "own pair statistics (the reference code)")
    bn_momentum: float = option(0.1, range=(0.0, 1.0), help="momentum of the relation module's running statistics "
                                                             "(relation_bn: running; the reference code: 1)")
    class_map: str = option("sum", choices=("sum", "mean"), help="class representation from its support maps: "
                                                                   "their sum (the paper) or mean")
    map_channels: int | None = option(None, range=(1, None), help="channels C of the encoder's feature map "
                                      "(features [D] are reshaped to [C, h, w]); null: the last conv's filters")


# ---------------------------------------------------------------------------------------------------------------
# building blocks (plain functions)


def map_shape(feature_dim: int, channels: int) -> tuple[int, int, int]:
    """[C, h, w] of a flattened square feature map of `feature_dim` values with `channels` channels."""
    if channels < 1 or feature_dim % channels:
        raise ConfigError(f"learner relationnet: the encoder's {feature_dim} features are not a whole number of "
                          f"{channels}-channel maps; set learner.map_channels to the channels of its last feature "
                          f"map (and model.flatten=flatten)")
    side = math.isqrt(feature_dim // channels)
    if side * side * channels != feature_dim:
        raise ConfigError(f"learner relationnet: {feature_dim} features = {channels} channels x "
                          f"{feature_dim // channels}, not a square map; set learner.map_channels to the channels "
                          f"of the encoder's last feature map")
    return channels, side, side


def pooled_side(side: int) -> int:
    """Side of a map after one relation block (2x2 max-pool, skipped below 2 x 2)."""
    return side // 2 if side >= 2 else side


def class_maps(maps: torch.Tensor, labels: torch.Tensor, ways: int, reduce: str = "sum") -> torch.Tensor:
    """Per-class sum (or mean) of support maps [T, S, C, h, w] with labels [T, S] -> [T, N, C, h, w]."""
    onehot = F.one_hot(labels, ways).to(maps.dtype)  # [T, S, N]
    if reduce == "mean":
        onehot = onehot / onehot.sum(1, keepdim=True).clamp_min(1.0)
    return torch.einsum("tsn,tschw->tnchw", onehot, maps)


def relation_pairs(classes: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Every (query, class) pair, channels concatenated class first: [N, C, h, w] x [Q, C, h, w] -> [Q*N, 2C, h, w]
    (query-major: row j*N + n pairs query j with class n)."""
    q, n = queries.shape[0], classes.shape[0]
    return torch.cat([classes.unsqueeze(0).expand(q, *classes.shape),
                      queries.unsqueeze(1).expand(q, n, *queries.shape[1:])], 2).flatten(0, 1)


def relation_module(tensors: Tensors, pairs: torch.Tensor, use_batch_stats: bool, momentum: float = 0.1,
                    eps: float = 1e-5) -> torch.Tensor:
    """g_phi: pairs [P, 2C, h, w] -> pre-sigmoid relation outputs [P]. `tensors` are the module's (names without
    `learner.relation.`): block{b}.conv.{weight,bias}, block{b}.bn.{weight,bias[,running_mean,running_var]},
    fc1.*, fc2.*. With batch statistics and running buffers present, BatchNorm updates them in place."""
    x = pairs
    for b in range(BLOCKS):
        p = f"block{b}."
        x = F.conv2d(x, tensors[p + "conv.weight"], tensors[p + "conv.bias"], padding=1)
        x = F.batch_norm(x, tensors.get(p + "bn.running_mean"), tensors.get(p + "bn.running_var"),
                         tensors[p + "bn.weight"], tensors[p + "bn.bias"], use_batch_stats, momentum, eps)
        x = F.relu(x)
        if min(x.shape[-2:]) >= 2:
            x = F.max_pool2d(x, 2)
    x = F.relu(F.linear(x.flatten(1), tensors["fc1.weight"], tensors["fc1.bias"]))
    return F.linear(x, tensors["fc2.weight"], tensors["fc2.bias"]).squeeze(-1)


def init_relation_params(in_channels: int, side: int, channels: int = 64, hidden: int = 8) -> Tensors:
    """The relation module's parameters for feature maps [in_channels, side, side], initialized as the reference
    code (convs N(0, 2/(9*out)), zero conv bias; BN 1/0; FCs N(0, 0.01) with biases 1)."""
    out, c = {}, 2 * in_channels
    for b in range(BLOCKS):
        p = f"{REL}block{b}."
        out[p + "conv.weight"] = torch.randn(channels, c, 3, 3) * math.sqrt(2.0 / (9 * channels))
        out[p + "conv.bias"] = torch.zeros(channels)
        out[p + "bn.weight"] = torch.ones(channels)
        out[p + "bn.bias"] = torch.zeros(channels)
        c, side = channels, pooled_side(side)
    out[REL + "fc1.weight"] = torch.randn(hidden, channels * side * side) * 0.01
    out[REL + "fc1.bias"] = torch.ones(hidden)
    out[REL + "fc2.weight"] = torch.randn(1, hidden) * 0.01
    out[REL + "fc2.bias"] = torch.ones(1)
    return out


def relation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the relation scores sigmoid(logits) [T, Q, N] and one-hot labels [T, Q]."""
    return F.mse_loss(torch.sigmoid(logits), F.one_hot(labels, logits.shape[-1]).to(logits.dtype))


# ---------------------------------------------------------------------------------------------------------------
# the learner


@register_learner("relationnet", RelationNetConfig,
                  description="a learned relation module scores (class feature map, query feature map) pairs; MSE "
                              "to one-hot labels")
class RelationNet(Learner):
    def _channels(self) -> int:
        if self.config.map_channels is not None:
            return int(self.config.map_channels)
        convs = [m for m in self.encoder.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ConfigError("learner relationnet compares feature maps: use a convolutional backbone "
                              "(model.backbone=conv4 with model.flatten=flatten) or set learner.map_channels")
        return convs[-1].out_channels

    def init_params(self, feature_dim: int, ways: int) -> Tensors:
        c, side, _ = map_shape(feature_dim, self._channels())
        return init_relation_params(c, side, self.config.relation_channels, self.config.relation_hidden)

    def init_buffers(self, params: Tensors, buffers: Tensors) -> Tensors:
        out = {}
        for b in range(BLOCKS):
            p = f"{REL}block{b}.bn."
            n = params[p + "weight"].shape[0]
            out[p + "running_mean"] = torch.zeros(n)
            out[p + "running_var"] = torch.ones(n)
        return out

    # -- the functional core ----------------------------------------------------------------------------------
    def maps(self, z: torch.Tensor) -> torch.Tensor:
        """Features [..., D] -> feature maps [..., C, h, w]."""
        c, h, w = map_shape(z.shape[-1], self._channels())
        return z.reshape(*z.shape[:-1], c, h, w)

    def relation_logits(self, params: Tensors, buffers: Tensors, classes: torch.Tensor, queries: torch.Tensor
                        ) -> torch.Tensor:
        """Pre-sigmoid relation outputs [T, Q, N] of class maps [T, N, C, h, w] and query maps [T, Q, C, h, w]."""
        training = self.encoder.training
        batch_stats = training or self.config.relation_bn == "batch"
        tensors = {k[len(REL):]: v for k, v in params.items() if k.startswith(REL)}
        if training or not batch_stats:  # running statistics: updated in training, used in evaluation
            tensors.update({k[len(REL):]: v for k, v in buffers.items() if k.startswith(REL)})
        t, q, n = queries.shape[0], queries.shape[1], classes.shape[1]
        if not batch_stats:  # running statistics: all episodes in one call
            pairs = torch.cat([relation_pairs(classes[i], queries[i]) for i in range(t)])
            return relation_module(tensors, pairs, False, self.config.bn_momentum).reshape(t, q, n)
        # batch statistics: each episode's pairs normalized on their own
        return torch.stack([relation_module(tensors, relation_pairs(classes[i], queries[i]), True,
                                            self.config.bn_momentum).reshape(q, n) for i in range(t)])

    def adapt(self, params, buffers, support_x, support_y, ways):
        z = self.maps(self.embed(params, buffers, support_x, per_task=True))
        return class_maps(z, support_y, ways, self.config.class_map)

    def classify(self, params, buffers, state, query_x):
        queries = self.maps(self.embed(params, buffers, query_x, per_task=True))
        return self.relation_logits(params, buffers, state, queries)

    def loss(self, params, buffers, tasks):
        s = tasks.support_x.shape[1]
        z = self.maps(self.embed(params, buffers, torch.cat([tasks.support_x, tasks.query_x], 1), per_task=True))
        logits = self.relation_logits(params, buffers, class_maps(z[:, :s], tasks.support_y, tasks.ways,
                                                                  self.config.class_map), z[:, s:])
        loss = relation_loss(logits, tasks.query_y)
        acc = (logits.argmax(-1) == tasks.query_y).float().mean()
        return LossOutput(loss, {"loss": loss.detach(), "accuracy": acc.detach()})
