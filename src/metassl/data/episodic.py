"""Class-indexed image splits that live on the device, and episodic task sampling.

A `ClassSplit` stores every image of a split as one uint8 tensor ordered by class, with per-class offsets and
counts (class sizes may differ). `sample_tasks` draws T N-way K-shot Q-query tasks in one vectorized call:
random keys are drawn for every (task, class) and (task, class, image) and sorted, so there is no per-image Python
and no DataLoader. Evaluation episodes are drawn on the CPU from a generator seeded by the episode's identity, so
episode i is the same on every machine, for every method and whatever the batch size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import torch

__all__ = ["ClassSplit", "TaskBatch", "Preprocess", "sample_tasks", "eval_episodes", "episode_seed", "check_task_shape"]


@dataclass(frozen=True)
class Preprocess:
    """How uint8 images become network inputs; stored in checkpoints so prediction repeats it exactly."""

    invert: bool = False  # Omniglot-like data: dark ink on white becomes ink = 1 on 0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    # the training images' statistics (`data.input_stats`), recorded by the trainer; None: not known
    stats: dict[str, Any] | None = field(default=None, compare=False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (0..255) or float images already in [0, 1] (e.g. augmented views) -> network input."""
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        if self.invert:
            x = 1.0 - x
        if self.mean:
            shape = (1,) * (x.dim() - 3) + (-1, 1, 1)
            mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(shape)
            std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(shape)
            x = (x - mean) / std
        return x

    def to_dict(self) -> dict[str, Any]:
        d = {"invert": self.invert, "mean": list(self.mean), "std": list(self.std)}
        return {**d, "stats": self.stats} if self.stats is not None else d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        stats = d.get("stats")
        return cls(invert=bool(d.get("invert", False)), mean=tuple(d.get("mean", ())), std=tuple(d.get("std", ())),
                   stats=stats if isinstance(stats, dict) else None)


@dataclass
class ClassSplit:
    """All images of one split, grouped by class: `images[offsets[c] : offsets[c] + counts[c]]` is class c."""

    images: torch.Tensor  # [M, C, H, W] uint8, sorted by class
    counts: torch.Tensor  # [num_classes] int64
    class_names: list[str]
    name: str = ""  # e.g. "omniglot/test"
    preprocess: Preprocess = field(default_factory=Preprocess)
    # several data sets in one split (`data.datasets`): the domain of each class and how each was converted
    # (`data/multidomain.py`); None: one data set
    domains: Any = None
    offsets: torch.Tensor = field(init=False)
    # a host copy of the counts: shape checks and the sampler's key width never wait for the device
    host_counts: torch.Tensor = field(init=False, repr=False)
    max_count: int = field(init=False)

    def __post_init__(self) -> None:
        # images: uint8 [M, C, H, W]; other inputs (table rows [M, D], signals [M, C, L], text embeddings): float
        if not ((self.images.dtype == torch.uint8 and self.images.dim() == 4) or
                (self.images.is_floating_point() and self.images.dim() >= 2)):
            raise ValueError(f"{self.name}: images must be a uint8 tensor [M, C, H, W] (or other inputs a float "
                             f"tensor [M, ...]), got {self.images.dtype} {tuple(self.images.shape)}")
        self.counts = torch.as_tensor(self.counts, dtype=torch.int64, device=self.images.device)
        if self.counts.dim() != 1 or len(self.class_names) != self.counts.numel():
            raise ValueError(f"{self.name}: {len(self.class_names)} class names for {self.counts.numel()} counts")
        if int(self.counts.sum()) != self.images.shape[0]:
            raise ValueError(f"{self.name}: class counts sum to {int(self.counts.sum())}, "
                             f"but there are {self.images.shape[0]} images")
        if self.counts.numel() and int(self.counts.min()) < 1:
            empty = self.class_names[int(self.counts.argmin())]
            raise ValueError(f"{self.name}: class {empty!r} has no images")
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self.host_counts = self.counts.cpu()
        self.max_count = int(self.host_counts.max()) if self.host_counts.numel() else 0

    @classmethod
    def from_labels(cls, images: torch.Tensor, labels: torch.Tensor, class_names: list[str], **kw) -> "ClassSplit":
        """Build a split from images in any order and integer labels indexing `class_names`."""
        labels = torch.as_tensor(labels, dtype=torch.int64)
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=len(class_names))
        keep = counts > 0
        if not bool(keep.all()):
            class_names = [n for n, k in zip(class_names, keep.tolist()) if k]
            counts = counts[keep]
        return cls(images[order], counts, class_names, **kw)

    @property
    def num_classes(self) -> int:
        return self.counts.numel()

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def labels(self) -> torch.Tensor:
        """The class index of every image, [M]."""
        return torch.repeat_interleave(torch.arange(self.num_classes, device=self.device), self.counts)

    def to(self, device: torch.device | str) -> "ClassSplit":
        return replace(self, images=self.images.to(device), counts=self.counts.to(device))

    def subset(self, classes: list[int] | torch.Tensor, name: str | None = None) -> "ClassSplit":
        """A new split made of the given classes (in that order)."""
        classes = torch.as_tensor(classes, dtype=torch.int64, device=self.device)
        counts = self.counts[classes]
        idx = torch.cat([torch.arange(int(o), int(o) + int(c), device=self.device)
                         for o, c in zip(self.offsets[classes].tolist(), counts.tolist())]) if classes.numel() else \
            torch.zeros(0, dtype=torch.int64, device=self.device)
        return ClassSplit(self.images[idx], counts, [self.class_names[i] for i in classes.tolist()],
                          name=name or self.name, preprocess=self.preprocess)

    def __repr__(self) -> str:
        c = self.counts
        sizes = f"{int(c.min())}..{int(c.max())}" if c.numel() else "-"
        return (f"ClassSplit({self.name!r}, classes={self.num_classes}, images={self.images.shape[0]}, "
                f"shape={self.image_shape}, per-class={sizes}, device={self.device})")


