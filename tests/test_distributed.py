"""Training on several processes (torchrun, gloo on the CPU, 2 processes) ends where one process ends: the same
parameters for episodic and self-supervised learners, the same evaluation, resumable across world sizes, and a
killed process restarts from the last checkpoint. Each launch costs a few seconds, so one launch trains many runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metassl.config import apply_overrides, load_config, load_raw, resolve
from metassl.engine.checkpoint import find_checkpoint, load_checkpoint
from metassl.engine.trainer import train

HERE = Path(__file__).parent
COMMON = ["data.dataset=digits", "data.train_split=train", "data.val_split=null", "data.test_split=test",
          "train.progress=false", "train.tensorboard=false", "train.report=false", "train.threads=1",
          "train.checkpoint_every=100", "optim.name=sgd", "optim.lr=0.1"]
EPISODIC = COMMON + ["model.backbone=conv4", "model.hidden=8", "model.depth=2", "tasks.ways=3", "tasks.shots=1",
                     "tasks.queries=2", "tasks.tasks_per_batch=3", "train.steps=3"]  # 3 tasks: shares of 2 and 1
SSL = COMMON + ["model.backbone=conv4", "model.hidden=8", "model.depth=2", "tasks.batch_size=9",
                "learner.proj_hidden=16", "learner.proj_dim=8", "train.steps=3"]
RUNS = {
    "protonet": ("omniglot/protonet_5w1s", EPISODIC),
    "maml": ("omniglot/maml_5w1s", EPISODIC + ["learner.inner_steps=2"]),  # second order
    "reptile": ("omniglot/reptile_5w1s", EPISODIC + ["learner.inner_steps=2", "learner.inner_optimizer=sgd",
                                                     "learner.inner_lr=0.1"]),
    "umtra": ("omniglot/umtra_protonet_5w1s", EPISODIC),
    "simclr": ("ssl.yaml", SSL + ["learner.name=simclr"]),
    "moco": ("ssl.yaml", SSL + ["learner.name=moco", "learner.queue_size=32"]),
    "byol": ("ssl.yaml", SSL + ["learner.name=byol", "learner.pred_hidden=16"]),
}


def torchrun(*args, env=None, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    # gloo on the loopback interface: the tests' processes all run on this machine
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", **(env or {})})


def config(path, overrides, tmp):
    if path == "ssl.yaml":
        return resolve(apply_overrides({"learner": {"name": "simclr"}, "tasks": {"views": 2}}, overrides))
    return load_config(path, overrides)


def tensors_of(run):
    return load_checkpoint(find_checkpoint(run))[0]


def max_diff(a, b, params):
    keys = [k for k in a if a[k].is_floating_point() and (k in params) == True]  # noqa: E712
    return max((a[k].double() - b[k].double()).abs().max().item() for k in keys) if keys else 0.0


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One 2-process launch training every run of RUNS (plus the gather-gradient check)."""
    tmp = tmp_path_factory.mktemp("dist")
    runs = []
    for name, (preset, over) in RUNS.items():
        runs.append({"config": preset if preset != "ssl.yaml" else str(tmp / "ssl.yaml"), "overrides": over,
                     "run_dir": str(tmp / f"{name}-two")})
    (tmp / "ssl.yaml").write_text("learner: {name: simclr}\ntasks: {views: 2}\n")
    (tmp / "jobs.json").write_text(json.dumps({"out": str(tmp), "runs": runs, "gather_check": True}))
    r = torchrun(str(HERE / "distributed_worker.py"), str(tmp / "jobs.json"), timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return tmp


@pytest.mark.parametrize("name", sorted(RUNS))
def test_two_processes_end_with_the_one_process_parameters(launched, name):
    preset, over = RUNS[name]
    one = launched / f"{name}-one"
    train(config(preset, over, launched), one, echo=lambda *a: None)
    a, b = tensors_of(one), tensors_of(launched / f"{name}-two")
    assert a.keys() == b.keys()
    params = set(load_checkpoint(find_checkpoint(one))[1]["param_names"])
    tol = 1e-4 if RUNS[name][0] == "ssl.yaml" else 1e-5  # fp32 sums in another order
    assert max_diff(a, b, params) <= tol
    # buffers (BatchNorm statistics, EMA targets, queues): the same up to float rounding, relative to their scale
    for k in a:
        if k not in params and a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
    # every process holds exactly the same tensors (momentum targets and queues included)
    ranks = [json.loads((launched / f"{name}-two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["tensors"] == ranks[1]["tensors"] and ranks[0]["step"] == 3


def test_the_gathered_embeddings_pass_the_full_gradient_back(launched):
    for r in (0, 1):
        assert json.loads((launched / f"gather_rank{r}.json").read_text())["max_diff"] < 1e-6


def test_evaluation_on_two_processes_equals_one(launched, capsys):
    from metassl.cli.main import main

    run = launched / "protonet-one"
    if not run.exists():
        train(config(*RUNS["protonet"], launched), run, echo=lambda *a: None)
    args = ["eval", str(run), "--ways", "3", "--shots", "1", "--episodes", "25", "--batch-episodes", "4", "--json"]
    assert main(args) == 0
    one = json.loads(capsys.readouterr().out)
    r = torchrun("-m", "metassl", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads(r.stdout)  # printed once, by rank 0
    assert two["per_episode_accuracy"] == one["per_episode_accuracy"] if "per_episode_accuracy" in one else True
    assert two["accuracy"] == one["accuracy"] and two["ci95"] == one["ci95"] and two["f1"] == one["f1"]


def test_resume_across_world_sizes_equals_one_uninterrupted_run(tmp_path):
    over = [o for o in EPISODIC if not o.startswith(("train.steps", "train.checkpoint_every"))] + \
        ["train.checkpoint_every=1"]
    run = tmp_path / "run"
    preset = "omniglot/protonet_5w1s"
    r = torchrun("-m", "metassl", "train", preset, *over, "train.steps=2", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    train(load_config(preset, over + ["train.steps=4"]), run, resume=True, echo=lambda *a: None)  # 1 process
    r = torchrun("-m", "metassl", "train", "--resume", str(run), "train.steps=6")
    assert r.returncode == 0, r.stderr[-3000:]
    straight = tmp_path / "straight"
    train(load_config(preset, over + ["train.steps=6"]), straight, echo=lambda *a: None)
    a, b = tensors_of(run), tensors_of(straight)
    assert load_checkpoint(find_checkpoint(run))[1]["step"] == 6
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()) < 1e-4


def test_a_killed_process_makes_torchrun_restart_from_the_last_checkpoint(tmp_path):
    # a relaunch whose connection fails (seen on a loaded machine) gives up after 20 s and is relaunched again
    over = [o for o in EPISODIC if not o.startswith(("train.steps", "train.checkpoint_every"))] + \
        ["train.checkpoint_every=2", "train.steps=5", "train.dist_timeout=20"]
    # more than one restart allowed: a relaunch can itself fail to connect on a loaded machine (then it is retried);
    # seen rarely in a full suite run, so a launch whose every relaunch failed is repeated once, in a new folder
    for attempt in range(2):
        run = tmp_path / f"run{attempt}"
        r = torchrun("--max-restarts=5", "-m", "metassl", "train", "omniglot/protonet_5w1s", *over, "--run-dir",
                     str(run), env={"METASSL_FAULT": "1:3"})
        if r.returncode == 0:
            break
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stdout and "of a torchrun launch: resuming" in r.stdout
    straight = tmp_path / "straight"
    train(load_config("omniglot/protonet_5w1s", over), straight, echo=lambda *a: None)
    a, b = tensors_of(run), tensors_of(straight)
    assert load_checkpoint(find_checkpoint(run))[1]["step"] == 5
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()) < 1e-4


def test_reptile_with_a_carried_inner_state_refuses_several_processes(tmp_path):
    r = torchrun("-m", "metassl", "train", "omniglot/reptile_5w1s", *EPISODIC, "--run-dir", str(tmp_path / "run"))
    assert r.returncode != 0 and "learner.inner_state=carry runs the tasks of a meta-batch one after" in r.stderr


def test_a_batch_too_small_to_split_is_a_clear_error(tmp_path):
    r = torchrun("-m", "metassl", "train", "omniglot/protonet_5w1s", *EPISODIC, "tasks.tasks_per_batch=1",
                 "--run-dir", str(tmp_path / "run"))
    assert r.returncode != 0 and "tasks.tasks_per_batch=1: each of the 2 processes needs" in r.stderr
