"""Run configuration: typed, validated sections loaded from YAML presets plus `key=value` overrides.

The `model`, `learner` and `tasks` sections are open: their valid keys come from the config class the chosen
backbone, learner or task source registered, so a new plugin brings its own keys without touching this file; the
`augment` section is the class the augmentation module registers. Every error names
the key: an unknown key lists the closest valid ones, a bad value gives the allowed range or choices.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .registry import AUGMENTATIONS, BACKBONES, LEARNERS, SECTIONS, TASK_SOURCES

__all__ = ["ConfigError", "option", "RunConfig", "TaskConfig", "LearnerConfig", "load_config", "resolve",
           "check_device_name", "BATCH_KINDS", "source_batch_kind", "learner_batch_kinds"]

#: the largest seed torch's generators accept without overflow (and numpy-free code can hash)
MAX_SEED = 2**63 - 1


def option(default: Any = dataclasses.MISSING, *, range: tuple[float | None, float | None] | None = None,
           choices: tuple | None = None, help: str = "", default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its allowed range (inclusive) or choices and a one-line help text."""
    meta = {"range": range, "choices": choices, "help": help}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------------------------
# the fixed sections


@dataclass
class DataConfig:
    dataset: str = option("omniglot", help="registered data set name (see `metassl datasets`)")
    root: str | None = option(None, help="data root; default --data-root, $METASSL_DATA, ~/.cache/metassl/data")
    image_size: int | None = option(None, range=(4, 1024), help="side length; default: the data set's own")
    train_split: str = option("train")
    val_split: str | None = option("val", help="split for validation during training; null to skip")
    test_split: str = option("test")
    train_fraction: float = option(1.0, range=(1e-6, 1.0), help="use this fraction of the training classes "
                                   "(chosen by the run seed), e.g. 0.05 when labels exist for 5% of the classes")
    options: dict[str, Any] = option(default_factory=dict, help="settings of data sets read from your files or "
                                     "generated (table, text, sinusoid), e.g. data.options.label_column=species; "
                                     "see `metassl datasets`")
    datasets: list[str] = option(default_factory=list, help="several image data sets trained on together (Meta-"
                                 "Dataset style), e.g. [omniglot, double_mnist]; each is brought to one shape "
                                 "(data.image_size, data.channels); empty: data.dataset alone")
    domain_weights: list[float] = option(default_factory=list, help="with data.datasets: the probability weight of "
                                         "each data set per episode (empty: uniform)")
    channels: int | None = option(None, choices=(None, 1, 3), help="with data.datasets: convert every data set to "
                                  "this many channels (needed when their channel counts differ)")


@dataclass
class TaskConfig:
    """Training episodes (the keys every task source has); a source adds its own keys by registering a subclass.
    Evaluation episodes are set in `eval` (ways/shots may differ, as in the papers)."""

    source: str = option("auto", help="where training batches come from: auto (the learner's default), labeled, "
                         "or a registered unsupervised source")
    ways: int = option(5, range=(2, 100000))
    shots: int = option(1, range=(1, 100000))
    queries: int = option(15, range=(1, 100000))
    tasks_per_batch: int = option(1, range=(1, 100000), help="tasks per meta-batch (one optimizer step)")

    def outputs(self) -> int:
        """How many classes a learner's training head has (`Learner.init_params(feature_dim, ways)`): the task's
        ways here; a source of plain labelled batches (`classes`) says the number of base classes."""
        return self.ways

    def for_split(self, split: Any) -> "TaskConfig":
        """This section completed for the training split (the trainer stores the result in config.yaml)."""
        return self


