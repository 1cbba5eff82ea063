"""metassl: few-shot learning by meta-learning and self-supervised learning, vectorized over tasks."""

__version__ = "0.1.0"
