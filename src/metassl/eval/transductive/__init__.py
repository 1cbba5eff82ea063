"""Transductive inference over any trained encoder: methods that also use the (unlabeled) query set, and an
optional pool of unlabeled images, to classify an episode's queries.

A method is a registered `TransductiveSpec` (`@register_transductive("ptmap", PTMAPConfig, ...)`), found by
plugin discovery (every module of this folder; `metassl.registry.TRANSDUCTIVE`). Feature-level methods are pure
tensor functions batched over T episodes:

    run(support_z [T, S, D], support_y [T, S], query_z [T, Q, D], ways, unlabeled_z [T, U, D] | None, cfg)
        -> log-probabilities [T, Q, N]

A method with `needs_encoder=True` (`finetune`) gets `(learner, params, buffers, support_x, support_y, query_x,
ways, unlabeled_x, cfg)` instead, and must never change the given tensors. No method ever sees a query label.

`transductive_predict(learner, params, buffers, name, options)` makes the `predict(support_x, support_y, query_x,
ways)` function that `eval.episodes.evaluate` runs: it embeds support and query with
`learner.embed(..., per_task=True)` and applies the method, so it works for any learner.
`assumes_balanced`: the method's default assumes every class has the same number of queries (PT-MAP's Sinkhorn
marginals, TIM's marginal-entropy term); each such method has options for unbalanced query sets
(`unbalanced_options`, e.g. PT-MAP's unbalanced=true), which `metassl predict` applies to a query set that has
fewer images than classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
import yaml

from ...config import build
from ...errors import ConfigError
from ...learners.protonet import prototypes  # class means [T, N, D]
from ...learners.protonet import squared_euclidean as sq_distances  # [T, M, D] x [T, N, D] -> [T, M, N]
from ...registry import TRANSDUCTIVE

__all__ = ["TransductiveSpec", "register_transductive", "method_spec", "method_config", "parse_options",
           "transductive_predict", "prototypes", "one_hot", "sq_distances", "nearest_prototype_logprobs",
           "entropy", "l2n"]


@dataclass(frozen=True)
class TransductiveSpec:
    name: str
    config: type
    run: Callable[..., torch.Tensor]
    description: str = ""
    needs_encoder: bool = False
    assumes_balanced: bool = False
    # the options for query sets whose classes are not balanced (for a method that `assumes_balanced`)
    unbalanced_options: tuple[tuple[str, Any], ...] = ()


def register_transductive(name: str, config: type, description: str = "", needs_encoder: bool = False,
                          assumes_balanced: bool = False, unbalanced_options: dict[str, Any] | None = None
                          ) -> Callable[[Callable], Callable]:
    """Register `run` (the decorated function) as transductive method `name` with its options dataclass."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"transductive method {name!r}: config must be a dataclass, got {config!r}")

    def deco(run: Callable) -> Callable:
        TRANSDUCTIVE.add(name, TransductiveSpec(name, config, run, description, needs_encoder, assumes_balanced,
                                                tuple((unbalanced_options or {}).items())))
        return run

    return deco


def method_spec(name: str) -> TransductiveSpec:
    return TRANSDUCTIVE.lookup(name)


def method_config(name: str, options: dict[str, Any] | None = None) -> Any:
    """The method's options dataclass from a mapping (validated: ranges, choices, unknown keys name
    `transductive.NAME.KEY`)."""
    return build(method_spec(name).config, options or {}, f"transductive.{name}")


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """`["KEY=VALUE", ...]` (YAML values) -> dict; an item without `=` is a ConfigError."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--transductive-option {item!r} must look like KEY=VALUE (e.g. n_iter=30)")
        k, raw = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[k.strip()] = raw
    return out


def transductive_predict(learner: Any, params: dict, buffers: dict, name: str,
                         options: dict[str, Any] | None = None) -> Callable[..., torch.Tensor]:
    """`predict(support_x, support_y, query_x, ways, unlabeled_x=None) -> log-probabilities [T, Q, N]` with the
    transductive method `name` on `learner`'s encoder features (the encoder in whatever mode it is in: eval mode
    for evaluation). The query labels are never given to it."""
    spec = method_spec(name)
    cfg = method_config(name, options)

    def predict(support_x, support_y, query_x, ways, unlabeled_x=None):
        if support_y.dtype.is_floating_point:
            raise ValueError(f"transductive method {name!r} classifies; the support targets are floats "
                             f"(regression), which it cannot use")
        if spec.needs_encoder:
            return spec.run(learner, params, buffers, support_x, support_y, query_x, ways, unlabeled_x, cfg)
        zs = learner.embed(params, buffers, support_x, per_task=True)
        zq = learner.embed(params, buffers, query_x, per_task=True)
        zu = None if unlabeled_x is None else learner.embed(params, buffers, unlabeled_x, per_task=True)
        return spec.run(zs, support_y, zq, ways, zu, cfg)

    return predict


# ---------------------------------------------------------------------------------------------------------------
# shared building blocks (plain tensor functions, batched over episodes)


def one_hot(y: torch.Tensor, ways: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return F.one_hot(y.long(), ways).to(dtype)


def l2n(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=1e-12)


def nearest_prototype_logprobs(support_z, support_y, query_z, ways) -> torch.Tensor:
    """The inductive reference: log-softmax of minus squared distances to the support class means."""
    return torch.log_softmax(-sq_distances(query_z, prototypes(support_z, support_y, ways)), -1)


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim)


def pool(query_z: torch.Tensor, unlabeled_z: torch.Tensor | None) -> torch.Tensor:
    """The unlabeled features a method may use: the queries, then the extra pool."""
    return query_z if unlabeled_z is None else torch.cat([query_z, unlabeled_z], 1)
