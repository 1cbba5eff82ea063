"""Learners: one file per meta-learning method, each registering a config class and a `Learner`."""

from .base import LEARNERS, Learner, LearnerSpec, get_learner, register_learner
from . import protonet  # noqa: E402,F401  (registration)
from . import anil, maml, metasgd, reptile  # noqa: E402,F401  (registration)
from ..ssl import barlow_twins, byol, moco, rotnet, simclr, simsiam, vicreg  # noqa: E402,F401  (self-supervised)
from . import psco  # noqa: E402,F401  (unsupervised meta-learning on the SSL pieces: after them)

__all__ = ["LEARNERS", "Learner", "LearnerSpec", "get_learner", "register_learner"]
