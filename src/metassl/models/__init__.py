"""Backbones: encoders from images to feature vectors, chosen by name (`model.backbone`) in configs."""

from .registry import BACKBONES, BackboneSpec, build_backbone, feature_dim, get_backbone, register_backbone

__all__ = ["BACKBONES", "BackboneSpec", "build_backbone", "feature_dim", "get_backbone", "register_backbone"]
