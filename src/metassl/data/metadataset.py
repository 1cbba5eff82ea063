"""Variable-way, variable-shot episodes (Triantafillou et al., "Meta-Dataset", ICLR 2020, Appendix; the reference
code's `meta_dataset/data/sampling.py`), drawn on the split's device for T tasks at once, padded to one shape.

Per episode (the paper's defaults in `MetaDatasetTaskConfig`):
- a domain (data set) by `data.domain_weights` (uniform by default), all classes from it (`tasks.mixed: true`: from
  the union of the domains instead); with `tasks.hierarchy: true`, Omniglot's bi-level sampling: an alphabet
  uniformly among the domain's alphabets, classes within it (other domains: their classes, as without);
- ways N uniform in [min_ways, min(max_ways, classes available)], the N classes uniformly without replacement;
- queries per class q = min(max_query, min_c floor(|c| / 2));
- support set size |S| = min(max_support, sum_c ceil(beta * min(max_support_per_class, |c| - q))), beta ~ U(0, 1]
  (drawn as floor(beta * x + 1) with beta ~ U[0, 1), as the reference code);
- support shots per class k_c = min(floor(p_c (|S| - N)) + 1, |c| - q), p_c proportional to |c| exp(a_c),
  a_c ~ U[log 0.5, log 2] (imbalanced support sets).
Support and query images of a class are disjoint. Tasks are padded to the batch's largest N, support and query
sizes; `TaskBatch.support_mask`, `query_mask` and `task_ways` say what is real. Learners that handle varying ways
(`Learner.variable_ways`) read the masks so that padding never changes a logit or a loss; the others are refused.

Evaluation episodes (`metadataset_episodes`) are drawn on the CPU with one generator per episode, seeded by its
identity (split, seed, index, sampler settings): a pure function of these, whatever the batch size or device.
Deviation: random numbers come from torch in float32, so draws do not repeat the reference code's numpy stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..config import ConfigError, TaskConfig, option
from ..registry import LEARNERS
from .episodic import ClassSplit, TaskBatch, episode_seed
from .task_sources import register_task_source

__all__ = ["MetaDatasetTaskConfig", "EpisodeDraw", "draw_episodes", "assemble", "metadataset_episodes", "sample_metadataset", "unpad",
           "class_groups", "MetaDatasetTasks", "check_variable_ways"]


@dataclass
class MetaDatasetTaskConfig(TaskConfig):
    min_ways: int = option(5, range=(2, 100000), help="fewest classes in an episode (Meta-Dataset: 5)")
    max_ways: int = option(50, range=(2, 100000), help="most classes in an episode (Meta-Dataset: 50)")
    max_query: int = option(10, range=(1, 100000), help="most query images per class (Meta-Dataset: 10)")
    max_support: int = option(500, range=(1, 1000000), help="largest support set (Meta-Dataset: 500)")
    max_support_per_class: int = option(100, range=(1, 1000000),
                                        help="most a class adds to the support set's size (Meta-Dataset: 100)")
    min_log_weight: float = option(math.log(0.5), range=(-10.0, 10.0), help="class weights exp(U[min, max]) for "
                                   "the imbalanced support shots (Meta-Dataset: log 0.5 .. log 2)")
    max_log_weight: float = option(math.log(2.0), range=(-10.0, 10.0))
    hierarchy: bool = option(False, help="Omniglot's bi-level sampling: an alphabet first, classes within it")
    mixed: bool = option(False, help="several data sets: classes of an episode from all of them (default: each "
                         "episode from one data set, as Meta-Dataset)")

    def outputs(self) -> int:
        return self.max_ways

    def validate(self):
        if self.min_ways > self.max_ways:
            raise ConfigError(f"tasks.min_ways={self.min_ways} is above tasks.max_ways={self.max_ways}")
        if self.min_log_weight > self.max_log_weight:
            raise ConfigError(f"tasks.min_log_weight={self.min_log_weight} is above tasks.max_log_weight")
        if self.max_support < self.min_ways:
            raise ConfigError(f"tasks.max_support={self.max_support} cannot hold one image of each of "
                              f"tasks.min_ways={self.min_ways} classes")


@dataclass
class EpisodeDraw:
    """The composition of T episodes: classes [T, K] (split indices, K = the most ways; entries past a task's ways
    are padding), ways [T], queries per class [T], support shots [T, K] (0 for padding) and the drawn image
    positions within each class [T, K, J] (query first, then support)."""

    classes: torch.Tensor
    ways: torch.Tensor
    queries: torch.Tensor
    shots: torch.Tensor
    pos: torch.Tensor


def class_groups(split: ClassSplit, hierarchy: bool, mixed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The group of every class [C] (episodes draw their classes from one group) and each group's probability [G].

    Groups: one per domain (by its weight), or with `hierarchy` one per Omniglot alphabet of a domain (the domain's
    weight shared evenly between them); `mixed`: one group of every class."""
    n = split.num_classes
    doms = split.domains
    if doms is None:
        dom_of_class, weights, names = torch.zeros(n, dtype=torch.int64), [1.0], [split.name.split("/")[0]]
    else:
        dom_of_class, weights, names = doms.class_domain.cpu(), list(doms.weights), list(doms.names)
    if mixed:
        return torch.zeros(n, dtype=torch.int64), torch.ones(1)
    keys: list[tuple[int, str]] = []
    for c in range(n):
        d = int(dom_of_class[c])
        name = split.class_names[c]
        sup = ""
        if hierarchy and names[d] in ("omniglot", "md_omniglot"):
            local = name.split(":", 1)[-1]
            sup = local.split("/", 1)[0] if "/" in local else ""
        keys.append((d, sup))
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    group = torch.tensor([index[k] for k in keys], dtype=torch.int64)
    per_domain = {}
    for d, _ in index:
        per_domain[d] = per_domain.get(d, 0) + 1
    total = sum(weights[d] for d in per_domain)
    prob = torch.tensor([weights[d] / total / per_domain[d] for d, _ in index], dtype=torch.float32)
    return group, prob