@dataclass
class LearnerConfig:
    """Options every learner has: how the engine runs its loss (read in one place, `engine.meta.StepRunner`).
    A learner's config class subclasses this and adds its hyperparameters."""

    name: str = "learner"
    amp: str = option("none", choices=("none", "bf16"),
                      help="bf16 autocast of the forward pass (CUDA only; losses are computed in float32)")
    compile: bool = option(False, help="torch.compile the loss (falls back to eager if compiling fails)")
    tasks_per_chunk: int | None = option(None, range=(1, None),
                                         help="the batch is processed this many tasks at a time, gradients "
                                              "accumulated (bounds memory; same gradient); null: all at once")
    path: str = option("auto", choices=("auto", "vmap", "loop"),
                       help="per-task functions vectorized with vmap, or a per-task loop; auto: the engine times both "
                            "(learners without per-task functions ignore it)")


@dataclass
class AuxConfig:
    """Self-supervised auxiliary losses added to any learner's meta-training loss (Gidaris et al. 2019)."""

    rotation: float = option(0.0, range=(0.0, 100.0), help="weight of 4-way rotation prediction on episode images; "
                             "0: off")
    contrastive: float = option(0.0, range=(0.0, 100.0), help="weight of SimCLR's NT-Xent between two augmented "
                                "views of the episode images (augmentation: the augment section); 0: off")
    temperature: float = option(0.5, range=(1e-4, 10.0), help="NT-Xent temperature of the contrastive term")
    jigsaw: float = option(0.0, range=(0.0, 100.0), help="weight of jigsaw-puzzle prediction (3x3 tiles, "
                           "ssl/jigsaw.py) on episode images; 0: off")
    jigsaw_permutations: int = option(100, range=(2, 362880), help="size of the jigsaw term's maximal-Hamming "
                                      "permutation set (seed 0)")


@dataclass
class OptimConfig:
    name: str = option("adam", choices=("adam", "adamw", "sgd", "lars"))
    lr: float = option(1e-3, range=(0.0, 10.0))
    weight_decay: float = option(0.0, range=(0.0, 1.0))
    momentum: float = option(0.9, range=(0.0, 1.0), help="SGD momentum")
    nesterov: bool = option(False)
    schedule: str = option("constant", choices=("constant", "step", "cosine", "piecewise"))
    milestones: list[int] = option(default_factory=list, help="piecewise schedule: the steps (increasing) from "
                                   "which the lr factor changes to the matching entry of optim.factors")
    factors: list[float] = option(default_factory=list, help="piecewise schedule: lr factor from each milestone on "
                                  "(1 before the first)")
    step_every: int = option(2000, range=(1, None), help="step schedule: multiply lr by gamma every this many steps")
    gamma: float = option(0.5, range=(0.0, 1.0))
    warmup_steps: int = option(0, range=(0, None))
    grad_clip: float | None = option(None, range=(0.0, None), help="clip the global gradient norm; null: off")
    lars_eta: float = option(0.001, range=(1e-6, 1.0), help="LARS trust coefficient (optim.name=lars)")

    def validate(self):
        if len(self.milestones) != len(self.factors) or list(self.milestones) != sorted(set(self.milestones)):
            raise ConfigError(f"optim.milestones {list(self.milestones)} must be strictly increasing steps, one per "
                              f"entry of optim.factors {list(self.factors)}")
        if self.schedule == "piecewise" and not self.milestones:
            raise ConfigError("optim.schedule=piecewise needs optim.milestones and optim.factors, e.g. "
                              "optim.milestones=[20000,40000] optim.factors=[0.1,0.01]")


