"""Proto-MAML (Triantafillou et al., "Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few Examples",
ICLR 2020).

MAML whose linear head is not meta-learned but built per task from the support set: with c_k the mean support
embedding of class k (its prototype),

    W_k = 2 c_k,   b_k = -||c_k||^2,   so   W_k . f(x) + b_k = -||f(x) - c_k||^2 + ||f(x)||^2,

i.e. before adaptation the logits are the Prototypical Network's up to a per-query constant (the same softmax).
Then `inner_steps` gradient steps of `inner_lr` on the support cross-entropy adapt the encoder and that head
(`adapt: all`, as the paper) or the head only (`adapt: head`, the body running once per task as in ANIL), and the
query cross-entropy of the adapted network is the meta-objective. There is no `learner.head.*` tensor, so any
number of ways can be trained and evaluated (3-way evaluation after 5-way training, etc.).

Gradients through the head's initialization. The prototypes are functions of the encoder, so the meta-gradient can
reach the encoder through them. `prototype_grad: follow` (default) keeps that path with the second-order inner loop
and cuts it with `first_order: true` (the first-order meta-gradient then is the query gradient at the fast
weights, prototypes treated as constants like the inner gradients). The paper trains the first-order variant
("fo-Proto-MAML"); its code of the time (google-research/meta-dataset, learner.py `MAMLLearner` with
`proto_maml_fc_layer_init`) stops only the inner gradients and keeps the prototypes differentiable:
`first_order: true, prototype_grad: always` reproduces that; `never` detaches them always.

BatchNorm uses the statistics of the batch it is given (support, then query), as the MAML family here. Padded
variable-way variable-shot batches (Meta-Dataset episodes, `tasks.source: metadataset`) are taken one task at a
time, unpadded. Deviations:
the paper's backbones, episode sampler and tuned hyperparameters are those of Meta-Dataset (variable ways and
shots, ResNet-18 at 126 px); the Omniglot presets use the MAML settings of this project instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import option
from ..data.metadataset import unpad
from .base import ENCODER, LossOutput, register_learner, task_loss
from .inner import HEAD_B, HEAD_W, FixedStepConfig, GradientLearner, inner_loop, map_tasks, score


@dataclass
class ProtoMAMLConfig(FixedStepConfig):
    name: str = "protomaml"
    adapt: str = option("all", choices=("all", "head"),
                        help="what the inner loop updates: encoder and prototype head (the paper), or the head only")
    prototype_grad: str = option("follow", choices=("follow", "always", "never"),
                                 help="meta-gradient through the prototype head init: follow = cut when first_order "
                                      "is true; always = kept (the paper's fo-Proto-MAML code); never = cut")
    head_init: str = option("prototypes", choices=("prototypes",),
                            help="the head is built per task from the support prototypes (no meta-learned head)")


def one_hot(labels: torch.Tensor, ways: int, dtype: torch.dtype) -> torch.Tensor:
    """[S] labels in 0..ways-1 -> [S, ways] (comparison with arange: works under vmap, unlike F.one_hot)."""
    return (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).to(dtype)


def prototype_head(embeddings: torch.Tensor, labels: torch.Tensor, ways: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One task's prototype-equivalent linear head: embeddings [S, D], labels [S] -> (W [ways, D], b [ways]) with
    W_k = 2 c_k, b_k = -||c_k||^2, c_k the mean embedding of class k (zeros for a class without support images)."""
    onehot = one_hot(labels, ways, embeddings.dtype)  # [S, N]
    protos = onehot.transpose(0, 1) @ embeddings / onehot.sum(0).clamp_min(1.0).unsqueeze(-1)
    return 2.0 * protos, -(protos * protos).sum(-1)


def _head_forward(params, buffers, z):
    return F.linear(z, params[HEAD_W], params[HEAD_B])


@register_learner("protomaml", ProtoMAMLConfig,
                  description="MAML with the linear head initialized per task from the support prototypes (any ways)")
