"""Few-shot evaluation on one embedding of the split: each test image is embedded once, not once per episode that
draws it (600 5-way 1+5-shot episodes of Omniglot draw 108,000 images of its 33,840; 600 20-way 1-shot ones
192,000). Used only where it gives the same logits, bit for bit, as embedding each episode's images (`check`): the
learners that classify fixed features (ProtoNet, the self-supervised methods' nearest class mean, ...). Learners that
adapt the encoder (the MAML family) or normalize by batch statistics are evaluated on images as before."""

from __future__ import annotations

import torch

from ..data.episodic import ClassSplit, Preprocess, eval_episode_rows, eval_episodes
from ..eval.episodes import Protocol, evaluate
from ..eval.features import embed_images
from ..eval.result import EvalResult
from .build import Model

__all__ = ["SharedFeatures", "EMBED_BATCH"]

# images per encoder call when storing features: a fixed size, since one-row calls take other kernels (GEMV) whose
# last bits differ, and `check` compares logits bit for bit
EMBED_BATCH = 256


class SharedFeatures:
    """Evaluations on one embedding of a split instead of re-embedding every episode's images per protocol: the
    learner runs on the stored features with an identity encoder. Used only when that gives the same logits as the
    images do, checked exactly on a batch of real episodes (`check`); learners that adapt the encoder (the MAML
    family) or normalize by batch statistics fail the check or are never tried, and are evaluated on images."""

    def __init__(self, model: Model, split: ClassSplit):
        self.model, self.split = model, split
        # rows are embedded when a protocol, the confusion matrix or the t-SNE map first reads them (`ensure`):
        # a 100-episode report reads a third of Omniglot's 33,840 test images
        dim = embed_images(model, split.images[:1], model.preprocess, 1).shape[1]
        device = next(iter(model.params.values())).device
        self.embedded = torch.zeros(split.images.shape[0], dtype=torch.bool)
        self.features = ClassSplit(torch.zeros(split.images.shape[0], dim, device=device), split.counts,
                                   list(split.class_names), name=split.name, preprocess=Preprocess())
        learner = model.learner.with_options(input_ndim=1, channels_last=False)
        learner.encode_with = lambda tensors, inputs: inputs  # the inputs are the encoder's outputs already
        self.learner = learner

    @classmethod
    def build(cls, model: Model, split: ClassSplit, protocol: Protocol, batch_episodes: int
              ) -> "SharedFeatures | None":
        """A SharedFeatures for this model and split when it reproduces `protocol`'s first batch of episodes
        exactly, else None."""
        if model.learner.batch_statistics or split.images.dim() != 4:
            return None
        shared = cls(model, split)
        return shared if shared.check(protocol, batch_episodes) else None

    def ensure(self, rows: torch.Tensor) -> None:
        """Embed the rows of the split not embedded yet (eval mode: a row's features do not depend on the others)."""
        rows = rows.cpu()
        need = rows[~self.embedded[rows]]
        if need.numel():
            dev = self.split.images.device
            z = embed_images(self.model, self.split.images[need.to(dev)], self.model.preprocess, EMBED_BATCH)
            self.features.images[need.to(self.features.images.device)] = z.to(self.features.images.device)
            self.embedded[need] = True

    def ensure_protocol(self, protocol: Protocol, count: int | None = None) -> None:
        self.ensure(eval_episode_rows(self.split, protocol.ways, protocol.shots, protocol.queries, protocol.seed, 0,
                                      protocol.episodes if count is None else count, protocol.unlabeled,
                                      protocol.distractors))

    def ensure_classes(self, classes: torch.Tensor) -> None:
        offsets, counts = self.split.offsets.cpu(), self.split.counts.cpu()
        self.ensure(torch.cat([torch.arange(int(offsets[c]), int(offsets[c] + counts[c])) for c in classes.tolist()]))

    def rows(self, take: torch.Tensor) -> torch.Tensor:
        self.ensure(take)
        return self.features.images[take.to(self.features.images.device)]

    def predict(self, support_x, support_y, query_x, ways, unlabeled_x=None):
        m = self.model
        extra = {} if unlabeled_x is None else {"unlabeled_x": unlabeled_x}
        return self.learner.predict(m.params, m.buffers, support_x, support_y, query_x, ways, **extra)

    def check(self, protocol: Protocol, batch_episodes: int) -> bool:
        """The logits of the protocol's first batch of episodes are the same, bit for bit, on features and images."""
        n = min(batch_episodes or 8, protocol.episodes)
        self.ensure_protocol(protocol, n)
        args = (protocol.ways, protocol.shots, protocol.queries, protocol.seed, 0, n, protocol.unlabeled,
                protocol.distractors)
        with torch.no_grad():
            try:
                a = self._logits(self.predict, eval_episodes(self.features, *args), lambda x: x)
            except Exception:  # noqa: BLE001 - a learner that needs images: evaluate on images
                return False
            b = self._logits(self.model.predict, eval_episodes(self.split, *args), self.model.preprocess)
        return a.shape == b.shape and torch.equal(a, b)

    @staticmethod
    def _logits(predict, tasks, prep) -> torch.Tensor:
        t = tasks.map_images(prep)
        extra = {} if t.unlabeled_x is None else {"unlabeled_x": t.unlabeled_x}
        return predict(t.support_x, t.support_y, t.query_x, tasks.ways, **extra)

    def evaluate(self, protocol: Protocol, batch_episodes: int, progress=None) -> EvalResult:
        self.ensure_protocol(protocol)
        return evaluate(self.predict, self.features, protocol, lambda x: x, batch_episodes, progress=progress)
