"""Self-supervised learners, one file each (loss, heads, momentum state), registered like the meta-learners:
SimCLR, MoCo v2, BYOL, SimSiam, Barlow Twins, VICReg, RotNet. Losses in `losses.py` are plain functions; `base.py`
has the shared pieces (heads as stateless shapes, EMA targets, collapse monitor, few-shot evaluation by nearest
class mean on frozen features).

Import order: the learner registry (metassl.learners) is initialized first; it imports these modules at its end
to register them, so importing either package first works.
"""

from .. import learners as _learners  # noqa: F401  (initializes the registry, which imports the modules below)
from . import barlow_twins, byol, moco, rotnet, simclr, simsiam, vicreg  # noqa: E402,F401  (registration)
from .base import SSLConfig, SSLLearner  # noqa: E402

__all__ = ["SSLConfig", "SSLLearner", "barlow_twins", "byol", "moco", "rotnet", "simclr", "simsiam", "vicreg"]
