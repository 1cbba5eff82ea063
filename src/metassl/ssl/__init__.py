"""Self-supervised methods, one file each (loss, heads, momentum state), found by plugin discovery like the
meta-learners: SimCLR, MoCo v2, BYOL, SimSiam, Barlow Twins, VICReg, RotNet, and PsCo (unsupervised meta-learning
on MoCo's pieces). Losses in `losses.py` and heads in `heads.py` are plain building blocks usable without the
trainer; `base.py` has the shared pieces (heads as stateless shapes, EMA targets, collapse monitor, few-shot
evaluation by nearest class mean on frozen features); `auxiliary.py` adds self-supervised terms to any learner."""