@dataclass
class TrainConfig:
    steps: int = option(10000, range=(0, None), help="optimizer steps (meta-batches)")
    log_every: int = option(50, range=(1, None))
    val_every: int = option(1000, range=(0, None), help="validate every this many steps; 0: never")
    val_episodes: int = option(200, range=(1, None))
    checkpoint_every: int = option(1000, range=(1, None))
    keep_checkpoints: int = option(2, range=(1, None), help="how many recent checkpoints to keep")
    checkpoint_minutes: float | None = option(10.0, range=(0.0, None), help="also checkpoint when this many minutes "
                                              "passed since the last checkpoint (a kill costs at most that); "
                                              "0 or null: by checkpoint_every only")
    device: str = option("auto", help="auto, cpu, cuda, cuda:1, mps")
    threads: int | None = option(None, range=(1, 1024), help="CPU threads for torch; null: torch's default")
    progress: bool = option(True, help="show a progress bar")
    tensorboard: bool = option(True)
    deterministic: bool = option(False, help="torch.use_deterministic_algorithms (slower)")
    channels_last: bool = option(True, help="NHWC memory layout for conv backbones (faster on CPU and GPU)")
    knn_every: int = option(0, range=(0, None), help="online kNN monitor every this many steps (0: off)")
    report: bool = option(True, help="write RUN/report/report.html with figures when training ends")
    report_episodes: int = option(100, range=(1, None), help="episodes per evaluation in the end-of-training report")
    sync_batchnorm: bool = option(True, help="several processes: BatchNorm over the global batch, as one process "
                                  "would compute it (per-task BatchNorm of the MAML family stays per task)")
    dist_timeout: float = option(600.0, range=(1.0, None), help="several processes: seconds a collective waits "
                                 "before a missing process is an error")

    def validate(self):
        check_device_name(self.device, "train.device")


@dataclass
class EvalConfig:
    ways: int = option(5, range=(2, 100000))
    shots: list[int] = option(default_factory=lambda: [1, 5], range=(1, 100000), help="one evaluation per shot count")
    queries: int = option(15, range=(1, 100000))
    episodes: int = option(600, range=(1, None))
    seed: int = option(0, range=(0, MAX_SEED))
    batch_episodes: int = option(0, range=(0, None), help="episodes per model call; 0: measured on the device "
                                 "(doubling from 1 while it pays, eval/batching.py); results do not depend on it")
    unlabeled: int = option(0, range=(0, 100000), help="semi-supervised episodes: unlabeled images per class (and per "
                            "distractor class) given to the learner with each episode (Ren et al. 2018: 20); 0: none")
    distractors: int = option(0, range=(0, 100000), help="semi-supervised episodes: classes outside the episode whose "
                              "images join its unlabeled set")
    paper: dict[str, float] = option(default_factory=dict,
                                     help="the paper's accuracy per protocol, e.g. {5w1s: 98.8}, for tables")
    paper_note: str = option("", help="printed beside a result that has no number in eval.paper: what the paper "
                             "reports instead, e.g. that its figure is a curve no value was read off (unchecked)")

    def validate(self):
        if not self.shots:
            raise ConfigError("eval.shots is empty: give at least one shot count, e.g. eval.shots=[1,5]")


FIXED_SECTIONS: dict[str, type] = {"data": DataConfig, "aux": AuxConfig, "optim": OptimConfig, "train": TrainConfig,
                                   "eval": EvalConfig}
TOP_LEVEL = ("name", "seed", "output_dir", "description", "init_from", "data", "tasks", "augment", "aux", "model",
             "learner", "optim", "train", "eval")


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    description: str = ""
    # start the encoder from an earlier run or checkpoint (e.g. self-supervised pre-training); matched by name
    init_from: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    tasks: Any = field(default_factory=TaskConfig)  # the task source's registered config class
    augment: Any = None  # the registered `augment` section (metassl.data.augment.AugmentSpec)
    aux: AuxConfig = field(default_factory=AuxConfig)
    model: Any = None  # the backbone's registered config class
    learner: Any = None  # the learner's registered config class
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


