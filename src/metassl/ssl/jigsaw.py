"""Jigsaw puzzles (Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles",
ECCV 2016).

Each image is cut into a 3x3 grid of cells; from every cell a tile is cropped at a random position (the gap between
tiles, `gap` = the fraction of the cell side left out, 0.15 as the paper's 64-pixel tiles in 75-pixel cells, so
that edges and low-level continuity cannot give the answer away); the 9 tiles are shuffled by one permutation drawn
from a fixed set of P and the network predicts which (P-way classification). The network is context-free (CFN):
the shared encoder embeds each tile on its own (siamese, one encoder call for all tiles), the 9 features are
concatenated in slot order and an MLP (`hidden` units, ReLU, P outputs; the paper's fc7 / fc8) classifies the
permutation. Each tile is normalized to zero mean and unit variance on its own (`normalize_tiles`, the paper's
shortcut prevention).

The permutation set is the paper's Algorithm 1, deterministic from `permutation_seed`: start from a random
permutation of the 9! and repeatedly add the permutation with the largest summed Hamming distance to those chosen
so far (`selection: mean`; `min`: the largest minimal distance instead, which spreads the set further apart).
It is stored with the run as the buffer `learner.permutations` [P, 9] (a resumed or reloaded run uses the saved
set). `min_distance` > 0 requires every pair of the set to differ in at least that many positions; a set the
greedy search cannot make so, or P > 9!, is a ConfigError.

Deviation: the paper feeds 64x64 tiles of 225x225 images to a network made for that size; here the encoder is the
one used for few-shot evaluation on whole images, so each tile is resized (bilinear) to the image size before the
encoder: the encoder always sees inputs of the size it is evaluated at (and conv features keep their size), at 9x
the cost per image. Tiles must keep at least 2 pixels a side before resizing. The random draws (permutation index
per image, crop offsets per cell) use torch's generator, which the engine seeds and checkpoints; on several
processes each process draws for its own share of the batch.

The pieces are plain functions (`hamming_permutation_set`, `make_jigsaw_tiles`, `jigsaw_views`, `jigsaw_loss`),
reused by `aux.jigsaw` (`ssl/auxiliary.py`).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ConfigError, option
from ..learners.base import LearnerSpec, register_learner
from .base import SSLConfig, SSLLearner, fp32
from .heads import MLPHead

TILES = 9  # 3 x 3
MIN_TILE = 2  # pixels per tile side before resizing: below that a tile has no inner structure
PERMS = "learner.permutations"


@functools.lru_cache(maxsize=4)
def all_permutations(n: int) -> torch.Tensor:
    """Every permutation of range(n) in lexicographic order, [n!, n] uint8."""
    return torch.tensor(list(itertools.permutations(range(n))), dtype=torch.uint8)


def hamming_distances(perms: torch.Tensor) -> torch.Tensor:
    """[P, P] number of positions at which two permutations differ."""
    return (perms[:, None, :] != perms[None, :, :]).sum(-1)


def min_hamming_distance(perms: torch.Tensor) -> int:
    """The smallest Hamming distance between two different members of the set."""
    d = hamming_distances(perms)
    return int(d.masked_fill(torch.eye(len(perms), dtype=torch.bool), perms.shape[1] + 1).min())


@functools.lru_cache(maxsize=8)
def _greedy(count: int, seed: int, n: int, selection: str) -> torch.Tensor:
    pool = all_permutations(n)
    total = pool.shape[0]
    g = torch.Generator().manual_seed(seed)
    j = int(torch.randint(total, (1,), generator=g))
    score = torch.zeros(total, dtype=torch.int32) if selection == "mean" else \
        torch.full((total,), n + 1, dtype=torch.int32)
    taken = torch.zeros(total, dtype=torch.bool)
    chosen = []
    for _ in range(count):
        chosen.append(j)
        taken[j] = True
        d = (pool != pool[j]).sum(1, dtype=torch.int32)
        score = score + d if selection == "mean" else torch.minimum(score, d)
        # argmax returns the first maximum: ties go to the lexicographically first permutation (deterministic)
        j = int(score.masked_fill(taken, -1).argmax())
    return pool[chosen].long()


def hamming_permutation_set(count: int, seed: int = 0, n: int = TILES, selection: str = "mean",
                            min_distance: int = 0) -> torch.Tensor:
    """A set of `count` permutations of range(n) [count, n] (int64), chosen greedily for maximal Hamming distance
    (Noroozi & Favaro 2016, Algorithm 1; `selection`: 'mean' = the paper's summed distance, 'min' = the minimal
    distance to the chosen ones), starting from a permutation drawn with `seed`. ValueError when count > n! or the
    set's minimal pairwise distance is below `min_distance`."""
    if selection not in ("mean", "min"):
        raise ValueError(f"selection must be 'mean' or 'min', got {selection!r}")
    if not 1 <= count <= math.factorial(n):
        raise ValueError(f"{count} permutations of {n} tiles: there are only {math.factorial(n)} (need 1..{n}!)")
    perms = _greedy(int(count), int(seed), int(n), selection).clone()
    if min_distance and count > 1:
        got = min_hamming_distance(perms)
        if got < min_distance:
            raise ValueError(f"the greedy maximal-Hamming search over {count} permutations reaches a minimal "
                             f"pairwise distance of {got}, below the required {min_distance}")
    return perms


