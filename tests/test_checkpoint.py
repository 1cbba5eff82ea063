import json
import pytest
import torch

from metassl.atomic import atomic_directory
from metassl.engine.checkpoint import (CheckpointError, find_checkpoint, flatten_optimizer, load_checkpoint,
                                       save_checkpoint, unflatten_optimizer)


def test_save_load_roundtrip_and_prune(tmp_path):
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.Adam([p], lr=0.1)
    p.sum().backward()
    opt.step()
    t, rest = flatten_optimizer(opt.state_dict())
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"encoder.w": p}, {"optimizer": rest, "x": step}, t, keep=2)
    names = sorted(q.name for q in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_00000002", "step_00000003"]
    folder = find_checkpoint(tmp_path)
    model, state, training = load_checkpoint(folder)
    assert state["step"] == 3 and torch.equal(model["encoder.w"], p.detach())
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3, 2))], lr=0.1)
    opt2.load_state_dict(unflatten_optimizer(training, state["optimizer"]))
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    # nothing here is a pickle: the files are safetensors and JSON
    assert {f.name for f in folder.iterdir()} == {"model.safetensors", "training.safetensors", "state.json"}


def test_failed_write_leaves_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {})
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "checkpoints" / "step_00000001") as tmp:
            (tmp / "model.safetensors").write_bytes(b"partial")
            raise RuntimeError("killed while writing")
    model, _, _ = load_checkpoint(find_checkpoint(tmp_path))
    assert torch.equal(model["w"], torch.ones(2))
    leftovers = [q.name for q in (tmp_path / "checkpoints").iterdir() if q.name.startswith(".")]
    assert leftovers == []


def test_newer_format_and_foreign_folder_are_clear_errors(tmp_path):
    folder = save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {})
    state = json.loads((folder / "state.json").read_text())
    state["format_version"] = 99
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="newer metassl"):
        load_checkpoint(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        find_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(tmp_path / "nowhere")


def test_format_1_checkpoints_and_run_folders_still_load(tmp_path):
    # before each task source owned its keys, every stored config had the fixed tasks section's keys, augment
    # without the newer keys, and learner configs without the engine options: such runs must still evaluate/resume
    import yaml

    from metassl.config import apply_overrides, resolve
    from metassl.engine.build import load_model
    from metassl.engine.trainer import load_run_config, train

    cfg = resolve(apply_overrides({}, ["data.dataset=digits", "data.train_split=train", "data.val_split=null",
                                       "model.backbone=mlp", "model.hidden=[8]", "model.image_size=8",
                                       "tasks.ways=3", "tasks.shots=1", "tasks.queries=2", "train.steps=2",
                                       "train.progress=false", "train.tensorboard=false"]))
    run = tmp_path / "run"
    train(cfg, run)
    legacy_tasks = {"batch_size": 256, "views": 2, "embed_from": None, "clusters": 500, "partitions": 1,
                    "kmeans_iters": 30}
    folder = find_checkpoint(run)
    state = json.loads((folder / "state.json").read_text())
    state["format_version"] = 1
    state["config"]["tasks"].update(legacy_tasks)
    for k in ("amp", "compile", "tasks_per_chunk", "path"):
        state["config"]["learner"].pop(k)
    state["config"]["augment"] = {"preset": "auto", "crop_scale": None, "flip": None, "blur": None}
    (folder / "state.json").write_text(json.dumps(state))
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["tasks"].update(legacy_tasks)
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    model, info = load_model(run)
    assert model.config.tasks.ways == 3 and not hasattr(model.config.tasks, "batch_size")
    assert load_run_config(run, ["train.steps=4"]).train.steps == 4
    # a key that never existed is still refused
    raw["tasks"]["batch_sise"] = 3
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(Exception, match="batch_sise"):
        load_run_config(run)


def test_a_reptile_run_from_before_the_carried_inner_state_still_loads(tmp_path):
    from metassl.config import apply_overrides, resolve
    from metassl.engine.build import load_model
    from metassl.engine.trainer import train

    cfg = resolve(apply_overrides({}, ["learner.name=reptile", "learner.inner_state=reset", "data.dataset=digits",
                                       "data.train_split=train", "data.val_split=null", "model.backbone=mlp",
                                       "model.hidden=[8]", "model.image_size=8", "model.track_running_stats=false",
                                       "tasks.ways=3", "tasks.shots=1", "tasks.queries=2", "train.steps=1",
                                       "train.progress=false", "train.tensorboard=false"]))
    train(cfg, tmp_path / "run")
    folder = find_checkpoint(tmp_path / "run")
    state = json.loads((folder / "state.json").read_text())
    del state["config"]["learner"]["inner_state"]  # as an earlier version wrote it
    (folder / "state.json").write_text(json.dumps(state))
    model, _ = load_model(tmp_path / "run")
    assert model.config.learner.inner_state == "reset"