def check_groups(split: ClassSplit, group: torch.Tensor, cfg: Any) -> None:
    """A ConfigError naming the first data set / alphabet with fewer classes than `tasks.min_ways`, or a class with
    fewer than 2 images (no query image and one support image)."""
    counts = split.host_counts
    if counts.numel() and int(counts.min()) < 2:
        c = int(counts.argmin())
        raise ConfigError(f"{split.name}: class {split.class_names[c]!r} has {int(counts[c])} image; variable-shot "
                          f"episodes need at least 2 per class (one support, one query)")
    sizes = torch.bincount(group)
    small = (sizes < cfg.min_ways).nonzero().flatten()
    if small.numel():
        g = int(small[0])
        c = int((group == g).nonzero()[0])
        what = _group_name(split, c)
        raise ConfigError(f"{what} has {int(sizes[g])} classes, fewer than tasks.min_ways={cfg.min_ways}: lower "
                          f"tasks.min_ways, or leave that data set out of data.datasets"
                          + (" (or set tasks.hierarchy=false)" if cfg.hierarchy else ""))


def _group_name(split: ClassSplit, c: int) -> str:
    name = split.class_names[c]
    dom = name.split(":", 1)[0] if ":" in name and split.domains is not None else split.name
    return f"data set {dom}" + (f" (group of class {name!r})" if split.domains is None else "")