def jigsaw_geometry(h: int, w: int, gap: float) -> tuple[int, int, int, int, int, int]:
    """(cell_h, cell_w, tile_h, tile_w, top, left) of the 3x3 grid on an h x w image, centred (top, left: the
    unused border); each tile is cell x (1 - gap) pixels, rounded (75 px cells, gap 0.15: the paper's 64 px)."""
    ch, cw = h // 3, w // 3
    th, tw = int(math.floor(ch * (1 - gap) + 0.5)), int(math.floor(cw * (1 - gap) + 0.5))
    return ch, cw, th, tw, (h - 3 * ch) // 2, (w - 3 * cw) // 2


def check_geometry(h: int, w: int, gap: float, key: str = "learner.gap") -> None:
    """ConfigError when h x w images give tiles under MIN_TILE pixels (`key`: the setting that chose `gap`)."""
    _, _, th, tw, _, _ = jigsaw_geometry(h, w, gap)
    if min(th, tw) < MIN_TILE:
        raise ConfigError(f"jigsaw: images of {h}x{w} are too small for 3x3 tiles of at least {MIN_TILE} pixels "
                          f"with {key}={gap} (tiles would be {th}x{tw}): use larger images (data.image_size)"
                          + ("" if key.startswith("aux.") else f" or a smaller {key}"))