@dataclass
class TaskBatch:
    """T few-shot tasks: a support set to adapt on and a query set to be judged on, per task.

    Classification (every built-in source): targets are labels 0..N-1 within each task (`ways` = N), support and
    query images disjoint. The inputs need not be images and the targets need not be labels: inputs are any
    [T, S, *input_shape] tensor (images [C, H, W], vectors [D]) and targets any [T, S, ...] tensor, e.g. float
    values for few-shot regression, with `ways` None; learners pick the loss from the targets' dtype
    (`learners.base.task_loss`)."""

    support_x: torch.Tensor  # [T, S, *input_shape], classification: S = N*K
    support_y: torch.Tensor  # [T, S] int64 labels, or [T, S, ...] real-valued targets
    query_x: torch.Tensor  # [T, Q', *input_shape]
    query_y: torch.Tensor  # [T, Q'] or [T, Q', ...]
    ways: int | None
    classes: torch.Tensor | None = None  # [T, N] split-level class index of each task label (None if unknown)
    # [T, V, N*(K+Q), C, H, W]: V augmented views of each task's support then query images, for a self-supervised
    # auxiliary term (`aux.contrastive`); drawn by `AuxiliaryViews` from the images only, None otherwise
    views: torch.Tensor | None = None
    # [T, U, C, H, W]: unlabeled images of the episode (semi-supervised tasks, Ren et al. 2018: images of the task's
    # classes and of distractor classes, in random order, no labels), None otherwise
    unlabeled_x: torch.Tensor | None = None
    # variable-way variable-shot episodes (Meta-Dataset, `data/metadataset.py`), padded to one shape: which support and
    # query entries are real ([T, S] and [T, Q'] bool) and each task's number of classes [T] (labels 0..ways_t-1;
    # `ways` is then the largest); None for fixed-shape tasks
    support_mask: torch.Tensor | None = None
    query_mask: torch.Tensor | None = None
    task_ways: torch.Tensor | None = None

    @property
    def padded(self) -> bool:
        """Variable-way episodes padded to one shape (masks set): only learners with `variable_ways` take them."""
        return self.support_mask is not None

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    @property
    def shots(self) -> int:
        return self.support_x.shape[1] // self.ways

    @property
    def queries(self) -> int:
        return self.query_x.shape[1] // self.ways

    def map_images(self, fn) -> "TaskBatch":
        """Apply `fn` to support, query and unlabeled images and to the views, if any (e.g. uint8 -> normalized
        float)."""
        return replace(self, support_x=fn(self.support_x), query_x=fn(self.query_x),
                       views=None if self.views is None else fn(self.views),
                       unlabeled_x=None if self.unlabeled_x is None else fn(self.unlabeled_x))

    def to(self, device) -> "TaskBatch":
        def move(t):
            return None if t is None else t.to(device)
        return TaskBatch(self.support_x.to(device), self.support_y.to(device), self.query_x.to(device),
                         self.query_y.to(device), self.ways, move(self.classes), move(self.views),
                         move(self.unlabeled_x), move(self.support_mask), move(self.query_mask), move(self.task_ways))

    def select(self, start: int, stop: int) -> "TaskBatch":
        """Tasks start..stop-1 (e.g. this process's share of a global batch)."""
        sl = slice(start, stop)

        def part(t):
            return None if t is None else t[sl]
        return TaskBatch(self.support_x[sl], self.support_y[sl], self.query_x[sl], self.query_y[sl], self.ways,
                         part(self.classes), part(self.views), part(self.unlabeled_x), part(self.support_mask),
                         part(self.query_mask), part(self.task_ways))

    def chunks(self, size: int) -> list["TaskBatch"]:
        """Split along the task dimension into batches of at most `size` tasks."""
        return [self.select(s, s + size) for s in range(0, self.num_tasks, size)]