def draw_episodes(counts: torch.Tensor, group: torch.Tensor, group_prob: torch.Tensor, cfg: Any, num_tasks: int,
                  generator: torch.Generator | None, device: torch.device, max_count: int) -> EpisodeDraw:
    """T episode compositions and image positions, vectorized over tasks on `device` (see the module docstring)."""
    t = num_tasks
    counts = counts.to(device)
    group, group_prob = group.to(device), group_prob.to(device)
    n_classes = counts.numel()
    g = torch.multinomial(group_prob, t, replacement=True, generator=generator)  # [T] group of each task
    sizes = torch.bincount(group, minlength=group_prob.numel())[g]  # [T] classes available
    hi = torch.clamp(sizes, max=cfg.max_ways)
    u = torch.rand(t, generator=generator, device=device)
    ways = torch.minimum(cfg.min_ways + (u * (hi - cfg.min_ways + 1).float()).long(), hi)  # uniform in [min, hi]
    k = int(min(cfg.max_ways, n_classes))
    keys = torch.rand(t, n_classes, generator=generator, device=device)
    keys = keys.masked_fill(group.unsqueeze(0) != g.unsqueeze(1), float("inf"))
    classes = torch.topk(keys, k, dim=1, largest=False, sorted=True).indices  # [T, K]: the first `ways` are drawn
    cmask = torch.arange(k, device=device) < ways.unsqueeze(1)
    cnt = torch.where(cmask, counts[classes], torch.zeros_like(classes))
    big = torch.iinfo(torch.int64).max
    q = torch.clamp(torch.where(cmask, cnt // 2, torch.full_like(cnt, big)).min(1).values, max=cfg.max_query)  # [T]
    remaining = torch.where(cmask, cnt - q.unsqueeze(1), torch.zeros_like(cnt))
    beta = torch.rand(t, 1, generator=generator, device=device)
    contrib = torch.clamp(remaining, max=cfg.max_support_per_class).float()
    size = torch.where(cmask, torch.floor(beta * contrib + 1.0), torch.zeros_like(contrib)).sum(1)
    size = torch.clamp(size, max=float(cfg.max_support))  # [T] support set size
    logw = torch.rand(t, k, generator=generator, device=device) * (cfg.max_log_weight - cfg.min_log_weight) \
        + cfg.min_log_weight
    w = torch.where(cmask, cnt.float() * torch.exp(logw), torch.zeros(t, k, device=device))
    prop = w / w.sum(1, keepdim=True)
    shots = torch.floor(prop * (size - ways.float()).unsqueeze(1)).long() + 1
    shots = torch.where(cmask, torch.minimum(shots, remaining), torch.zeros_like(shots))
    j = int(min(max_count, cfg.max_query + cfg.max_support))
    img_keys = torch.rand(t, k, max_count, generator=generator, device=device)
    valid = torch.arange(max_count, device=device) < counts[classes].unsqueeze(-1)
    pos = torch.topk(img_keys.masked_fill(~valid, 2.0), j, dim=2, largest=False, sorted=True).indices
    return EpisodeDraw(classes, ways, q, shots, pos)


def _compact(idx: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, width: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move each row's valid entries to its front (order kept) and cut to `width` (default: the most valid)."""
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    idx, labels, valid = (torch.gather(x, 1, order) for x in (idx, labels, valid))
    width = int(valid.sum(1).max()) if width is None else width
    return idx[:, :width], labels[:, :width], valid[:, :width]


def assemble(split: ClassSplit, d: EpisodeDraw) -> TaskBatch:
    """The padded TaskBatch of drawn episodes: support then query images of each task, labels 0..ways_t-1 in the
    drawn class order, masks marking the real entries; padding repeats image 0 of the split with label 0."""
    device = split.device
    classes, ways, q, shots, pos = (x.to(device) for x in (d.classes, d.ways, d.queries, d.shots, d.pos))
    t, k, j = pos.shape
    flat = split.offsets[classes].unsqueeze(-1) + pos  # [T, K, J] index into split.images
    label = torch.arange(k, device=device).view(1, k, 1)
    cmask = (torch.arange(k, device=device) < ways.unsqueeze(1)).unsqueeze(-1)
    slot = torch.arange(j, device=device).view(1, 1, j)
    q_valid = cmask & (slot < q.view(t, 1, 1))
    qw = int(q.max()) if t else 0
    q_idx, q_y, q_m = _compact(flat[..., :qw].reshape(t, -1), label.expand(t, k, qw).reshape(t, -1),
                               q_valid[..., :qw].reshape(t, -1))
    s_valid = cmask & (slot >= q.view(t, 1, 1)) & (slot < (q.view(t, 1) + shots).unsqueeze(-1))
    s_idx, s_y, s_m = _compact(flat.reshape(t, -1), label.expand(t, k, j).reshape(t, -1), s_valid.reshape(t, -1))
    zero = torch.zeros((), dtype=torch.int64, device=device)
    s_idx, q_idx = torch.where(s_m, s_idx, zero), torch.where(q_m, q_idx, zero)
    s_y, q_y = torch.where(s_m, s_y, zero), torch.where(q_m, q_y, zero)
    n = int(ways.max()) if t else 0
    return TaskBatch(split.images[s_idx], s_y, split.images[q_idx], q_y, n, classes[:, :n],
                     support_mask=s_m, query_mask=q_m, task_ways=ways)


def sample_metadataset(split: ClassSplit, cfg: Any, num_tasks: int, generator: torch.Generator | None,
                       groups: tuple[torch.Tensor, torch.Tensor] | None = None) -> TaskBatch:
    group, prob = groups if groups is not None else class_groups(split, cfg.hierarchy, cfg.mixed)
    return assemble(split, draw_episodes(split.counts, group, prob, cfg, num_tasks, generator, split.device,
                                         split.max_count))


def metadataset_episodes(split: ClassSplit, cfg: Any, seed: int, start: int, count: int) -> list[TaskBatch]:
    """Evaluation episodes start..start+count-1 of `split` under the sampler settings `cfg`, one unpadded TaskBatch
    (T = 1) each: a pure function of (split name, settings, seed, index), drawn on the CPU."""
    group, prob = class_groups(split, cfg.hierarchy, cfg.mixed)
    check_groups(split, group, cfg)
    ident = (cfg.min_ways, cfg.max_ways, cfg.max_query, cfg.max_support, cfg.max_support_per_class,
             round(cfg.min_log_weight, 9), round(cfg.max_log_weight, 9), cfg.hierarchy, cfg.mixed)
    out = []
    for i in range(start, start + count):
        g = torch.Generator().manual_seed(episode_seed("metadataset", split.name, *ident, seed, i))
        d = draw_episodes(split.host_counts, group, prob, cfg, 1, g, torch.device("cpu"), split.max_count)
        out.append(unpad(assemble(split, d)))
    return out


def unpad(batch: TaskBatch) -> TaskBatch:
    """A padded batch of one task as a plain TaskBatch (its real entries only, no masks)."""
    if batch.num_tasks != 1:
        raise ValueError("unpad takes one task")
    s, q = batch.support_mask[0], batch.query_mask[0]
    n = int(batch.task_ways[0])
    return TaskBatch(batch.support_x[:, s], batch.support_y[:, s], batch.query_x[:, q], batch.query_y[:, q], n,
                     batch.classes[:, :n])


def check_variable_ways(learner: str) -> None:
    """A ConfigError unless the learner reads padded variable-way batches (`Learner.variable_ways`)."""
    spec = LEARNERS.lookup(learner)
    if not getattr(spec.build, "variable_ways", False):
        fits = sorted(n for n, s in LEARNERS.items() if getattr(s.build, "variable_ways", False))
        raise ConfigError(f"learner.name={learner} trains on fixed N-way K-shot episodes; tasks.source=metadataset "
                          f"gives variable-way variable-shot episodes padded to one shape, which it cannot read "
                          f"(its head or inner loop is sized for one N, or it ignores masks): use one of "
                          f"{', '.join(fits)}, or tasks.source=labeled")


@register_task_source("metadataset", MetaDatasetTaskConfig, batch="episodes")
class MetaDatasetTasks:
    """Variable-way variable-shot episodes (Meta-Dataset), padded with masks, on the split's device."""

    def __init__(self, cfg: Any, split: ClassSplit, generator: torch.Generator, config: Any = None, **_: Any):
        if config is not None:
            check_variable_ways(config.learner.name)
        cfg.validate()
        self.groups = class_groups(split, cfg.hierarchy, cfg.mixed)
        check_groups(split, self.groups[0], cfg)
        self.cfg, self.split, self.generator = cfg, split, generator

    def sample(self) -> TaskBatch:
        return sample_metadataset(self.split, self.cfg, self.cfg.tasks_per_batch, self.generator, self.groups)
