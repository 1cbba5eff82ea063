"""CACTUs task source (Hsu, Levine & Finn, "Unsupervised Learning via Meta-Learning", ICLR 2019): cluster the
embeddings of unlabeled images, treat clusters as classes, and draw N-way K-shot tasks from them, for any learner.

- Embeddings: the encoder of an earlier run (`tasks.embed_from`, e.g. a SimCLR run), applied once to every training
  image with that run's recorded preprocessing, L2-normalized. Labels are never read. The engine supplies the
  embedding function (`embed` in the source context): this layer never loads a model.
- Partitions: `tasks.partitions` k-means clusterings with `tasks.clusters` centres each; as in the paper, every
  partition after the first clusters the embeddings with each dimension multiplied by a random scale (U(0, 1)), so
  the partitions differ. k-means is Lloyd's algorithm on the device with k-means++ seeding, deterministic by the run
  seed and partition index.
- Tasks: each step picks one partition at random and draws the meta-batch's tasks from its clusters with at least
  K + Q members, with the same vectorized sampler as labeled tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..config import ConfigError, TaskConfig, option
from .episodic import ClassSplit, TaskBatch, _draw
from .task_sources import register_task_source


@dataclass
class CACTUsTaskConfig(TaskConfig):
    embed_from: str | None = option(None, help="run or checkpoint whose encoder embeds the unlabeled images")
    clusters: int = option(500, range=(2, 1000000), help="k-means clusters per partition")
    partitions: int = option(1, range=(1, 1000), help="k-means partitions (each with random feature scaling)")
    kmeans_iters: int = option(30, range=(1, 10000), help="Lloyd iterations per partition")


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Cluster assignments [M] of the rows of x [M, D]: k-means++ seeding, then Lloyd iterations."""
    m = x.shape[0]
    if k > m:
        raise ConfigError(f"tasks.clusters={k} is more than the {m} images to cluster")
    dev = x.device
    first = torch.randint(m, (1,), generator=generator, device=dev)
    centers = [x[first]]
    d2 = torch.cdist(x, centers[0]).squeeze(1).pow(2)
    for _ in range(1, k):  # k-means++: next centre with probability proportional to the squared distance
        idx = torch.multinomial(d2.clamp_min(0) + 1e-12, 1, generator=generator)
        centers.append(x[idx])
        d2 = torch.minimum(d2, torch.cdist(x, x[idx]).squeeze(1).pow(2))
    c = torch.cat(centers)
    assign = torch.zeros(m, dtype=torch.long, device=dev)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        c = torch.where(empty.unsqueeze(1), c, sums / counts.clamp_min(1).unsqueeze(1))
    return assign


@register_task_source("cactus", CACTUsTaskConfig, batch="episodes")
class CACTUsTasks:
    """N-way K-shot tasks from k-means clusters of an earlier encoder's embeddings (CACTUs)."""

    def __init__(self, cfg: Any, split: ClassSplit, generator: torch.Generator, config: Any = None,
                 embeddings: torch.Tensor | None = None,
                 embed: Callable[[str, ClassSplit], torch.Tensor] | None = None, **_: Any):
        if embeddings is None:
            if not cfg.embed_from:
                raise ConfigError("tasks.source=cactus needs tasks.embed_from: a run or checkpoint whose encoder "
                                  "embeds the unlabeled images (e.g. a SimCLR run)")
            if embed is None:
                raise ConfigError("tasks.source=cactus needs an embedding function (the trainer passes one); when "
                                  "building the source yourself, pass embeddings=... or embed=...")
            embeddings = torch.nn.functional.normalize(embed(cfg.embed_from, split).float(), dim=1)
        self.cfg, self.split, self.generator = cfg, split, generator
        seed = (config.seed if config is not None else 0) * 7919
        orders, sizes = [], []  # per partition: image indices grouped by cluster [M], cluster sizes [k]
        for p in range(cfg.partitions):
            g = torch.Generator(device=embeddings.device).manual_seed(seed + p)
            z = embeddings
            if p > 0:
                z = z * torch.rand(z.shape[1], generator=g, device=z.device)
            assign = kmeans(z, cfg.clusters, cfg.kmeans_iters, g)
            orders.append(torch.argsort(assign, stable=True))
            sizes.append(torch.bincount(assign, minlength=cfg.clusters))
        # stacked [P, ...] so that a step picks its partition on the device, without reading the index back
        self.orders = torch.stack(orders).to(split.device)
        self.counts = torch.stack(sizes).to(split.device)
        self.offsets = torch.cumsum(self.counts, 1) - self.counts
        self.max_count = int(self.counts.max())
        need = cfg.shots + cfg.queries
        usable = int((self.counts >= need).sum(1).min())
        if usable < cfg.ways:
            raise ConfigError(f"tasks.source=cactus: only {usable} of {cfg.clusters} clusters have the "
                              f"{need} images ({cfg.shots} shots + {cfg.queries} queries) a {cfg.ways}-way task "
                              f"needs; use fewer tasks.clusters, ways, shots or queries")

    def cluster_sizes(self) -> list[torch.Tensor]:
        return list(self.counts.unbind(0))

    def sample(self) -> TaskBatch:
        c = self.cfg
        dev = self.split.device
        p = torch.randint(self.counts.shape[0], (1,), generator=self.generator, device=dev)
        order, counts, offsets = (t.index_select(0, p)[0] for t in (self.orders, self.counts, self.offsets))
        classes, pos = _draw(counts, c.ways, c.shots + c.queries, c.tasks_per_batch, self.generator, dev,
                             self.max_count)
        flat = order[offsets[classes].unsqueeze(-1) + pos]  # [T, N, K+Q] image indices
        t, n = classes.shape
        labels = torch.arange(n, device=dev).view(1, n, 1)
        s_idx, q_idx = flat[..., :c.shots].reshape(t, -1), flat[..., c.shots:].reshape(t, -1)
        return TaskBatch(self.split.images[s_idx], labels.expand(t, n, c.shots).reshape(t, -1),
                         self.split.images[q_idx], labels.expand(t, n, c.queries).reshape(t, -1), n, None)
