"""Issue 20, inputs: every bad config value, CLI flag, data file, image and cache failure is a one-line error (or,
for the optional cache, a warning), never a traceback and never silent nonsense. Items 4 (config and flags), 5
(pickles, decompression bombs), 6 (cache), 7 (predict), 8 (eval flags), 9 (config tracebacks), and a fuzz test."""

import argparse
import contextlib
import copy
import io
import json
import os
import pickle
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metassl.cli.main import FLAG_RANGES, _finite, check_device_available, check_flags, cmd_presets, main, parse_args
from metassl.config import ConfigError, apply_overrides, load_raw, resolve
from metassl.data import root as data_root
from metassl.data.images import ImageReadError, decode_image
from metassl.data.safe_pickle import PickleReadError, UnsafePickleError, load_pickle

PRESET = "omniglot/protonet_5w1s"


def resolve_with(overrides):
    return resolve(apply_overrides(load_raw(PRESET), overrides))


def one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, (code, err)
    return err


# ------------------------------------------------------------------------------------------- item 4: NaN and inf
@pytest.mark.parametrize("overrides,key", [
    (["optim.grad_clip=.nan"], "optim.grad_clip"), (["optim.momentum=.nan"], "optim.momentum"),
    (["optim.gamma=.nan"], "optim.gamma"), (["data.train_fraction=.nan"], "data.train_fraction"),
    (["aux.rotation=.nan"], "aux.rotation"), (["augment.flip=.nan"], "augment.flip"),
    (["aux.temperature=.nan"], "aux.temperature"), (["optim.lr=.inf"], "optim.lr"),
    (["train.dist_timeout=.inf"], "train.dist_timeout"), (["optim.factors=[.nan]"], "optim.factors[0]"),
    (["eval.paper={5w1s: .nan}"], "eval.paper.5w1s"), (["augment.crop_scale=[0.2, .inf]"], "augment.crop_scale[1]"),
    (["learner.name=simclr", "learner.temperature=-.inf"], "learner.temperature"),
    (["optim.lr=" + "9" * 400], "optim.lr"),  # an int beyond float's range
])
def test_nan_inf_refused_naming_the_key(overrides, key):
    data = load_raw(PRESET)
    if "learner.name=simclr" in overrides:  # the preset's ProtoNet keys do not apply to SimCLR
        data["learner"] = {}
    data = apply_overrides(data, overrides)
    with pytest.raises(ConfigError, match=re.escape(key) + r" must be a (finite )?number"):
        resolve(data)


def test_every_float_key_refuses_nan_and_inf():
    """All float fields of every section and every registered backbone, learner and task source."""
    import dataclasses
    import typing

    from metassl.config import sections
    from metassl.registry import BACKBONES, LEARNERS, TASK_SOURCES

    def floats(cls):
        hints = typing.get_type_hints(cls)
        return [f.name for f in dataclasses.fields(cls) if typing.get_origin(hints[f.name]) is not dict
                and float in (hints[f.name], *typing.get_args(hints[f.name]))]

    cases = [({name: {k: v}}, f"{name}.{k}") for name, cls in sections().items() for k in floats(cls)
             for v in (float("nan"), float("inf"))]
    for spec_name, spec in LEARNERS.items():
        cases += [({"learner": {"name": spec_name, k: float("nan")}}, f"learner.{k}") for k in floats(spec.config)]
    for spec_name, spec in BACKBONES.items():
        cases += [({"model": {"backbone": spec_name, k: float("-inf")}}, f"model.{k}") for k in floats(spec.config)]
    for spec_name, spec in TASK_SOURCES.items():
        cases += [({"tasks": {"source": spec_name, k: float("nan")}}, f"tasks.{k}") for k in floats(spec.config)]
    assert len(cases) > 40
    for data, key in cases:
        with pytest.raises(ConfigError, match=re.escape(key) + r"(\[0\])? must be a finite number"):
            resolve(data)


@pytest.mark.parametrize("flags,name", [
    (["--protocol", "knn", "--temperature", "nan"], "--temperature"),
    (["--protocol", "knn", "--temperature", "inf"], "--temperature"),
    (["--protocol", "linear", "--weight-decay", "nan"], "--weight-decay"),
    (["--protocol", "linear", "--weight-decay", "inf"], "--weight-decay"),
])
def test_nan_inf_flags_refused(flags, name, capsys, tmp_path):
    err = one_line_error(capsys, ["eval", str(tmp_path / "no_run"), *flags])
    assert err.startswith("metassl eval: error: " + name)


