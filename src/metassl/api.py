"""Use a trained model on your own images: load, adapt to a few labeled examples, predict.

    from metassl.api import FewShotClassifier
    clf = FewShotClassifier.load("runs/demo")              # a run folder or checkpoint folder
    clf.fit(["a1.png", "a2.png", "b1.png"], ["a", "a", "b"])  # paths, PIL images, numpy arrays or tensors
    clf.predict(["q1.png", "q2.png"])                       # -> ["a", "b"]
    clf.predict_proba(["q1.png"])                           # -> numpy [1, 2], columns in clf.classes_ order

The model adapts the way its learner does (ProtoNet: class means; MAML family: its inner loop with the evaluation
steps; self-supervised encoders: nearest class mean), or with `classifier="logistic"`, by logistic regression on
frozen encoder features. Images are converted exactly as at training time: the checkpoint records the size, the
number of channels and the normalization (including ink inversion for Omniglot-like data).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .data.images import IMAGE_EXTENSIONS, ImageReadError, decode_image, resize_uint8
from .engine.build import Model, load_model
from .eval.features import embed_images

ImageLike = Any  # str | Path | PIL.Image.Image | np.ndarray | torch.Tensor


class SupportSetError(ValueError):
    """The labeled examples cannot define a classification task; the message says why and what to do."""


def _pil_to_array(img, channels: int) -> np.ndarray:
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def to_uint8_image(image: ImageLike, image_shape: tuple[int, int, int], name: str | None = None) -> torch.Tensor:
    """One image as uint8 [C, H, W] of the training shape: decode, fix channels (gray <-> RGB, alpha onto white),
    resize with the same antialiased filter the data loaders use."""
    c, h, w = image_shape
    if isinstance(image, (str, os.PathLike)):
        arr = decode_image(image, c)
    elif hasattr(image, "convert") and hasattr(image, "mode"):  # PIL image
        arr = _pil_to_array(image, c)
    else:
        t = torch.as_tensor(np.array(image) if not torch.is_tensor(image) else image)
        if t.dim() == 2:
            t = t[None]
        if t.dim() != 3:
            raise ValueError(f"{name or 'image'}: expected HxW, HxWxC or CxHxW, got shape {tuple(t.shape)}")
        if t.shape[0] not in (1, 3, 4) and t.shape[-1] in (1, 3, 4):
            t = t.permute(2, 0, 1)  # HWC -> CHW
        if t.is_floating_point():
            t = (t.clamp(0, 1) * 255).round()
        t = t.to(torch.uint8)
        if t.shape[0] == 4:  # alpha onto white
            a = t[3:].float() / 255
            t = (t[:3].float() * a + 255 * (1 - a)).round().to(torch.uint8)
        arr = t.permute(1, 2, 0).numpy()
        if arr.shape[2] == 3 and c == 1:
            arr = np.asarray(np.round(arr @ np.array([0.299, 0.587, 0.114])), dtype=np.uint8)[:, :, None]
        elif arr.shape[2] == 1 and c == 3:
            arr = np.repeat(arr, 3, axis=2)
    t = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None]
    return resize_uint8(t, (h, w))[0]


def list_image_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """A folder (searched recursively for image files) or a list of files."""
    if isinstance(paths, (str, os.PathLike)):
        p = Path(paths)
        if p.is_dir():
            return sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS
                          and not any(part.startswith(".") for part in q.relative_to(p).parts))
        return [p]
    return [Path(p) for p in paths]


def read_support_folder(folder: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """`folder/<class>/<image>` -> (image paths, class names); any count >= 1 per class."""
    root = Path(folder)
    if not root.is_dir():
        raise SupportSetError(f"support folder {root} does not exist or is not a folder")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SupportSetError(f"support folder {root} has no class sub-folders: put each class's labeled images "
                              f"in {root}/<class name>/")
    paths, labels = [], []
    for c in classes:
        files = sorted(q for q in c.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS
                       and not q.name.startswith("."))
        if not files:
            raise SupportSetError(f"class folder {c} holds no images ({', '.join(IMAGE_EXTENSIONS)}); add at "
                                  f"least one labeled image or remove the folder")
        paths += files
        labels += [c.name] * len(files)
    return paths, labels


@dataclass
class Prediction:
    path: str
    label: str | None
    probability: float | None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None


class FewShotClassifier:
    """A trained model plus the support set it has adapted to."""

    def __init__(self, model: Model, info: dict[str, Any], classifier: str = "learner", batch_size: int = 256):
        if classifier not in ("learner", "logistic"):
            raise ValueError(f"classifier must be 'learner' or 'logistic', got {classifier!r}")
        self.model, self.info, self.classifier, self.batch_size = model, info, classifier, batch_size
        self.classes_: list[str] = []
        self._state: Any = None
        self._device = next(iter(model.params.values())).device

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", which: str = "latest", classifier: str = "learner"
             ) -> "FewShotClassifier":
        model, info = load_model(path, torch.device(device), which)
        return cls(model, info, classifier)

    # -- inputs ------------------------------------------------------------------------------------------------
    def images_to_tensor(self, images: Sequence[ImageLike]) -> torch.Tensor:
        shape = tuple(self.model.image_shape)
        return torch.stack([to_uint8_image(im, shape, str(im) if isinstance(im, (str, Path)) else None)
                            for im in images]) if len(images) else torch.zeros(0, *shape, dtype=torch.uint8)

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.preprocess(x.to(self._device))

    # -- adapt ---------------------------------------------------------------------------------------------------
    def fit(self, images: Sequence[ImageLike], labels: Sequence[Any]) -> "FewShotClassifier":
        """Adapt to labeled examples (any number >= 1 per class, at least two classes)."""
        if len(images) != len(labels):
            raise SupportSetError(f"{len(images)} support images but {len(labels)} labels")
        counts = Counter(str(y) for y in labels)
        if len(counts) < 2:
            only = next(iter(counts), "none")
            raise SupportSetError(f"the support set has one class ({only!r}, {counts.get(only, 0)} images): "
                                  f"a classifier needs labeled images of at least two classes")
        self.classes_ = sorted(counts)
        index = {c: i for i, c in enumerate(self.classes_)}
        y = torch.tensor([index[str(v)] for v in labels], device=self._device)
        images_u8 = self.images_to_tensor(images)
        m = self.model
        m.train(False)
        if self.classifier == "logistic":
            self._state = self._fit_logistic(images_u8, y)
            return self
        x = self._prep(images_u8)
        with torch.no_grad():
            self._state = m.learner.adapt(m.params, m.buffers, x[None], y[None], len(self.classes_))
        return self

    def fit_folder(self, folder: str | os.PathLike) -> "FewShotClassifier":
        paths, labels = read_support_folder(folder)
        return self.fit(paths, labels)

    def _embed(self, images: torch.Tensor) -> np.ndarray:
        """L2-normalized frozen-encoder features of uint8 images, for the logistic classifier."""
        z = embed_images(self.model, images, self.model.preprocess, self.batch_size)
        return torch.nn.functional.normalize(z, dim=-1).cpu().numpy()

    def _fit_logistic(self, images: torch.Tensor, y: torch.Tensor):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=2000, C=10.0).fit(self._embed(images), y.cpu().numpy())

    # -- predict -------------------------------------------------------------------------------------------------
    def predict_proba_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities [Q, N] for uint8 images [Q, C, H, W] of the training shape."""
        if self._state is None:
            raise RuntimeError("call fit(...) or fit_folder(...) with labeled examples first")
        m = self.model
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            if self.classifier == "logistic":
                z = self._embed(x[i:i + self.batch_size])
                out.append(torch.from_numpy(self._state.predict_proba(z)).float())
                continue
            q = self._prep(x[i:i + self.batch_size])
            with torch.no_grad():
                logits = m.learner.classify(m.params, m.buffers, self._state, q[None])[0]
            out.append(logits.detach().float().softmax(-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.classes_))

    def predict_proba(self, images: Sequence[ImageLike]) -> np.ndarray:
        return self.predict_proba_tensor(self.images_to_tensor(images)).numpy()

    def predict(self, images: Sequence[ImageLike]) -> list[str]:
        p = self.predict_proba(images)
        return [self.classes_[i] for i in p.argmax(1)] if len(p) else []

    def predict_files(self, files: Sequence[str | os.PathLike]) -> list[Prediction]:
        """One Prediction per file, in order; a file that cannot be read gives an error row, not an exception."""
        rows: list[Prediction | None] = [None] * len(files)
        good, tensors = [], []
        shape = tuple(self.model.image_shape)
        for i, f in enumerate(files):
            try:
                tensors.append(to_uint8_image(f, shape))
                good.append(i)
            except (ImageReadError, OSError, ValueError) as e:  # also a decompression bomb (ImageReadError)
                rows[i] = Prediction(str(f), None, None, {}, str(e))
            except MemoryError:
                rows[i] = Prediction(str(f), None, None, {}, f"cannot read image {f}: not enough memory to decode it")
        if tensors:
            probs = self.predict_proba_tensor(torch.stack(tensors))
            for i, p in zip(good, probs):
                if not bool(torch.isfinite(p).all()):  # NaN is no answer: say so instead of a label chosen by argmax
                    rows[i] = Prediction(str(files[i]), None, None, {}, "the model gave non-finite probabilities "
                                         "(its weights or this image's features hold NaN or inf)")
                    continue
                k = int(p.argmax())
                rows[i] = Prediction(str(files[i]), self.classes_[k], float(p[k]),
                                     {c: float(v) for c, v in zip(self.classes_, p)})
        return rows  # type: ignore[return-value]
