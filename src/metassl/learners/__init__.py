"""Meta-learning methods, one file each (a config class + a `Learner` subclass + `register_learner`), found by plugin
discovery; `base.py` holds the contract every learner (meta-learning or self-supervised) follows."""

from .base import Learner, LearnerSpec, LossOutput, get_learner, register_learner

__all__ = ["Learner", "LearnerSpec", "LossOutput", "get_learner", "register_learner"]