# ---------------------------------------------------------------------------------------------------------------
# conversion and validation


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if tp is Any:
        return value
    if origin in (list, tuple):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        out = None
        if isinstance(value, (int, float, str)):  # a str: YAML 1.1 reads 1e-3 as a string
            try:
                out = float(value)
            except (ValueError, OverflowError):  # OverflowError: an int beyond float's range
                pass
        if out is None:
            raise ConfigError(f"{key} must be a number, got {value!r}")
        # NaN passes every range comparison and inf is never meant: both would reach the weights silently
        if not math.isfinite(out):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _check(value: Any, f: dataclasses.Field, key: str) -> None:
    rng, choices = f.metadata.get("range"), f.metadata.get("choices")
    items = value if isinstance(value, (list, tuple)) else list(value.values()) if isinstance(value, dict) else [value]
    for v in items:
        if v is None:
            continue
        if isinstance(v, float) and not math.isfinite(v):  # a default or an `Any`-typed value: coercion saw neither
            raise ConfigError(f"{key} must be a finite number, got {v!r}")
        if choices is not None and v not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; got {v!r}")
        if rng is not None and isinstance(v, (int, float)):
            lo, hi = rng
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                lo_s = "-inf" if lo is None else lo
                hi_s = "inf" if hi is None else hi
                raise ConfigError(f"{key} must be in [{lo_s}, {hi_s}], got {v!r}")


def section_values(values: Any, prefix: str) -> dict[str, Any]:
    """A section's raw mapping (None: empty); anything else (`train=5`, `data=[1,2]`) is an error naming it."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix} must be a mapping of {prefix}.* keys, got {values!r}; set single keys, e.g. "
                          f"{prefix}.KEY=VALUE (see `metassl presets --keys`)")
    return dict(values)


def check_device_name(name: Any, key: str) -> str:
    """A device name metassl runs on (syntax only: whether it exists here is checked when the device is resolved,
    so a run trained on a GPU can still be loaded elsewhere)."""
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise ConfigError(f"{key} must be auto, cpu, cuda, cuda:N or mps; got {name!r}")
    return name


def unknown_key(key: str, valid: typing.Iterable[str], where: str) -> ConfigError:
    valid = sorted(valid)
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint} Valid keys in {where}: {', '.join(valid)}")


def build(cls: type, values: dict[str, Any] | None, prefix: str, where: str | None = None) -> Any:
    """Make a `cls` instance from a mapping, naming `prefix.key` in every error (`where`: how to name the section
    in the list of valid keys)."""
    values = section_values(values, prefix)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in values.items():
        if k not in fields:
            raise unknown_key(f"{prefix}.{k}", fields, where or prefix)
        key = f"{prefix}.{k}"
        val = _coerce(v, hints[k], key)
        _check(val, fields[k], key)
        kwargs[k] = val
    obj = cls(**kwargs)
    for name, f in fields.items():  # defaults are checked too, so a registered class cannot ship a bad one
        if name not in kwargs:
            _check(getattr(obj, name), f, f"{prefix}.{name}")
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def describe(cls: type, prefix: str) -> list[str]:
    """One line per key: name, type, default, range/choices and help."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        extra = ""
        if f.metadata.get("choices"):
            extra = f" one of {', '.join(map(str, f.metadata['choices']))}"
        elif f.metadata.get("range"):
            extra = f" in {list(f.metadata['range'])}"
        h = f.metadata.get("help", "")
        lines.append(f"{prefix}.{f.name}: {_type_name(hints[f.name])} = {default!r}{extra}" + (f"  # {h}" if h else ""))
    return lines


# ---------------------------------------------------------------------------------------------------------------
# presets, YAML and overrides


def presets_dir() -> Path:
    return Path(str(resources.files("metassl").joinpath("configs")))


def list_presets() -> list[str]:
    root = presets_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e}); save the config as UTF-8") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config: {e.strerror or e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def find_config(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    preset = presets_dir() / (name_or_path.removesuffix(".yaml") + ".yaml")
    if preset.is_file():
        return preset
    close = difflib.get_close_matches(name_or_path, list_presets(), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"config {name_or_path!r} is neither a YAML file nor a preset.{hint} "
                      f"Presets: {', '.join(list_presets())}")


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        # an empty mapping in the child replaces the base's (e.g. `paper: {}` drops inherited reference numbers)
        out[k] = merge(out[k], v) if isinstance(v, dict) and v and isinstance(out.get(k), dict) else v
    return out