def check_task_shape(split: ClassSplit, ways: int, shots: int, queries: int, unlabeled: int = 0,
                     distractors: int = 0) -> None:
    """Raise a ValueError naming the problem if N-way K-shot Q-query tasks (with `unlabeled` extra images per class
    and `distractors` extra classes) cannot be drawn from `split`."""
    for name, v, lo in (("ways", ways, 1), ("shots", shots, 1), ("queries", queries, 0),
                        ("unlabeled", unlabeled, 0), ("distractors", distractors, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if distractors and not unlabeled:
        raise ValueError(f"{distractors} distractor classes with 0 unlabeled images per class add nothing: set "
                         f"unlabeled >= 1 (the distractor classes contribute that many unlabeled images each)")
    classes = ways + distractors
    what = f"{ways}-way tasks" + (f" with {distractors} distractor classes" if distractors else "")
    if classes > split.num_classes:
        raise ValueError(f"{split.name}: cannot draw {what}, the split has only {split.num_classes} classes; lower "
                         f"ways{' or distractors' if distractors else ''} to at most {split.num_classes} in all")
    need = shots + queries + unlabeled
    small = (split.host_counts < need).nonzero().flatten()
    eligible = split.num_classes - small.numel()
    if small.numel() and eligible < classes:
        c = int(small[0])
        parts = f"{shots} shots + {queries} queries" + (f" + {unlabeled} unlabeled" if unlabeled else "")
        raise ValueError(
            f"{split.name}: {parts} = {need} images per class are needed, but class "
            f"{split.class_names[c]!r} has {int(split.host_counts[c])} ({small.numel()} of {split.num_classes} classes "
            f"have fewer than {need}; {eligible} have enough for {what}); lower shots or queries"
            f"{' or unlabeled' if unlabeled else ''}")


def _draw(counts: torch.Tensor, ways: int, per_class: int, num_tasks: int,
          generator: torch.Generator | None, device: torch.device, max_count: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw class indices [T, N] and within-class positions [T, N, per_class] with vectorized random keys.

    Classes with fewer than `per_class` images are never chosen (keys +inf). Within a class, images beyond its count
    get key 2 > any uniform key, so sorting keys picks a uniformly random subset of the valid positions.
    `max_count` (>= the largest count, known on the host) sets the key width without a device sync.
    """
    class_keys = torch.rand(num_tasks, counts.numel(), generator=generator, device=device)
    class_keys = class_keys.masked_fill((counts < per_class).to(device), float("inf"))
    classes = torch.topk(class_keys, ways, dim=1, largest=False, sorted=False).indices  # [T, N], distinct per task
    # random order of the N classes so that label n is not biased towards low class keys
    perm = torch.argsort(torch.rand(num_tasks, ways, generator=generator, device=device), dim=1)
    classes = torch.gather(classes, 1, perm)
    img_keys = torch.rand(num_tasks, ways, max_count, generator=generator, device=device)
    valid = torch.arange(max_count, device=device) < counts.to(device)[classes].unsqueeze(-1)
    img_keys = img_keys.masked_fill(~valid, 2.0)
    pos = torch.topk(img_keys, per_class, dim=2, largest=False, sorted=True).indices  # [T, N, K+Q]
    return classes, pos


def _assemble(split: ClassSplit, classes: torch.Tensor, pos: torch.Tensor, shots: int, queries: int,
              ways: int | None = None, unlabeled: int = 0, order: torch.Tensor | None = None) -> TaskBatch:
    """The TaskBatch of drawn classes [T, N+D] and positions [T, N+D, K+Q+M]: support and query from the first N
    classes; with `unlabeled` M > 0, the unlabeled set holds positions K+Q.. of every drawn class (the D classes
    after the first N are the distractors), permuted by `order` [T, (N+D)*M]."""
    device = split.device
    classes, pos = classes.to(device), pos.to(device)
    num_tasks = classes.shape[0]
    ways = classes.shape[1] if ways is None else ways
    flat = split.offsets[classes].unsqueeze(-1) + pos  # [T, N+D, K+Q+M] index into split.images
    labels = torch.arange(ways, device=device).view(1, ways, 1)
    s_idx = flat[:, :ways, :shots].reshape(num_tasks, -1)
    q_idx = flat[:, :ways, shots:shots + queries].reshape(num_tasks, -1)
    s_y = labels.expand(num_tasks, ways, shots).reshape(num_tasks, -1)
    q_y = labels.expand(num_tasks, ways, queries).reshape(num_tasks, -1)
    u = None
    if unlabeled:
        u_idx = flat[..., shots + queries:].reshape(num_tasks, -1)
        u = split.images[torch.gather(u_idx, 1, order.to(device))]
    return TaskBatch(split.images[s_idx], s_y, split.images[q_idx], q_y, ways, classes[:, :ways], unlabeled_x=u)


def sample_tasks(split: ClassSplit, ways: int, shots: int, queries: int, num_tasks: int = 1,
                 generator: torch.Generator | None = None, unlabeled: int = 0, distractors: int = 0) -> TaskBatch:
    """Draw `num_tasks` N-way K-shot Q-query tasks from `split`, on the split's device, in one vectorized call.

    `generator` must live on the split's device; it makes training reproducible from a seed. `unlabeled` M > 0
    adds a semi-supervised unlabeled set (Ren et al. 2018) of M further images of each of the N classes and of
    `distractors` D further classes, in random order (`TaskBatch.unlabeled_x` [T, (N+D)*M, ...]). With M = D = 0 the
    draws are exactly those of plain tasks.
    """
    check_task_shape(split, ways, shots, queries, unlabeled, distractors)
    classes, pos = _draw(split.counts, ways + distractors, shots + queries + unlabeled, num_tasks, generator,
                         split.device, split.max_count)
    order = _unlabeled_order(num_tasks, (ways + distractors) * unlabeled, generator, split.device) if unlabeled \
        else None
    return _assemble(split, classes, pos, shots, queries, ways, unlabeled, order)


def _unlabeled_order(num_tasks: int, size: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """A random permutation of each task's unlabeled images [T, U], so that their order says nothing of their class."""
    return torch.argsort(torch.rand(num_tasks, size, generator=generator, device=device), dim=1)


def episode_seed(*identity: Any) -> int:
    """A 63-bit seed derived from an episode's identity (data set, split, N, K, Q, seed, index)."""
    digest = hashlib.sha256("|".join(map(str, identity)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _eval_draws(split: ClassSplit, ways: int, shots: int, queries: int, seed: int, start: int, count: int,
                unlabeled: int, distractors: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Classes [T, N+D], positions [T, N+D, K+Q+M] and unlabeled order of the protocol's episodes (eval_episodes)."""
    check_task_shape(split, ways, shots, queries, unlabeled, distractors)
    extra = (unlabeled, distractors) if unlabeled or distractors else ()
    cls, pos, order = [], [], []
    for i in range(start, start + count):
        g = torch.Generator().manual_seed(episode_seed(split.name, ways, shots, queries, seed, i, *extra))
        c, p = _draw(split.host_counts, ways + distractors, shots + queries + unlabeled, 1, g, torch.device("cpu"),
                     split.max_count)
        cls.append(c)
        pos.append(p)
        if unlabeled:
            order.append(_unlabeled_order(1, (ways + distractors) * unlabeled, g, "cpu"))
    return torch.cat(cls), torch.cat(pos), torch.cat(order) if unlabeled else None


def eval_episode_rows(split: ClassSplit, ways: int, shots: int, queries: int, seed: int, start: int, count: int,
                      unlabeled: int = 0, distractors: int = 0) -> torch.Tensor:
    """The rows of `split.images` (sorted, unique, on the CPU) that `eval_episodes` with the same arguments reads,
    without gathering any image: e.g. to embed only those once."""
    cls, pos, _ = _eval_draws(split, ways, shots, queries, seed, start, count, unlabeled, distractors)
    flat = split.offsets.cpu()[cls].unsqueeze(-1) + pos
    # support and query from the first N classes; unlabeled images from every drawn class (distractors too)
    return torch.cat([flat[:, :ways, :shots + queries].flatten(), flat[..., shots + queries:].flatten()]).unique()


def eval_episodes(split: ClassSplit, ways: int, shots: int, queries: int, seed: int, start: int, count: int,
                  unlabeled: int = 0, distractors: int = 0) -> TaskBatch:
    """Episodes start..start+count-1 of the protocol (split, N, K, Q, seed; and M unlabeled images per class, D
    distractor classes for semi-supervised episodes, see `sample_tasks`): a pure function of those values.

    Indices are drawn on the CPU, one generator per episode, so the result does not depend on the device, on the
    batch size used for evaluation, or on the method being evaluated. Episodes with M = D = 0 are those of every
    earlier release (M and D enter the identity only when they are not 0).
    """
    cls, pos, order = _eval_draws(split, ways, shots, queries, seed, start, count, unlabeled, distractors)
    return _assemble(split, cls, pos, shots, queries, ways, unlabeled, order)