# ------------------------------------------------------------------------- item 5: pickles and decompression bombs
def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


BOMBS = {  # a few bytes each that would allocate a terabyte (or run code)
    "bytearray": b"\x80\x02" + _global("builtins", "bytearray") + b"\x8a\x06" + (10**12).to_bytes(6, "little")
                 + b"\x85R.",
    "set_of_range": b"\x80\x02" + _global("builtins", "set") + _global("builtins", "range") + b"\x8a\x06"
                    + (10**6).to_bytes(6, "little") + b"\x85R\x85R.",  # refused at any size
    "lazy_ndarray": b"\x80\x02" + _global("numpy", "ndarray") + b"\x8a\x04" + (10**8).to_bytes(4, "little")
                    + b"\x85\x85R.",
    "os_system": b"\x80\x02" + _global("os", "system") + b"X\x04\x00\x00\x00true\x85R.",
}


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_unsafe_and_memory_bomb_pickles_are_value_errors_naming_the_file(kind, tmp_path):
    path = tmp_path / f"{kind}.pkl"
    path.write_bytes(BOMBS[kind])
    with pytest.raises(UnsafePickleError, match=re.escape(str(path))) as e:
        load_pickle(path, encoding="bytes")
    assert isinstance(e.value, ValueError)  # the CLI prints a ValueError on one line


def test_truncated_pickle_and_plain_pickles(tmp_path):
    good = {"data": np.zeros((4, 3072), np.uint8), "labels": [1, 2, 3, 4], "s": {1, 2}, "b": bytearray(b"\xffx")}
    for proto in range(6):
        back = load_pickle(pickle.dumps(good, protocol=proto), encoding="bytes")
        assert back["s"] == {1, 2} and back["b"] == bytearray(b"\xffx") and back["data"].shape == (4, 3072)
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps(good)[:60])
    with pytest.raises(PickleReadError, match=re.escape(str(path))) as e:
        load_pickle(path)
    assert isinstance(e.value, ValueError)


def test_malicious_cifar_batch_is_one_line_through_the_cli(tmp_path, capsys):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(BOMBS["os_system"])
    err = one_line_error(capsys, ["train", PRESET, "data.dataset=cifar10", "data.train_split=train",
                                  "data.val_split=null",
                                  "train.progress=false", "--data-root", str(tmp_path / "data"),
                                  "--run-dir", str(tmp_path / "run")])
    assert re.match(r"metassl train: error: refusing to load .*data_batch_1: the pickle references os.system", err)