def load_raw(name_or_path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a config, following `base: other_preset` chains (the child's keys win)."""
    path = find_config(name_or_path)
    data = read_yaml(path)
    base = data.pop("base", None)
    if base:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base must be one preset name or YAML file, got {base!r}")
        here = str(path.resolve())
        if here in _seen:  # a chain that returns to itself would recurse until the interpreter gives up
            raise ConfigError(f"{path}: its base chain loops back to itself ({base!r}); remove one `base:`")
        parent = load_raw(base, (*_seen, here))
        child_model, parent_model = data.get("model"), parent.get("model")
        if (isinstance(child_model, dict) and isinstance(parent_model, dict) and "backbone" in child_model
                and child_model["backbone"] != parent_model.get("backbone", "conv4")):
            # another backbone: the base's model keys belong to its backbone (e.g. resnet18's stem), not this one
            parent = {**parent, "model": {}}
        data = merge(parent, data)
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`data` with `key=value` overrides applied (YAML values); `data` itself is not changed."""
    data = copy.deepcopy(data)  # a shallow merge would write the overrides into the caller's nested sections
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.steps=500)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            if node.get(p) is None:  # absent, or an empty section (`model:` with nothing under it)
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return data


def task_source_name(source: str, learner: str) -> str:
    """The task source a config trains on: `tasks.source`, or the learner's default when it is `auto`."""
    return LEARNERS.lookup(learner).default_source if source == "auto" else source


def sections() -> dict[str, type]:
    """Every section with a fixed class: this module's and the registered ones (`augment`)."""
    return {**FIXED_SECTIONS, **{name: cls for name, cls in SECTIONS.items()}}


def resolve(data: dict[str, Any]) -> RunConfig:
    """Validate a raw config mapping into a RunConfig."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {data!r}")
    data = dict(data)
    for k in data:
        if k not in TOP_LEVEL:
            raise unknown_key(str(k), TOP_LEVEL, "the top level")
    kwargs: dict[str, Any] = {}
    for k in ("name", "output_dir", "description"):
        if k in data:
            kwargs[k] = _coerce(data[k], str, k)
    if data.get("init_from") is not None:
        kwargs["init_from"] = _coerce(data["init_from"], str, "init_from")
    if "seed" in data:
        kwargs["seed"] = _coerce(data["seed"], int, "seed")
        if not 0 <= kwargs["seed"] <= MAX_SEED:  # torch's generators overflow past 2**63 - 1
            raise ConfigError(f"seed must be in [0, {MAX_SEED}], got {kwargs['seed']}")
    for name, cls in sections().items():
        kwargs[name] = build(cls, data.get(name), name)
    model = section_values(data.get("model"), "model")
    backbone = BACKBONES.lookup(str(model.get("backbone", "conv4")))
    kwargs["model"] = build(backbone.config, model, "model")
    learner = section_values(data.get("learner"), "learner")
    spec = LEARNERS.lookup(str(learner.get("name", "protonet")))
    kwargs["learner"] = build(spec.config, learner, "learner")
    tasks = section_values(data.get("tasks"), "tasks")
    source = TASK_SOURCES.lookup(task_source_name(str(tasks.get("source", "auto")), kwargs["learner"].name))
    kwargs["tasks"] = build(source.config, tasks, "tasks", f"tasks (for tasks.source {source.name})")
    check_source_fits(spec, source)
    return RunConfig(**kwargs)


# What each task source's batches are, so a learner is never handed a batch type it cannot train on (ProtoNet on
# `views` used to fail deep inside its loss): a task source declares the kind it yields (`TaskSourceSpec.batch`), a
# learner the kinds it trains on (`LearnerSpec.accepts`; empty: the kind of its default source).
BATCH_KINDS = {"episodes": "N-way K-shot episodes (TaskBatch)", "views": "augmented views of unlabeled images "
               "(ViewBatch)", "classes": "plain labelled batches over the base classes (ClassBatch)"}


def source_batch_kind(source: Any) -> str | None:
    """The kind of batch (a key of BATCH_KINDS) a task source spec yields; None: not declared (a plugin source),
    which is never refused."""
    return source.batch


def learner_batch_kinds(spec: Any) -> tuple[str, ...] | None:
    """The batch kinds a learner spec trains on: its `accepts`, else the kind of its default source."""
    if spec.accepts:
        return tuple(spec.accepts)
    default = TASK_SOURCES.get(spec.default_source)
    kind = source_batch_kind(default) if default is not None else None
    return (kind,) if kind else None


def check_source_fits(spec: Any, source: Any) -> None:
    kind, accepted = source_batch_kind(source), learner_batch_kinds(spec)
    if kind is None or accepted is None or kind in accepted:
        return
    fits = [name for name, s in TASK_SOURCES.items() if source_batch_kind(s) in accepted]
    raise ConfigError(f"tasks.source={source.name} gives {BATCH_KINDS.get(kind, kind)}, but learner.name={spec.name} "
                      f"trains on {' or '.join(BATCH_KINDS.get(k, k) for k in accepted)}: set tasks.source=auto "
                      f"(= {spec.default_source})" + (f" or one of {', '.join(fits)}" if fits else ""))


# keys of the fixed `tasks` section before each task source owned its own (checkpoint format 1): a stored config
# has all of them, whatever its source
LEGACY_TASK_KEYS = ("batch_size", "views", "embed_from", "clusters", "partitions", "kmeans_iters")


def resolve_stored(data: dict[str, Any]) -> RunConfig:
    """Validate a config stored by a run (config.yaml, a checkpoint's state.json), also one written by an earlier
    version: keys of the old fixed `tasks` section that its source does not have are dropped, and a Reptile run
    stored without `inner_state` (trained with a fresh inner Adam state per task) keeps `inner_state: reset`."""
    if not isinstance(data, dict):
        raise ConfigError(f"a stored config must be a mapping of sections, got {type(data).__name__}")
    data = dict(data)
    tasks = section_values(data.get("tasks"), "tasks")
    learner = str(section_values(data.get("learner"), "learner").get("name", "protonet"))
    source = TASK_SOURCES.lookup(task_source_name(str(tasks.get("source", "auto")), learner))
    own = {f.name for f in dataclasses.fields(source.config)}
    data["tasks"] = {k: v for k, v in tasks.items() if k in own or k not in LEGACY_TASK_KEYS}
    stored = dict(data.get("learner") or {})
    if learner == "reptile" and "inner_state" not in stored:  # trained before the carried Adam state: per task
        data["learner"] = {**stored, "inner_state": "reset"}
    return resolve(data)


def load_config(name_or_path: str, overrides: list[str] | None = None) -> RunConfig:
    return resolve(apply_overrides(load_raw(name_or_path), overrides or []))


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def get_learner_config_lines() -> list[str]:
    """Config keys of every registered backbone (`model.*`), learner (`learner.*`) and task source (`tasks.*`)."""
    lines = []
    for kind, registry, prefix, skip in (("model.backbone", BACKBONES, "model", 1), ("learner.name", LEARNERS,
                                         "learner", 1), ("tasks.source", TASK_SOURCES, "tasks", 0)):
        for name, spec in registry.items():
            desc = getattr(spec, "description", "")
            lines.append(f"# {kind}: {name}" + (f"  ({desc})" if desc else ""))
            lines += describe(spec.config, prefix)[skip:]
    lines.append(f"# augment.preset: auto (the data set's) or one of {', '.join(AUGMENTATIONS)}")
    return lines