def make_jigsaw_tiles(images: torch.Tensor, permutations: torch.Tensor, labels: torch.Tensor,
                      offsets: torch.Tensor, gap: float) -> torch.Tensor:
    """The shuffled tiles [B, 9, C, th, tw] of images [B, C, H, W]: slot j of image b holds the tile of cell
    permutations[labels[b], j] (cells numbered row-major), cropped `offsets[b, cell]` = (dy, dx) pixels (each in
    [0, cell - tile]) from the cell's top-left corner."""
    b, c, h, w = images.shape
    ch, cw, th, tw, top, left = jigsaw_geometry(h, w, gap)
    cells = permutations[labels]  # [B, 9]: the cell shown in each slot
    oy = offsets[..., 0].gather(1, cells)
    ox = offsets[..., 1].gather(1, cells)
    y0 = top + (cells // 3) * ch + oy
    x0 = left + (cells % 3) * cw + ox
    rows = y0[..., None] + torch.arange(th, device=images.device)  # [B, 9, th]
    cols = x0[..., None] + torch.arange(tw, device=images.device)  # [B, 9, tw]
    bi = torch.arange(b, device=images.device)[:, None, None, None]
    tiles = images.permute(0, 2, 3, 1)[bi, rows[..., :, None], cols[..., None, :]]  # [B, 9, th, tw, C]
    return tiles.permute(0, 1, 4, 2, 3)


def jigsaw_views(images: torch.Tensor, permutations: torch.Tensor, gap: float = 0.15, normalize: bool = True,
                 generator: torch.Generator | None = None, key: str = "learner.gap"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One puzzle per image: (tiles [B, 9, C, H, W], each tile normalized on its own when `normalize` and resized to
    the image size H x W; permutation labels [B]). The permutation index and the crop offsets are drawn from
    `generator` (default: torch's)."""
    b, c, h, w = images.shape
    check_geometry(h, w, gap, key)
    ch, cw, th, tw, _, _ = jigsaw_geometry(h, w, gap)
    dev = images.device
    labels = torch.randint(permutations.shape[0], (b,), device=dev, generator=generator)
    u = torch.rand(b, TILES, 2, device=dev, generator=generator)
    span = torch.tensor([ch - th + 1, cw - tw + 1], device=dev)
    offsets = (u * span).long().minimum(span - 1)
    tiles = make_jigsaw_tiles(images, permutations.to(dev), labels, offsets, gap)
    if normalize:
        flat = tiles.flatten(2)
        tiles = ((flat - flat.mean(-1, keepdim=True)) / torch.sqrt(flat.var(-1, keepdim=True, unbiased=False)
                                                                     + 1e-6)).view_as(tiles)
    if (th, tw) != (h, w):
        tiles = F.interpolate(tiles.flatten(0, 1), size=(h, w), mode="bilinear", align_corners=False)
        tiles = tiles.view(b, TILES, c, h, w)
    return tiles, labels


def jigsaw_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the permutation logits [B, P] against the permutation indices [B]; (loss, accuracy)."""
    logits = logits.float()
    return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean().detach()


@dataclass
class JigsawConfig(SSLConfig):
    name: str = "jigsaw"
    permutations: int = option(100, range=(2, math.factorial(TILES)), help="size P of the permutation set (paper: "
                               "1000 best for transfer, 100 in its ablation)")
    selection: str = option("mean", choices=("mean", "min"), help="greedy choice of the next permutation: the "
                            "largest summed Hamming distance (paper, Algorithm 1) or the largest minimal one")
    min_distance: int = option(0, range=(0, TILES), help="every two permutations must differ in at least this many "
                               "positions (0: no requirement)")
    permutation_seed: int = option(0, range=(0, None), help="seed of the first permutation of the set")
    gap: float = option(0.15, range=(0.0, 0.9), help="fraction of each cell side left out; the tile is cropped at a "
                        "random position in its cell (paper: 64-pixel tiles in 75-pixel cells)")
    normalize_tiles: bool = option(True, help="normalize every tile to zero mean, unit variance (paper)")
    hidden: int = option(1024, range=(1, None), help="hidden width of the permutation classifier (paper fc7: 4096)")


def permutation_set(cfg: JigsawConfig, key: str = "learner") -> torch.Tensor:
    try:
        return hamming_permutation_set(cfg.permutations, cfg.permutation_seed, TILES, cfg.selection,
                                       cfg.min_distance)
    except ValueError as e:
        raise ConfigError(f"{key}.permutations={cfg.permutations} (with {key}.min_distance={cfg.min_distance}, "
                          f"{key}.selection={cfg.selection}): {e}; choose fewer permutations or a smaller "
                          f"{key}.min_distance") from e


class Jigsaw(SSLLearner):
    global_loss = False  # a mean over images: each process's share of it
    views_required = None  # every view is an image to cut
    min_batch = 1

    def __init__(self, config, encoder, options=None):
        super().__init__(config, encoder, options)
        self.perms = permutation_set(config)  # checked at build time

    def build_heads(self, feature_dim):
        c = self.config
        return {"classifier": MLPHead([TILES * feature_dim, c.hidden, c.permutations], hidden_bn=False)}

    def init_buffers(self, params, buffers):
        return {**super().init_buffers(params, buffers), PERMS: self.perms.clone()}

    def loss(self, params, buffers, batch):
        views = batch.views
        self.check_batch(views)
        c = self.config
        images = views.reshape(-1, *views.shape[-3:])
        tiles, labels = jigsaw_views(images, buffers[PERMS], c.gap, c.normalize_tiles)
        f = self.embed(params, buffers, tiles)  # [B, 9, D]: every tile through the shared encoder, one call
        logits = self.head("classifier", {**params, **buffers}, f.flatten(1))
        with fp32(logits):
            loss, acc = jigsaw_loss(logits, labels)
        return self.output(loss, {"accuracy": acc}, f.flatten(0, 1))


register_learner(LearnerSpec(
    "jigsaw", JigsawConfig, Jigsaw,
    "pretext task: which of P maximal-Hamming permutations shuffled the 3x3 tiles (context-free network)",
    default_source="views"))
