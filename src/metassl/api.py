"""Use a trained model on your own images: load, adapt to a few labeled examples, predict.

    from metassl.api import FewShotClassifier
    clf = FewShotClassifier.load("runs/demo")              # a run folder or checkpoint folder
    clf.fit(["a1.png", "a2.png", "b1.png"], ["a", "a", "b"])  # paths, PIL images, numpy arrays or tensors
    clf.predict(["q1.png", "q2.png"])                       # -> ["a", "b"]
    clf.predict_proba(["q1.png"])                           # -> numpy [1, 2], columns in clf.classes_ order

The model adapts the way its learner does (ProtoNet: class means; MAML family: its inner loop with the evaluation
steps; self-supervised encoders: nearest class mean), or with `classifier="logistic"`, by logistic regression on
frozen encoder features, or with `transductive="ptmap"` (any method of `metassl.eval.transductive`) by a method
that classifies all the images given to one `predict` call together, also using an unlabeled pool
(`add_unlabeled(folder)`, streamed in chunks of `batch_size`; only its features are kept, and for methods that
fine-tune the encoder at most `max_unlabeled` of its images, a fixed random subset):

    clf = FewShotClassifier.load("runs/demo", transductive="ptmap").fit_folder("support/")
    clf.add_unlabeled("more_unlabeled_images/")
    clf.predict(query_paths)                                # every query image is also unlabeled data

Images are converted exactly as at training time: the checkpoint records the size, the number of channels and the
normalization (including ink inversion for Omniglot-like data), and the training images' statistics: an image whose
background is on the other side of the training images' (white on black for a model trained on black on white) is
inverted first (`polarity="keep"`: never), and images far outside the training statistics are flagged
(`Prediction.input_warning`, `support_warnings`).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .data.input_stats import NO_STATS, InputCheck
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
            from .data.loaders.folder import unlabeled_files

            return unlabeled_files(p)
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
    input_warning: str | None = None  # why the image is far outside the training images, if it is


class FewShotClassifier:
    """A trained model plus the support set it has adapted to."""

    def __init__(self, model: Model, info: dict[str, Any], classifier: str = "learner", batch_size: int = 256,
                 transductive: str | None = None, transductive_options: dict[str, Any] | None = None,
                 max_unlabeled: int = 2000, polarity: str = "auto"):
        if classifier not in ("learner", "logistic"):
            raise ValueError(f"classifier must be 'learner' or 'logistic', got {classifier!r}")
        if transductive and classifier != "learner":
            raise ValueError(f"transductive={transductive!r} replaces the classifier; it cannot be combined with "
                             f"classifier={classifier!r}")
        self.model, self.info, self.classifier, self.batch_size = model, info, classifier, batch_size
        self.classes_: list[str] = []
        self._state: Any = None
        self._device = next(iter(model.params.values())).device
        self.transductive, self.max_unlabeled = transductive or None, int(max_unlabeled)
        self._options = dict(transductive_options or {})
        if self.transductive:
            from .eval.transductive import method_config, method_spec

            self._method = method_spec(self.transductive)
            self._method_cfg = method_config(self.transductive, self._options)  # validated now, not at predict
        self._support: tuple[torch.Tensor, torch.Tensor] | None = None  # preprocessed images, labels
        self._pool_z: list[torch.Tensor] = []  # features of the unlabeled pool, chunk by chunk
        self._pool_x: torch.Tensor | None = None  # its images, for methods that fine-tune the encoder
        self.unlabeled_count, self.unlabeled_skipped = 0, 0
        self.notes: list[str] = []  # what the transductive method changed for this query set (printed by the CLI)
        self.inputs = InputCheck(model.preprocess.stats, model.preprocess, polarity)
        # images inverted to the training polarity: role -> [inverted, seen]; the support images' warnings
        self.inverted: dict[str, list[int]] = {"support": [0, 0], "query": [0, 0], "unlabeled": [0, 0]}
        self.support_warnings: list[str | None] = []
        self.input_note = NO_STATS if model.preprocess.stats is None and len(model.image_shape) == 3 else None
        if self.input_note:
            warnings.warn(f"{info.get('checkpoint', 'the model')} {NO_STATS}", stacklevel=3)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", which: str = "latest", classifier: str = "learner",
             transductive: str | None = None, transductive_options: dict[str, Any] | None = None,
             max_unlabeled: int = 2000, polarity: str = "auto") -> "FewShotClassifier":
        """polarity: "auto" inverts images whose background is on the other side of the training images', "keep"
        uses them as given."""
        model, info = load_model(path, torch.device(device), which)
        return cls(model, info, classifier, transductive=transductive, transductive_options=transductive_options,
                   max_unlabeled=max_unlabeled, polarity=polarity)

    # -- inputs ------------------------------------------------------------------------------------------------
    def images_to_tensor(self, images: Sequence[ImageLike]) -> torch.Tensor:
        shape = tuple(self.model.image_shape)
        return torch.stack([to_uint8_image(im, shape, str(im) if isinstance(im, (str, Path)) else None)
                            for im in images]) if len(images) else torch.zeros(0, *shape, dtype=torch.uint8)

    def _pre(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> network input: the polarity correction, then the recorded preprocessing."""
        return self.model.preprocess(self.inputs.fix(x))

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return self._pre(x.to(self._device))

    def _count(self, role: str, x: torch.Tensor) -> None:
        n = self.inverted[role]
        n[0] += int(self.inputs.flips(x).sum())
        n[1] += x.shape[0]

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
        self.inverted["support"] = [0, 0]
        self._count("support", images_u8)
        self.support_warnings = self.inputs.warnings(images_u8)
        m = self.model
        m.train(False)
        if self.classifier == "logistic":
            self._state = self._fit_logistic(images_u8, y)
            return self
        x = self._prep(images_u8)
        self._support = (x, y)
        with torch.no_grad():
            self._state = m.learner.adapt(m.params, m.buffers, x[None], y[None], len(self.classes_))
        return self

    def fit_folder(self, folder: str | os.PathLike) -> "FewShotClassifier":
        paths, labels = read_support_folder(folder)
        return self.fit(paths, labels)

    def _embed(self, images: torch.Tensor) -> np.ndarray:
        """L2-normalized frozen-encoder features of uint8 images, for the logistic classifier."""
        z = embed_images(self.model, images, self._pre, self.batch_size)
        return torch.nn.functional.normalize(z, dim=-1).cpu().numpy()

    def _fit_logistic(self, images: torch.Tensor, y: torch.Tensor):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=2000, C=10.0).fit(self._embed(images), y.cpu().numpy())

    # -- unlabeled data (transductive methods) --------------------------------------------------------------------
    def add_unlabeled(self, images: str | os.PathLike | Sequence[ImageLike]) -> "FewShotClassifier":
        """Add unlabeled images (a folder, searched recursively, or a list of files / images) that the transductive
        method uses beside the query images; they are never predicted. Read and embedded `batch_size` at a time, so
        a pool far larger than memory works (its features are kept: 4 * D bytes per image); unreadable files are
        skipped and counted in `unlabeled_skipped`."""
        if not self.transductive:
            raise ValueError("unlabeled images are used by transductive methods only: load the classifier with "
                             "transductive=NAME (e.g. 'ptmap' or 'softkmeans')")
        items = list_image_files(images) if isinstance(images, (str, os.PathLike)) else list(images)
        if self._method.needs_encoder and len(items) > self.max_unlabeled:
            # a method that back-propagates through the encoder holds the pool's images: a fixed random subset
            keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(0))[:self.max_unlabeled]
            items = [items[i] for i in sorted(keep.tolist())]
            self.notes.append(f"{self.transductive} fine-tunes the encoder: it uses {self.max_unlabeled} of the "
                              f"unlabeled images (a fixed random subset; max_unlabeled)")
        shape = tuple(self.model.image_shape)
        for i in range(0, len(items), self.batch_size):
            chunk = []
            for item in items[i:i + self.batch_size]:
                try:
                    chunk.append(to_uint8_image(item, shape, str(item) if isinstance(item, (str, Path)) else None))
                except (ImageReadError, OSError, ValueError, MemoryError):
                    self.unlabeled_skipped += 1
            if not chunk:
                continue
            x = torch.stack(chunk)
            self._count("unlabeled", x)
            self.unlabeled_count += x.shape[0]
            if self._method.needs_encoder:
                self._pool_x = x if self._pool_x is None else torch.cat([self._pool_x, x])
            else:
                self._pool_z.append(self._features(x))
        return self

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features [M, D] of uint8 images, `batch_size` at a time, as `eval.transductive` embeds them."""
        m = self.model
        m.train(False)
        out = []
        with torch.no_grad():
            for i in range(0, x.shape[0], self.batch_size):
                q = self._prep(x[i:i + self.batch_size])
                out.append(m.learner.embed(m.params, m.buffers, q[None], per_task=True)[0])
        return torch.cat(out) if out else torch.zeros(0)

    def _method_config_for(self, unlabeled: int):
        """The method's options for a set of `unlabeled` images (queries + pool): a method that assumes balanced
        query classes cannot when there are fewer images than classes, so it runs with its unbalanced options
        (those the user did not set)."""
        import dataclasses

        cfg, ways, spec = self._method_cfg, len(self.classes_), self._method
        changes = {k: v for k, v in spec.unbalanced_options if k not in self._options}
        if not (spec.assumes_balanced and unlabeled < ways and changes):
            return cfg
        note = (f"{self.transductive} assumes every class has the same number of query images, which cannot hold "
                f"for {unlabeled} images and {ways} classes: ran with "
                + ", ".join(f"{k}={str(v).lower()}" for k, v in changes.items()))
        if note not in self.notes:
            self.notes.append(note)
        return dataclasses.replace(cfg, **changes)

    def _transductive_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities [Q, N] of all query images x (uint8) classified together by the method."""
        m, spec = self.model, self._method
        sx, sy = self._support
        ways = len(self.classes_)
        pool_size = self.unlabeled_count
        cfg = self._method_config_for(x.shape[0] + pool_size)
        m.train(False)
        with torch.no_grad():
            if spec.needs_encoder:
                pool = None if self._pool_x is None else self._prep(self._pool_x)[None]
                logp = spec.run(m.learner, m.params, m.buffers, sx[None], sy[None], self._prep(x)[None], ways, pool,
                                cfg)[0]
            else:
                zs = m.learner.embed(m.params, m.buffers, sx[None], per_task=True)
                zu = torch.cat(self._pool_z)[None] if self._pool_z else None
                logp = spec.run(zs, sy[None], self._features(x)[None], ways, zu, cfg)[0]
        p = logp.detach().float().exp()
        return (p / p.sum(-1, keepdim=True)).cpu()

    # -- predict -------------------------------------------------------------------------------------------------
    def predict_proba_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities [Q, N] for uint8 images [Q, C, H, W] of the training shape. With a transductive
        method, the Q images are classified together (they are its unlabeled data, with the pool)."""
        if self._state is None:
            raise RuntimeError("call fit(...) or fit_folder(...) with labeled examples first")
        if self.transductive:
            return self._transductive_proba(x) if x.shape[0] else torch.zeros(0, len(self.classes_))
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
            x = torch.stack(tensors)
            self._count("query", x)
            notes = self.inputs.warnings(x)
            probs = self.predict_proba_tensor(x)
            for i, p, note in zip(good, probs, notes):
                if not bool(torch.isfinite(p).all()):  # NaN is no answer: say so instead of a label chosen by argmax
                    rows[i] = Prediction(str(files[i]), None, None, {}, "the model gave non-finite probabilities "
                                         "(its weights or this image's features hold NaN or inf)")
                    continue
                k = int(p.argmax())
                rows[i] = Prediction(str(files[i]), self.classes_[k], float(p[k]),
                                     {c: float(v) for c, v in zip(self.classes_, p)}, input_warning=note)
        return rows  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------------
# tables (issue 18): a run trained on the `table` data set, applied to rows of your own CSV / Parquet / NumPy files


TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".npy", ".npz")


@dataclass
class TablePredictions:
    """`predict_table`'s result: one row per query row. Classification: `classes` (the support set's, in the order of
    the probability columns), `predicted` labels and `probabilities` [Q, N]; regression: `target_columns` and
    `predicted` values [Q, P] in the targets' original units."""

    task_type: str
    columns: list[str]
    predicted: list[Any]
    probabilities: np.ndarray | None = None

    def rows(self) -> list[list[Any]]:
        """CSV rows: the query row index, then the prediction (and the class probabilities)."""
        if self.task_type == "regression":
            return [[i, *[f"{v:.6g}" for v in p]] for i, p in enumerate(self.predicted)]
        return [[i, c, f"{float(self.probabilities[i].max()):.6f}", *[f"{v:.6f}" for v in self.probabilities[i]]]
                for i, c in enumerate(self.predicted)]

    def header(self) -> list[str]:
        if self.task_type == "regression":
            return ["row", *[f"predicted {c}" for c in self.columns]]
        return ["row", "predicted", "probability", *[f"p({c})" for c in self.columns]]