class ProtoMAML(GradientLearner):
    supports_regression = False  # its head is made of class prototypes
    def init_params(self, feature_dim, ways):
        return {}  # the head is built per task from the prototypes: no meta-learned head, no fixed number of ways

    def detach_prototypes(self, train: bool) -> bool:
        how = self.config.prototype_grad
        return not train or how == "never" or (how == "follow" and self.first_order)

    def adapted_names(self, params):
        head = [HEAD_W, HEAD_B]
        if self.config.adapt == "head":
            return head
        return [k for k in params if k.startswith(ENCODER)] + head

    def adapt_task(self, params, buffers, support_x, support_y, ways: int, train: bool):
        """All params of one task after adaptation, the per-task head included (`learner.head.*` names)."""
        z = self.embed_one(params, buffers, support_x)
        w, b = prototype_head(z, support_y, ways)
        if self.detach_prototypes(train):
            w, b = w.detach(), b.detach()
        steps, lr, first_order = self.steps(train), self.step_sizes(params, train), self.first_order or not train
        if self.config.adapt == "head":  # the body once, outside the inner loop, as ANIL
            fast = inner_loop(_head_forward, {HEAD_W: w, HEAD_B: b}, {}, z, support_y, steps, lr, first_order)
            return {**params, **fast}
        # The head depends on the encoder tensors, but the inner loop treats them as separate variables: the inner
        # gradient with respect to the encoder is the partial one (torch.func.grad, the vmap path, computes that).
        # torch.autograd.grad (the loop path) would also follow encoder -> prototypes -> head; differentiating with
        # respect to views of the encoder tensors, which the head does not depend on, gives the partial derivative
        # there too, and the views pass the meta-gradient on unchanged.
        start = {**{k: v.view_as(v) if k.startswith(ENCODER) else v for k, v in params.items()}, HEAD_W: w, HEAD_B: b}
        return inner_loop(self.forward, start, buffers, support_x, support_y, steps, lr, first_order,
                          self.adapted_names(start))

    def task_objective_ways(self, ways: int):
        def objective(params, buffers, support_x, support_y, query_x, query_y):
            fast = self.adapt_task(params, buffers, support_x, support_y, ways, True)
            logits = self.forward(fast, buffers, query_x)
            loss = task_loss(logits, query_y)
            return loss, loss.detach(), score(logits, query_y, loss)

        return objective

    # padded Meta-Dataset episodes (tasks.source=metadataset): each task unpadded, its own inner loop and query loss
    variable_ways = True

    def loss(self, params, buffers, tasks):
        """The mean over tasks of each task's query loss; a padded batch of variable-way tasks is taken one task at
        a time, its real images only, so padding reaches neither the inner loop nor BatchNorm's batch statistics."""
        if not getattr(tasks, "padded", False):
            return super().loss(params, buffers, tasks)
        outs = [super(ProtoMAML, self).loss(params, buffers, unpad(tasks.select(t, t + 1)))
                for t in range(tasks.num_tasks)]
        mean = {k: torch.stack([o.metrics[k] for o in outs]).mean() for k in outs[0].metrics}
        return LossOutput(torch.stack([o.loss for o in outs]).mean(), mean)

    # -- the Learner contract: any number of ways ---------------------------------------------------------------
    def check_ways(self, params, ways):
        """No fixed head: the head of every task comes from its prototypes."""

    def batch_objective(self, buffers, tasks):
        if tasks.query_y.is_floating_point():
            raise ValueError("learner protomaml builds its head from class prototypes and needs integer class labels "
                             "(tasks with real-valued targets: use learner.name=maml)")
        return self.task_objective_ways(tasks.ways)

    def adapt(self, params, buffers, support_x, support_y, ways):
        """Fast weights of every task (head [T, ways, D] included), stacked; evaluation: no meta-gradient."""
        params = {k: v.detach() for k, v in params.items()}
        names = self.adapted_names({**params, HEAD_W: None, HEAD_B: None})

        def one(p, b, sx, sy):
            fast = self.adapt_task(p, b, sx, sy, ways, False)
            return {k: fast[k].detach() for k in names}

        return map_tasks(one, (params, buffers), (support_x, support_y), self.resolve_path(support_x))
