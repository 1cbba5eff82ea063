"""Backbones: encoders from images to feature vectors, chosen by name (`model.backbone`) in configs."""

from .registry import BACKBONES, BackboneSpec, build_backbone, feature_dim, get_backbone, register_backbone
from . import conv4, mlp, resnet12, resnet18  # noqa: E402,F401  (registration)

__all__ = ["BACKBONES", "BackboneSpec", "build_backbone", "feature_dim", "get_backbone", "register_backbone"]
