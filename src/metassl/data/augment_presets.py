"""The built-in augmentation presets (`augment.preset`); a new preset is one `register_augmentation` call in any
module of a plugin folder."""

from __future__ import annotations

from dataclasses import replace

from .augment import AugmentSpec, register_augmentation

# SimCLR's CIFAR-10 recipe (colour strength s = 0.5), lightly's CIFAR-10 benchmark
SIMCLR_CIFAR = register_augmentation(AugmentSpec(
    preset="cifar10", crop_scale=(0.08, 1.0), flip=0.5, jitter=0.8, jitter_strength=(0.4, 0.4, 0.4, 0.1),
    grayscale=0.2))
# SimCLR's ImageNet recipe (s = 1.0) with blur, kernel 10% of the side: the default for data sets without their own
SIMCLR_IMAGENET = register_augmentation(AugmentSpec(
    preset="generic", crop_scale=(0.08, 1.0), flip=0.5, jitter=0.8, jitter_strength=(0.8, 0.8, 0.8, 0.2),
    grayscale=0.2, blur=(0.5,)))
# handwritten characters: no colour, no flips (they change the character)
CHARACTERS = AugmentSpec(crop_scale=(0.6, 1.0), crop_ratio=(0.8, 1.25), degrees=10.0, translate=0.05)
register_augmentation(replace(CHARACTERS, preset="omniglot"))
register_augmentation(replace(CHARACTERS, preset="mnist"))
register_augmentation(AugmentSpec(preset="none"))
