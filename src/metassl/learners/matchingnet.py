"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

A query x̂ is labelled by attention over the support set S = {(x_i, y_i)}:
    P(y | x̂, S) = sum_i a(x̂, x_i) y_i,    a(x̂, x_i) = softmax_i( c(f(x̂), g(x_i)) / temperature )
with c the cosine similarity and y_i one-hot labels; the training loss is the negative log-likelihood of that label
distribution (log of the attention-weighted one-hots, clamped at `PROB_FLOOR` before the log), and `classify`
returns the log-probabilities as logits (softmax of them gives P back, argmax is the prediction).

Without full context embeddings (`fce: false`; as far as we could check, the paper's Omniglot results are without
FCE, which it reports for miniImageNet) f = g = the encoder.
With `fce: true` (the paper's appendix):
  g(x_i, S) = h_fw_i + h_bw_i + g'(x_i): a bidirectional LSTM over the support embeddings g'(x_i) (in the order the
      support set is given; hidden size = the embedding size D);
  f(x̂, S) = attLSTM(f'(x̂), g(S), K): K processing steps of an LSTM whose input is always f'(x̂) and whose
      recurrent state is the concatenation [h_{k-1}, r_{k-1}] of the previous output and a read-out
          ĥ_k, c_k = LSTM(f'(x̂), [h_{k-1}, r_{k-1}], c_{k-1}),   h_k = ĥ_k + f'(x̂),
          r_{k-1} = sum_i softmax_i(h_{k-1}ᵀ g(x_i)) g(x_i),       f = h_K.
  f' = g' = the encoder. The start state is ours (the equations leave it open): ĥ_0 = 0, c_0 = 0, so h_0 = f'(x̂) and
  `fce_steps: 0` gives f = f' (only the support side is contextual). We could not check the number of steps K
  (`fce_steps`) the paper's appendix uses (unchecked); the default is 2.
The LSTM cells are written with plain tensor ops (gate order i, f, g, o as torch.nn.LSTMCell, one bias per gate);
their tensors are `learner.fce.*` (created by `init_params`, torch's default LSTM initialization U(-1/sqrt(D),
1/sqrt(D))). Deviation: `temperature` (default 1 = the paper) optionally sharpens the softmax over cosines.
Any number of ways and shots (also unequal counts per class) works in evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ConfigError, LearnerConfig, option
from .base import Learner, LossOutput, Tensors, embed_masked, masked_query_loss, register_learner

PROB_FLOOR = 1e-8  # P(y | x̂, S) is clamped to this before the log (a one-hot mixture can be exactly 0)
FCE = "learner.fce."
CELLS = ("g_fw", "g_bw", "f")


@dataclass
class MatchingNetConfig(LearnerConfig):
    name: str = "matchingnet"
    fce: bool = option(False, help="full context embeddings: bidirectional LSTM over the support set (g) and an "
                                   "attention LSTM over it for each query (f), as the paper's appendix")
    fce_steps: int = option(2, range=(0, 100), help="processing steps K of the attention LSTM f (fce only); "
                                                     "0: f is the encoder")
    temperature: float = option(1.0, range=(1e-6, 1e6), help="cosine similarities are divided by this before the "
                                                              "softmax over the support set (the paper: 1)")


# ---------------------------------------------------------------------------------------------------------------
# building blocks (plain functions)


def cosine_attention(queries: torch.Tensor, support: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """a(x̂, x_i): softmax over the support of cosine similarities, [T, Q, D] x [T, S, D] -> [T, Q, S]."""
    sims = F.normalize(queries, dim=-1) @ F.normalize(support, dim=-1).transpose(1, 2)
    return (sims / temperature).softmax(-1)


def label_distribution(attention: torch.Tensor, support_y: torch.Tensor, ways: int) -> torch.Tensor:
    """P(y | x̂, S) = sum_i a(x̂, x_i) onehot(y_i): attention [T, Q, S], labels [T, S] -> [T, Q, N]."""
    return attention @ F.one_hot(support_y, ways).to(attention.dtype)


def log_probabilities(probs: torch.Tensor) -> torch.Tensor:
    """log P, clamped at PROB_FLOOR (a class none of whose support images gets attention has P = 0)."""
    return probs.clamp_min(PROB_FLOOR).log()


def lstm_cell(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
              bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step, torch.nn.LSTMCell's equations (gates i, f, g, o) with one bias: x [..., I], h [..., H'],
    c [..., H]; w_ih [4H, I], w_hh [4H, H'] (H' may differ from H: the attention LSTM's state is [h, r])."""
    gates = F.linear(x, w_ih, bias) + F.linear(h, w_hh)
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _cell(params: Tensors, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p = FCE + name + "."
    return params[p + "weight_ih"], params[p + "weight_hh"], params[p + "bias"]


def fce_support(params: Tensors, support: torch.Tensor) -> torch.Tensor:
    """g(x_i, S) = h_fw_i + h_bw_i + g'(x_i): the bidirectional LSTM over support embeddings [T, S, D]."""
    zeros = support.new_zeros(support.shape[0], support.shape[2])
    outs = {}
    for name, order in (("g_fw", range(support.shape[1])), ("g_bw", reversed(range(support.shape[1])))):
        w = _cell(params, name)
        h, c, hs = zeros, zeros, {}
        for i in order:
            h, c = lstm_cell(support[:, i], h, c, *w)
            hs[i] = h
        outs[name] = torch.stack([hs[i] for i in range(support.shape[1])], 1)
    return outs["g_fw"] + outs["g_bw"] + support


def fce_query(params: Tensors, queries: torch.Tensor, support: torch.Tensor, steps: int) -> torch.Tensor:
    """f(x̂, S) = attLSTM(f'(x̂), g(S), K): queries [T, Q, D], contextual support g(S) [T, S, D] -> [T, Q, D]."""
    w = _cell(params, "f")
    h, c = queries, torch.zeros_like(queries)  # ĥ_0 = 0, so h_0 = f'(x̂)
    for _ in range(steps):
        read = (h @ support.transpose(1, 2)).softmax(-1) @ support  # r_{k-1}
        h_hat, c = lstm_cell(queries, torch.cat([h, read], -1), c, *w)
        h = h_hat + queries
    return h


def init_fce_params(dim: int) -> Tensors:
    """The three LSTM cells' tensors, torch's default LSTM initialization U(-1/sqrt(D), 1/sqrt(D))."""
    bound = 1.0 / math.sqrt(dim)
    out = {}
    for name in CELLS:
        rec = 2 * dim if name == "f" else dim  # the attention LSTM's recurrent input is [h, r]
        for key, shape in (("weight_ih", (4 * dim, dim)), ("weight_hh", (4 * dim, rec)), ("bias", (4 * dim,))):
            out[f"{FCE}{name}.{key}"] = torch.empty(shape).uniform_(-bound, bound)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the learner


@register_learner("matchingnet", MatchingNetConfig,
                  description="attention over the support set by cosine similarity, optional full context "
                              "embeddings (bi-LSTM + attention LSTM)")
class MatchingNet(Learner):
    def init_params(self, feature_dim: int, ways: int) -> Tensors:
        return init_fce_params(feature_dim) if self.config.fce else {}

    def support_embeddings(self, params: Tensors, z_support: torch.Tensor) -> torch.Tensor:
        """g(S): the encoder's support embeddings, made contextual by the bi-LSTM with FCE."""
        if not self.config.fce:
            return z_support
        self._check_fce(params, z_support)
        return fce_support(params, z_support)

    def query_embeddings(self, params: Tensors, z_query: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if not self.config.fce:
            return z_query
        return fce_query(params, z_query, g, self.config.fce_steps)

    def _check_fce(self, params: Tensors, z: torch.Tensor) -> None:
        key = FCE + "g_fw.weight_ih"
        if key not in params:
            raise ConfigError("learner matchingnet: learner.fce=true but the model has no FCE tensors (it was "
                              "built with learner.fce=false); train with learner.fce=true or evaluate with "
                              "learner.fce=false")
        if params[key].shape[1] != z.shape[-1]:
            raise ValueError(f"learner matchingnet: the FCE LSTMs take {params[key].shape[1]}-dim embeddings, the "
                             f"encoder gives {z.shape[-1]}")

    def log_probs_from_embeddings(self, params: Tensors, z_support: torch.Tensor, support_y: torch.Tensor,
                                  z_query: torch.Tensor, ways: int) -> torch.Tensor:
        g = self.support_embeddings(params, z_support)
        f = self.query_embeddings(params, z_query, g)
        probs = label_distribution(cosine_attention(f, g, self.config.temperature), support_y, ways)
        return log_probabilities(probs)

    def adapt(self, params, buffers, support_x, support_y, ways):
        g = self.support_embeddings(params, self.embed(params, buffers, support_x, per_task=True))
        return {"support": g, "onehot": F.one_hot(support_y, ways).to(g.dtype)}

    def classify(self, params, buffers, state, query_x):
        g = state["support"]
        f = self.query_embeddings(params, self.embed(params, buffers, query_x, per_task=True), g)
        return log_probabilities(cosine_attention(f, g, self.config.temperature) @ state["onehot"])

    def loss(self, params, buffers, tasks):
        if tasks.padded:  # Meta-Dataset episodes: attention never reaches padded support images
            return self._padded_loss(params, buffers, tasks)
        # support and query in one encoder call per task (shared BatchNorm statistics within an episode)
        s = tasks.support_x.shape[1]
        z = self.embed(params, buffers, torch.cat([tasks.support_x, tasks.query_x], 1), per_task=True)
        logp = self.log_probs_from_embeddings(params, z[:, :s], tasks.support_y, z[:, s:], tasks.ways)
        loss = F.nll_loss(logp.reshape(-1, logp.shape[-1]), tasks.query_y.reshape(-1))
        acc = (logp.argmax(-1) == tasks.query_y).float().mean()
        return LossOutput(loss, {"loss": loss.detach(), "accuracy": acc.detach()})

    variable_ways = True  # padded variable-way episodes (without FCE): masked attention, padded classes -inf

    def _padded_loss(self, params, buffers, tasks):
        """Padded variable-way variable-shot tasks: the real images in one encoder call (so BatchNorm statistics are
        those of the whole batch's real images, not of each episode), padded support images get attention 0,
        padded classes log-probability -inf, padded queries weight 0 (`masked_query_loss`)."""
        if self.config.fce:
            raise ConfigError("learner matchingnet: learner.fce=true reads the support set as a sequence, which "
                              "padded variable-way episodes (tasks.source=metadataset) would lengthen; set "
                              "learner.fce=false")
        s = tasks.support_x.shape[1]
        z = embed_masked(self, params, buffers, torch.cat([tasks.support_x, tasks.query_x], 1),
                         torch.cat([tasks.support_mask, tasks.query_mask], 1))
        zs, zq = z[:, :s], z[:, s:]
        sims = F.normalize(zq, dim=-1) @ F.normalize(zs, dim=-1).transpose(1, 2) / self.config.temperature
        att = sims.masked_fill(~tasks.support_mask.unsqueeze(1), float("-inf")).softmax(-1)
        onehot = F.one_hot(tasks.support_y, tasks.ways).to(att.dtype) * tasks.support_mask.unsqueeze(-1)
        return masked_query_loss(log_probabilities(att @ onehot), tasks.query_y, tasks.query_mask, tasks.task_ways)