def predict_table(run: str | os.PathLike, support: str | os.PathLike, query: str | os.PathLike,
                  device: str = "cpu", which: str = "latest") -> TablePredictions:
    """Adapt a table run to the labeled rows of `support` (its label column, or target columns, as in training) and
    predict every row of `query`. Both are encoded with the encoding recorded in the checkpoint (columns, one-hot
    categories, the training split's means and standard deviations), so no training data is needed."""
    from .data.loaders.table import encode_rows, encode_targets, natural_key, read_table
    from .errors import ConfigError

    model, info = load_model(run, device, which)
    enc = (info.get("preprocess") or {}).get("table")
    if not enc:
        raise ConfigError(f"{run}: was not trained on a table (data.dataset={model.config.data.dataset}); predict on "
                          f"image folders with --support DIR --query DIR instead")
    s_table, q_table = read_table(support), read_table(query)
    sx, qx = encode_rows(s_table, enc, support), encode_rows(q_table, enc, query)
    dev = next(iter(model.params.values())).device
    if enc["target_columns"]:
        sy = encode_targets(s_table, enc, support)
        with torch.no_grad():
            out = model.predict(sx[None].to(dev), sy[None].to(dev), qx[None].to(dev), None)[0].cpu().double()
        cols = list(enc["target_columns"])
        if "target_mean" in enc:  # back to the targets' units
            out = out * torch.tensor([enc["target_std"][c] for c in cols]) + torch.tensor(
                [enc["target_mean"][c] for c in cols])
        return TablePredictions("regression", cols, out.tolist())
    label = enc["label_column"]
    if label not in s_table:
        raise ConfigError(f"{support}: the support rows need the label column {label!r} the run was trained with; "
                          f"its columns are: {', '.join(c for c in s_table if c != '__x__')}")
    names = [str(v).strip() for v in s_table[label]]
    classes = sorted(set(names), key=natural_key)
    if len(classes) < 2:
        raise SupportSetError(f"{support}: the support rows hold {len(classes)} class ({classes}); give rows of at "
                              f"least two classes")
    index = {c: i for i, c in enumerate(classes)}
    sy = torch.tensor([index[n] for n in names])
    with torch.no_grad():
        logits = model.predict(sx[None].to(dev), sy[None].to(dev), qx[None].to(dev), len(classes))[0].float()
    proba = torch.softmax(logits, -1).cpu().numpy()
    return TablePredictions("classification", classes, [classes[int(i)] for i in proba.argmax(1)], proba)