@pytest.fixture
def pixel_limit(monkeypatch):
    """Pillow's limit lowered to 1000 pixels (as if the images were huge), restored afterwards."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.delenv("METASSL_MAX_IMAGE_PIXELS", raising=False)


@pytest.mark.parametrize("side", [40, 60])  # 1600 pixels: Pillow only warns; 3600: Pillow's own error
def test_decompression_bomb_image_is_an_image_read_error(side, tmp_path, pixel_limit):
    path = tmp_path / "bomb.png"
    Image.new("L", (side, side)).save(path)
    with pytest.raises(ImageReadError, match=re.escape(str(path)) + ".*METASSL_MAX_IMAGE_PIXELS"):
        decode_image(path, 1)


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    path = tmp_path / "img.png"
    Image.new("L", (40, 40)).save(path)
    monkeypatch.setenv("METASSL_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageReadError, match="over the limit of 1,000 pixels"):
        decode_image(path, 1)
    monkeypatch.setenv("METASSL_MAX_IMAGE_PIXELS", "2000")
    assert decode_image(path, 1).shape == (40, 40, 1)
    monkeypatch.setenv("METASSL_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="METASSL_MAX_IMAGE_PIXELS"):
        decode_image(path, 1)


def test_image_folder_with_a_bomb_names_the_file(tmp_path, pixel_limit):
    from metassl.data.loaders.folder import load_image_folder

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("L", (20, 20), 9).save(tmp_path / c / "ok.png")
    Image.new("L", (60, 60)).save(tmp_path / "b" / "huge.png")
    with pytest.raises(ImageReadError, match=re.escape(str(tmp_path / "b" / "huge.png"))):
        load_image_folder(tmp_path)


# ------------------------------------------------------------------------------------ item 6: the cache is optional
@pytest.mark.parametrize("failure", ["enospc", "safetensors", "read_only"])
def test_cache_write_failure_warns_once_and_loads(failure, monkeypatch, tmp_path):
    import errno

    monkeypatch.setattr(data_root, "_warned", set())
    monkeypatch.setenv("METASSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("METASSL_NO_CACHE", raising=False)

    class SafetensorError(Exception):  # what safetensors raises on a full disk: not an OSError
        pass

    def full_disk(*_a, **_k):
        if failure == "safetensors":
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if failure == "read_only":
        def read_only(*_a, **_k):
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS))
        monkeypatch.setattr(Path, "mkdir", read_only)
    else:
        monkeypatch.setattr(data_root, "save_file", full_disk)
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    calls = []

    def build():
        calls.append(1)
        return {"x": torch.arange(6)}, {"n": 6}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for key in ("one", "two", "one"):
            tensors, meta = data_root.cached_tensors(key, [src], build)
            assert torch.equal(tensors["x"], torch.arange(6)) and meta == {"n": 6}
    mine = [w for w in caught if issubclass(w.category, data_root.CacheWarning)]
    assert len(mine) == 1 and "continuing without it" in str(mine[0].message) and len(calls) == 3
    assert not list(tmp_path.rglob("*.safetensors")) and not list(tmp_path.rglob(".*.tmp"))  # nothing left half-written


# --------------------------------------------------------------------------------------------- item 7: predict
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("tiny") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", PRESET, "data.dataset=digits", "data.train_split=train", "data.val_split=null",
                     "data.test_split=test", "model.hidden=8",
                     "model.depth=2", "tasks.ways=3", "tasks.shots=1", "tasks.queries=2", "train.steps=2",
                     "train.progress=false", "train.tensorboard=false", "train.report=false", "eval.ways=2",
                     "eval.episodes=2", "--run-dir", str(run)]) == 0
    finally:
        torch.set_num_threads(n)
    return run


@pytest.fixture
def image_folders(tmp_path):
    support, query = tmp_path / "support", tmp_path / "query"
    for c, v in (("dark", 20), ("light", 230)):
        (support / c).mkdir(parents=True)
        Image.new("L", (8, 8), v).save(support / c / "a.png")
    query.mkdir()
    Image.new("L", (8, 8), 25).save(query / "q_dark.png")
    Image.new("L", (60, 60), 200).save(query / "q_bomb.png")  # over the lowered pixel limit
    with open(os.fsencode(query) + b"/q_\xff_latin.png", "wb") as f:  # a name that is not UTF-8
        Image.new("L", (8, 8), 235).save(f, format="PNG")
    return support, query


def test_predict_bomb_row_and_non_utf8_name_csv(tiny_run, image_folders, tmp_path, pixel_limit, capsys):
    support, query = image_folders
    out = tmp_path / "pred.csv"
    assert main(["predict", str(tiny_run), "--support", str(support), "--query", str(query), "--out", str(out)]) == 0
    data = out.read_bytes()
    rows = data.split(b"\n")
    assert len([r for r in rows if r.strip()]) == 4  # header + 3 rows: nothing lost
    assert os.fsencode(query) + b"/q_\xff_latin.png" in data  # the file's own bytes, so it can be found again
    bomb = next(r for r in rows if b"q_bomb.png" in r)
    assert b"decompression bomb" in bomb and b",," in bomb  # an error row: no label, no probability
    assert b"q_dark.png,dark," in data
    assert "not valid UTF-8" in capsys.readouterr().err


def test_predict_json_is_valid_without_nan(tiny_run, image_folders, tmp_path, pixel_limit, monkeypatch):
    from metassl.api import FewShotClassifier

    support, query = image_folders
    real = FewShotClassifier.predict_proba_tensor

    def nan_for_some(self, x):  # the second query as a model with NaN weights would give it
        p = real(self, x)
        p[-1] = float("nan")
        return p

    monkeypatch.setattr(FewShotClassifier, "predict_proba_tensor", nan_for_some)
    out = tmp_path / "pred.json"
    assert main(["predict", str(tiny_run), "--support", str(support), "--query", str(query), "--json",
                 "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")  # valid UTF-8
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    rows = {Path(r["path"]).name: r for r in doc["predictions"]}
    assert os.fsencode(rows["q_\udcff_latin.png"]["path"]).endswith(b"q_\xff_latin.png")  # escapes give it back
    assert sum(r["error"] is not None and "non-finite" in r["error"] for r in rows.values()) == 1
    assert rows["q_bomb.png"]["label"] is None and "decompression bomb" in rows["q_bomb.png"]["error"]
    assert json.loads(json.dumps(_finite({"a": [float("nan"), 1.0, float("inf")]}))) == {"a": [None, 1.0, None]}


# ------------------------------------------------------------------------------------ item 8: silent nonsense
@pytest.mark.parametrize("flags,name", [
    (["--ways", "1"], "--ways"), (["--ways", "0"], "--ways"), (["--shots", "0"], "--shots"),
    (["--shots", "1", "0"], "--shots"), (["--queries", "0"], "--queries"), (["--episodes", "0"], "--episodes"),
    (["--seed", "-1"], "--seed"), (["--batch-episodes", "-1"], "--batch-episodes"),
    (["--protocol", "knn", "--k", "0"], "--k"), (["--protocol", "knn", "--k", "-1"], "--k"),
    (["--protocol", "knn", "--temperature", "0"], "--temperature"),
    (["--protocol", "knn", "--temperature", "-1"], "--temperature"),
    (["--protocol", "knn", "--max-train", "-5"], "--max-train"),
    (["--protocol", "knn", "--max-test", "0"], "--max-test"),
    (["--protocol", "linear", "--max-test", "-1"], "--max-test"),
    (["--protocol", "linear", "--weight-decay", "-1"], "--weight-decay"),
    (["--dataset", ""], "--dataset"), (["--split", ""], "--split"), (["--out", ""], "--out"),
    (["--device", ""], "--device"), (["--device", "meta"], "--device"), (["--train-split", ""], "--train-split"),
])
def test_eval_flags_out_of_range_name_the_flag(flags, name, capsys, tmp_path):
    err = one_line_error(capsys, ["eval", str(tmp_path / "no_run"), *flags])
    assert err.startswith(f"metassl eval: error: {name} "), err  # before the run is even looked for


def test_compare_and_report_flags_checked(capsys, tmp_path):
    assert "--ways" in one_line_error(capsys, ["compare", "a", "b", "--ways", "0"])
    assert "--episodes" in one_line_error(capsys, ["report", str(tmp_path), "--episodes", "0"])
    assert "RUN" in one_line_error(capsys, ["predict", "", "--support", "s", "--query", "q"])


# ------------------------------------------------------------------------------- item 9: config and CLI tracebacks
@pytest.mark.parametrize("overrides,match", [
    (["train=5"], r"^train must be a mapping"), (["model=5"], r"^model must be a mapping"),
    (["data=[1,2]"], r"^data must be a mapping"), (["learner=abc"], r"^learner must be a mapping"),
    (["tasks=[]"], r"^tasks must be a mapping"), (["augment=3"], r"^augment must be a mapping"),
    (["eval.shots=[]"], r"eval.shots is empty"), (["eval.shots=[0]"], r"eval.shots must be in \[1,"),
    (["train.device=meta"], r"train.device must be auto, cpu, cuda, cuda:N or mps; got 'meta'"),
    (["train.device=gpu"], r"train.device must be"),
    (["tasks.source=views"], r"tasks.source=views gives augmented views.*learner.name=protonet trains on N-way"),
    (["tasks.source=classes"], r"tasks.source=classes gives plain labelled batches"),
    (["seed=-1"], r"seed must be in \[0,"), (["seed=" + "9" * 30], r"seed must be in \[0,"),
    (["eval.seed=" + "9" * 30], r"eval.seed must be in"),
])
def test_config_errors_not_tracebacks(overrides, match):
    with pytest.raises(ConfigError, match=match):
        resolve_with(overrides)


def test_learner_and_source_kinds_from_the_registries():
    from metassl.config import learner_batch_kinds, source_batch_kind
    from metassl.registry import LEARNERS, TASK_SOURCES

    assert source_batch_kind(TASK_SOURCES.lookup("views")) == "views"
    assert learner_batch_kinds(LEARNERS.lookup("simclr")) == ("views",)
    assert learner_batch_kinds(LEARNERS.lookup("baseline")) == ("classes",)
    for learner, source in (("simclr", "labeled"), ("baseline", "umtra"), ("maml", "views"), ("byol", "classes")):
        with pytest.raises(ConfigError, match=f"tasks.source={source} gives"):
            resolve({"learner": {"name": learner}, "tasks": {"source": source}})
    for learner, source in (("simclr", "views"), ("protonet", "umtra"), ("psco", "psco"), ("baseline", "auto")):
        resolve({"learner": {"name": learner}, "tasks": {"source": source}})


def test_apply_overrides_does_not_change_its_input():
    data = load_raw(PRESET)
    before = copy.deepcopy(data)
    apply_overrides(data, ["train.steps=3", "model.hidden=4"])
    assert data == before


def test_device_availability(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="MPS.*not available"):
        check_device_available("mps", "--device")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        check_device_available("cuda:0", "--device")
    with pytest.raises(ConfigError, match="must be auto, cpu"):
        check_device_available("meta", "--device")
    check_device_available("cpu", "--device")


def test_overrides_anywhere_on_the_command_line(capsys):
    a = parse_args(["train", PRESET, "--run-dir", "R", "train.steps=5", "model.hidden=4"])
    assert a.config == PRESET and a.run_dir == "R" and a.overrides == ["train.steps=5", "model.hidden=4"]
    a = parse_args(["train", PRESET, "train.steps=1", "--run-dir", "R", "train.steps=5"])
    assert a.overrides == ["train.steps=1", "train.steps=5"]  # command-line order: the last one wins
    a = parse_args(["train", "--resume", "--run-dir", "R", "train.steps=9"])
    assert a.config is None and a.overrides == ["train.steps=9"] and a.run_dir == "R"
    a = parse_args(["eval", "RUN", "--ways", "5", "learner.eval_inner_steps=3"])
    assert a.run == "RUN" and a.overrides == ["learner.eval_inner_steps=3"]
    a = parse_args(["eval", "RUN", "--shots", "1", "5", "learner.eval_inner_steps=3", "--out", "a.b=1.json"])
    assert a.shots == [1, 5] and a.overrides == ["learner.eval_inner_steps=3"] and a.out == "a.b=1.json"
    with pytest.raises(SystemExit) as e:
        parse_args(["eval", "RUN", "--bogus"])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------------ fuzz
def _preset_keys():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cmd_presets(argparse.Namespace(keys=True))
    keys, context = [], None
    for line in buf.getvalue().splitlines():
        m = re.match(r"# (model\.backbone|learner\.name|tasks\.source): (\S+)", line)
        if m:
            context = f"{m[1]}={m[2]}"
        elif not line.startswith("#"):
            key = line.split(":")[0]
            keys.append((key, context if key.split(".")[0] in ("model", "learner", "tasks") else None))
    return keys


BAD = [".nan", ".inf", "-.inf", "-1", "-1e9", "0", "1e308", "9" * 40, "", "[]", "{}", "[1, .nan]", "abc", "{a: 1}",
       "true", "[[1]]", "1e-300"]


def test_fuzz_config_keys_give_success_or_config_error():
    keys = _preset_keys()
    assert len(keys) > 200
    rng = random.Random(20)
    base = load_raw(PRESET)
    base["learner"] = {}  # each case names its learner (the preset's keys are ProtoNet's)
    cases = [[*([ctx] if ctx else []), f"{key}={v}"] for key, ctx in keys for v in rng.sample(BAD, 2)]
    cases += [[f"{top}={v}"] for top in ("train", "model", "data", "eval", "tasks", "learner", "augment", "seed",
                                         "name", "init_from") for v in BAD[:6] + ["[1,2]", "5"]]
    outcomes = {"ok": 0, "error": 0}
    for overrides in cases:
        try:
            resolve(apply_overrides(base, overrides))
            outcomes["ok"] += 1
        except ConfigError as e:
            assert "\n" not in str(e), (overrides, str(e))
            outcomes["error"] += 1
    assert len(cases) > 500 and outcomes["error"] > 300 and outcomes["ok"] > 20, outcomes


def test_fuzz_eval_flags_give_success_or_one_line_error(capsys):
    rng = random.Random(8)
    flags = {"eval": [f"--{d.replace('_', '-')}" for d in FLAG_RANGES] + ["--dataset", "--split", "--device"],
             "compare": ["--ways", "--shots", "--queries", "--episodes", "--seed", "--batch-episodes", "--device"]}
    values = ["0", "-1", "1", "2", "nan", "inf", "-inf", "1e999", "", "x", "3.5", "99999999999999999999999", "cpu",
              "meta", "cuda:x"]
    n = 0
    for command, names in flags.items():
        positional = ["RUN"] if command == "eval" else ["A", "B"]
        for name in names:
            for v in rng.sample(values, 8):
                argv = [command, *positional, f"{name}={v}"]
                n += 1
                try:
                    check_flags(parse_args(argv))
                except SystemExit as e:
                    assert e.code == 2
                except ConfigError as e:
                    assert "\n" not in str(e) and name in str(e), (argv, str(e))
                err = capsys.readouterr().err.strip()
                assert len(err.splitlines()) <= 1, (argv, err)
    assert n > 150