# ---------------------------------------------------------------------------------------------------------------
# texts (issue 18): a run trained on the `text` data set, applied to your own .txt files


def text_run_encoding(run: str | os.PathLike, which: str = "latest") -> dict | None:
    """The text encoding a run recorded (`preprocess.text`), or None for a run not trained on texts."""
    import json

    from .engine.checkpoint import find_checkpoint

    try:
        state = json.loads((find_checkpoint(run, which) / "state.json").read_text())
    except Exception:  # noqa: BLE001 - not a readable run: the image path loads it again and names the problem
        return None
    return (state.get("preprocess") or {}).get("text")


def predict_texts(run: str | os.PathLike, support: str | os.PathLike, query: Sequence[str | os.PathLike],
                  device: str = "cpu", which: str = "latest") -> tuple[list[str], list[Prediction]]:
    """Adapt a text run to `support` (a folder of <class>/*.txt) and label every query text (.txt files, or folders
    searched for them; one example per file, or per line as the run was trained). Texts are embedded with the run's
    recorded frozen encoder. Returns (classes, one Prediction per query example; `path` is FILE or FILE:LINE)."""
    from .data.loaders.text import _class_files, read_texts
    from .data.text_encoder import encode_texts
    from .errors import ConfigError

    model, info = load_model(run, device, which)
    enc = (info.get("preprocess") or {}).get("text")
    if not enc:
        raise ConfigError(f"{run}: was not trained on texts (data.dataset={model.config.data.dataset})")
    classes = [(n, fs) for n, fs in _class_files(Path(support)) if fs]
    if len(classes) < 2:
        raise SupportSetError(f"{support}: needs sub-folders of .txt files for at least two classes, found "
                              f"{[n for n, _ in classes]}")
    s_ex = [(i, t) for i, (_, fs) in enumerate(classes) for _, t in read_texts(fs, enc["per_line"])]
    files: list[Path] = []
    for q in query:
        q = Path(q)
        files += sorted(q.rglob("*.txt")) if q.is_dir() else [q]
    q_ex = []
    for f in files:
        ex = read_texts([f], enc["per_line"])
        q_ex += [(f"{f}:{j + 1}" if enc["per_line"] else str(f), t) for j, (_, t) in enumerate(ex)]
    if not q_ex:
        raise FileNotFoundError(f"no query texts found in {', '.join(map(str, query))}")
    dev = next(iter(model.params.values())).device
    sx = encode_texts([t for _, t in s_ex], enc["encoder"], enc["dim"])[None].to(dev)
    qx = encode_texts([t for _, t in q_ex], enc["encoder"], enc["dim"])[None].to(dev)
    sy = torch.tensor([i for i, _ in s_ex])[None].to(dev)
    with torch.no_grad():
        proba = torch.softmax(model.predict(sx, sy, qx, len(classes))[0].float(), -1).cpu()
    names = [n for n, _ in classes]
    rows = [Prediction(p, names[int(pr.argmax())], float(pr.max()), {n: float(v) for n, v in zip(names, pr)})
            for (p, _), pr in zip(q_ex, proba)]
    return names, rows
