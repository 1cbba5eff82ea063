"""Issue 20, runs and checkpoints: resume after any kill (before the first checkpoint, by SIGTERM, mid-window),
MAML's vmap/loop choice across a resume, one writer per run folder, no non-finite checkpoint, one-line errors for
damaged checkpoint files and full disks, leftovers cleaned, files that honour the umask. Tiny digits runs on the CPU."""

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from metassl.cli.main import main
from metassl.config import apply_overrides, resolve
from metassl.engine import checkpoint as ckpt
from metassl.engine import runlock
from metassl.engine.build import load_model
from metassl.engine.checkpoint import CheckpointError, find_checkpoint, load_checkpoint
from metassl.engine.logging import read_metrics
from metassl.engine.meta import StepRunner
from metassl.engine.trainer import Trainer, prepare_run_dir

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["data.dataset=digits", "data.train_split=train", "data.val_split=null", "data.test_split=test",
        "model.backbone=mlp", "model.hidden=[16,8]", "model.image_size=8", "tasks.ways=3", "tasks.shots=1",
        "tasks.queries=2", "tasks.tasks_per_batch=2", "eval.ways=3", "eval.shots=[1]", "eval.queries=2",
        "eval.episodes=10", "train.progress=false", "train.tensorboard=false", "train.report=false",
        "train.checkpoint_minutes=0"]
PRESET = "omniglot/protonet_5w1s"


def cfg_of(*over):
    return resolve(apply_overrides({}, [*TINY, *over]))


def cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def kill_at(monkeypatch, step):
    """Stop a run in-process when it is about to compute step `step + 1` (as SIGINT/SIGTERM would)."""
    real = Trainer.train_step

    def train_step(self):
        if self.step == step:
            raise KeyboardInterrupt("SIGTERM")
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return lambda: monkeypatch.setattr(Trainer, "train_step", real)


def hidden(run):
    return sorted(p.name for d in (run, run / "checkpoints") if d.is_dir() for p in d.iterdir()
                  if p.name.startswith("."))


def rows_without_time(run):
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(run)]


# -- 1. a run killed before its first checkpoint, and time-based checkpoints ----------------------------------------
def test_resume_before_the_first_checkpoint_starts_again_from_step_0(tmp_path, capsys, monkeypatch):
    run, straight = tmp_path / "run", tmp_path / "straight"
    undo = kill_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt, match=f"at step 2; no checkpoint was written yet: `metassl train --resume"):
        Trainer(cfg_of("train.steps=6", "train.log_every=1"), run, echo=lambda *a: None).run()
    undo()
    assert (run / "config.yaml").is_file() and not (run / "checkpoints").exists()
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    code, out, err = cli(["train", "--resume", run], capsys)
    assert code == 0, err
    assert "holds no checkpoint yet" in out and "from step 0" in out and "metrics.jsonl is replaced" in out
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5, 6]  # replaced, not appended
    # the learner's default distance, as cfg_of's run (the preset chooses the plain distance, learner.distance=l2)
    assert cli(["train", PRESET, *TINY, "train.steps=6", "train.log_every=1", "learner.distance=euclidean",
                "--run-dir", straight], capsys)[0] == 0
    a, b = load_checkpoint(find_checkpoint(run))[0], load_checkpoint(find_checkpoint(straight))[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rows_without_time(run) == rows_without_time(straight)


def test_resume_takes_best_when_it_is_newer_than_latest(tmp_path, monkeypatch):
    over = ("train.steps=8", "train.checkpoint_every=5", "train.val_every=3", "data.val_split=test",
            "train.val_episodes=4")
    straight = Trainer(cfg_of(*over), tmp_path / "straight", echo=lambda *a: None)
    straight.run()
    undo = kill_at(monkeypatch, 4)  # validated (and saved best) at step 3, no step checkpoint yet
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg_of(*over), tmp_path / "run", echo=lambda *a: None).run()
    undo()
    said = []
    Trainer(cfg_of(*over), tmp_path / "run", resume=True, echo=said.append).run()
    assert any("from step 3 (best)" in x for x in said)
    a = load_checkpoint(find_checkpoint(tmp_path / "straight"))[0]
    b = load_checkpoint(find_checkpoint(tmp_path / "run"))[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_minutes_checkpoints_between_checkpoint_every(tmp_path):
    Trainer(cfg_of("train.steps=3", "train.checkpoint_every=1000", "train.keep_checkpoints=10",
                   "train.checkpoint_minutes=1e-9"), tmp_path / "timed", echo=lambda *a: None).run()
    assert sorted(p.name for p in (tmp_path / "timed" / "checkpoints").glob("step_*")) == [
        "step_00000001", "step_00000002", "step_00000003"]
    Trainer(cfg_of("train.steps=3", "train.checkpoint_every=1000", "train.keep_checkpoints=10"), tmp_path / "off",
            echo=lambda *a: None).run()
    assert [p.name for p in (tmp_path / "off" / "checkpoints").glob("step_*")] == ["step_00000003"]


def test_prepare_run_dir_for_a_fresh_start(tmp_path):
    run = tmp_path / "r"
    assert prepare_run_dir(run) is False  # does not exist
    run.mkdir()
    (run / ".config.yaml.abcd1234.tmp").write_text("x")  # only what a killed write left: as good as empty
    assert prepare_run_dir(run) is False
    (run / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(Exception, match=r"exists and is not empty: continue it with `metassl train --resume"):
        prepare_run_dir(run)
    assert prepare_run_dir(run, restarted=True, echo=lambda *a: None) is True  # torchrun restart: resume
    assert prepare_run_dir(run, is_main=False) is False  # only rank 0 decides a fresh launch
    (run / "config.yaml").unlink()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not a run folder"):
        prepare_run_dir(run)


# -- 2. learner.path=auto: the choice is part of the run's state -----------------------------------------------------
MAML = ["learner.name=maml", "learner.inner_lr=0.4", "learner.inner_steps=1", "learner.eval_inner_steps=1",
        "learner.path=auto", "model.norm=batch", "model.track_running_stats=false", "tasks.tasks_per_batch=3",
        "train.log_every=1", "train.checkpoint_every=4", "optim.name=adam", "optim.lr=0.003"]


def test_maml_path_auto_resumes_bit_for_bit(tmp_path, monkeypatch):
    # the timings decide the path; a machine whose timings flip between attempts is simulated by scripting them
    preferred = ["loop"]
    real_choose = StepRunner._choose

    def choose(self):
        self.timings = {p: [1.0, 1.0 if p == preferred[0] else 2.0] for p in self.timings}
        real_choose(self)

    monkeypatch.setattr(StepRunner, "_choose", choose)
    cfg = cfg_of(*MAML, "train.steps=12")
    straight = Trainer(cfg, tmp_path / "straight", echo=lambda *a: None)
    straight.run()
    assert straight.runner.path == "loop"
    run = tmp_path / "run"
    undo = kill_at(monkeypatch, 5)  # checkpoint at 4, in the middle of the trial steps (6 of them)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, run, echo=lambda *a: None).run()
    undo()
    undo = kill_at(monkeypatch, 9)  # resumed from 4: the trials continue, the choice is made; checkpoint at 8
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, run, resume=True, echo=lambda *a: None).run()
    undo()
    assert load_checkpoint(find_checkpoint(run))[1]["engine"]["path"] == "loop"
    preferred[0] = "vmap"  # timed again, this attempt would take the other path
    said = []
    last = Trainer(cfg, run, resume=True, echo=said.append)
    last.run()
    assert last.runner.path == "loop" and any("as chosen before the resume" in s for s in said)
    a, b = load_checkpoint(find_checkpoint(straight.run_dir))[0], load_checkpoint(find_checkpoint(run))[0]
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    chosen = [r for r in read_metrics(run) if r.get("event") == "path"]
    assert len(chosen) == 1 and chosen[0]["path"] == "loop"


# -- 3. one writer per run folder; readers survive pruning ----------------------------------------------------------
def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(["train", PRESET, *TINY, "train.steps=2", "--run-dir", run], capsys)[0] == 0
    assert not (run / runlock.LOCK_NAME).exists()  # released at the end
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from metassl.engine import runlock; "
                               "runlock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(120)", str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = cli(["train", "--resume", run, "train.steps=4"], capsys)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert f"PID {holder.pid} on host" in err and str(run / runlock.LOCK_NAME) in err and "in use" in err
        with pytest.raises(runlock.RunLockedError, match=f"PID {holder.pid}"):
            prepare_run_dir(run)
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock file is stale, and taken over with a message
    assert json.loads((run / runlock.LOCK_NAME).read_text())["pid"] == holder.pid
    code, out, err = cli(["train", "--resume", run, "train.steps=4"], capsys)
    assert code == 0, err
    assert "took over a stale lock" in out and f"PID {holder.pid}" in out
    assert load_checkpoint(find_checkpoint(run))[1]["step"] == 4 and not (run / runlock.LOCK_NAME).exists()


def test_in_process_a_running_trainer_keeps_its_folder_and_a_failed_start_leaves_nothing(tmp_path):
    run = tmp_path / "run"
    first = Trainer(cfg_of("train.steps=2", "train.log_every=1"), run, echo=lambda *a: None)
    second = Trainer(cfg_of("train.steps=2"), run, echo=lambda *a: None)  # the first was never run: taken over
    assert first.lock is not None and first.lock.fd is None
    refused = []
    real_log = second.logger.log

    def log(step, values, kind="train"):  # a third Trainer while the second one trains
        if not refused:
            with pytest.raises(runlock.RunLockedError, match=f"PID {os.getpid()}.*this process is running"):
                Trainer(cfg_of("train.steps=2"), run, echo=lambda *a: None)
            refused.append(step)
        real_log(step, values, kind)

    second.logger.log = log
    second.run()
    first.close()  # harmless: the lock it had is gone
    assert refused and not (run / runlock.LOCK_NAME).exists()
    with pytest.raises(Exception, match="only"):  # a config that does not fit the data: no folder is left behind
        Trainer(cfg_of("tasks.ways=9"), tmp_path / "bad", echo=lambda *a: None)
    assert not (tmp_path / "bad").exists()


def test_a_reader_retries_when_its_checkpoint_is_pruned_under_it(tmp_path, monkeypatch):
    run = tmp_path / "run"
    Trainer(cfg_of("train.steps=2", "train.checkpoint_every=1", "train.keep_checkpoints=1"), run,
            echo=lambda *a: None).run()
    real = ckpt.load_tensors_file
    pruned = []

    def slow_reader(file):
        if not pruned:  # a training writes step 3 (keep_checkpoints=1) between the reader's choice and its read
            pruned.append(file)
            folder = Path(file).parent
            tensors, state, training = load_checkpoint(folder)
            ckpt.save_checkpoint(run, 3, tensors, {k: v for k, v in state.items() if k not in (
                "format", "format_version", "step", "checkpoint_id")}, training, keep=1)
        return real(file)

    monkeypatch.setattr(ckpt, "load_tensors_file", slow_reader)
    model, info = load_model(run)
    assert pruned and not pruned[0].parent.exists() and info["step"] == 3


# -- 4. no non-finite checkpoint --------------------------------------------------------------------------------------
def test_nan_weights_with_a_finite_loss_are_never_checkpointed_on_cpu(tmp_path):
    run = tmp_path / "run"
    t = Trainer(cfg_of("train.steps=12", "train.checkpoint_every=5", "train.log_every=1", "optim.lr=0.01"), run,
                echo=lambda *a: None)
    real_step = t.optimizer.step

    def step(*a, **k):  # what optim.grad_clip=nan does: the weights turn NaN, the loss of ProtoNet... is checked later
        out = real_step(*a, **k)
        if t.step == 7:
            with torch.no_grad():
                next(iter(t.model.params.values())).fill_(float("nan"))
        return out

    t.optimizer.step = step
    t._check_finite = lambda window: None  # let the weights, not the loss, be what is caught
    real_loss = t.model.learner.loss
    t.model.learner.loss = lambda p, b, x: real_loss({k: torch.nan_to_num(v) for k, v in p.items()}, b, x)
    with pytest.raises(FloatingPointError) as e:
        t.run()
    msg = str(e.value)
    assert "step 10:" in msg and "NaN or inf" in msg and "last good checkpoint is step 5" in msg
    assert f"--resume {run} optim.lr=0.001" in msg
    tensors, state, _ = load_checkpoint(find_checkpoint(run))
    assert state["step"] == 5 and not ckpt.non_finite(tensors)
    assert not (run / "checkpoints" / "step_00000010").exists()


def test_eval_refuses_a_checkpoint_with_non_finite_weights(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(cfg_of("train.steps=1"), run, echo=lambda *a: None).run()
    folder = find_checkpoint(run)
    tensors, meta = ckpt.load_tensors_file(folder / "model.safetensors")
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = torch.full_like(tensors[name], float("inf"))
    save_file(tensors, str(folder / "model.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="hold NaN or inf"):
        load_model(run)
    code, _, err = cli(["eval", run], capsys)
    assert code == 2 and err.startswith(f"metassl eval: error: {folder / 'model.safetensors'}: ") and \
        "lower optim.lr" in err and err.count("\n") == 1


# -- 5. damaged checkpoint files and write failures: one line each ----------------------------------------------------
def _truncate(f):
    f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])


def _state_edit(fn):
    def edit(folder):
        s = json.loads((folder / "state.json").read_text())
        fn(s)
        (folder / "state.json").write_text(json.dumps(s))
    return edit


DAMAGE = {  # name: (what breaks, the file the message names, command)
    "truncated model": (lambda d: _truncate(d / "model.safetensors"), "model.safetensors", "eval"),
    "garbage model": (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 5), "model.safetensors", "eval"),
    "model is a folder": (lambda d: ((d / "model.safetensors").unlink(), (d / "model.safetensors").mkdir()),
                          "model.safetensors", "eval"),
    "model missing": (lambda d: (d / "model.safetensors").unlink(), "model.safetensors", "eval"),
    "swapped files": (lambda d: (os.replace(d / "model.safetensors", d / "x"), os.replace(
        d / "training.safetensors", d / "model.safetensors"), os.replace(d / "x", d / "training.safetensors")),
        "model.safetensors", "eval"),
    "state not json": (lambda d: (d / "state.json").write_text("{oops"), "state.json", "eval"),
    "state a list": (lambda d: (d / "state.json").write_text("[1, 2]"), "state.json", "eval"),
    "state without config": (_state_edit(lambda s: s.pop("config")), "state.json", "eval"),
    "state without step": (_state_edit(lambda s: s.pop("step")), "state.json", "eval"),
    "state bad preprocess": (_state_edit(lambda s: s.update(preprocess=[1])), "state.json", "eval"),
    "training truncated": (lambda d: _truncate(d / "training.safetensors"), "training.safetensors", "train"),
    "training without rng": (lambda d: save_file({"x": torch.ones(1)}, str(d / "training.safetensors")),
                             "training.safetensors", "train"),
    "training missing": (lambda d: (d / "training.safetensors").unlink(), "training.safetensors", "train"),
    "state without optimizer": (_state_edit(lambda s: s.pop("optimizer")), "state.json", "train"),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    Trainer(cfg_of("train.steps=2", "train.checkpoint_every=2"), run, echo=lambda *a: None).run()
    return run


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_checkpoint_files_are_one_line_errors(case, trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    folder = find_checkpoint(run)
    damage, file, command = DAMAGE[case]
    damage(folder)
    args = ["eval", run, "--episodes", "5"] if command == "eval" else ["train", "--resume", run, "train.steps=3"]
    code, _, err = cli(args, capsys)
    assert code == 2, err
    assert err.startswith(f"metassl {command}: error: {folder / file}: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and ("another checkpoint" in err or "train again" in err), err


def test_resume_never_restarts_over_damaged_checkpoints(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (find_checkpoint(run) / "state.json").unlink()
    code, _, err = cli(["train", "--resume", run, "train.steps=3"], capsys)
    assert code == 2 and "none is complete" in err and (run / "checkpoints" / "step_00000002").is_dir()


def test_eval_does_not_need_training_state(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (find_checkpoint(run) / "training.safetensors").write_bytes(b"damaged")
    assert cli(["eval", run, "--episodes", "5"], capsys)[0] == 0
    (find_checkpoint(run) / "training.safetensors").unlink()
    assert cli(["eval", run, "--episodes", "5"], capsys)[0] == 0


def test_a_training_state_from_another_checkpoint_is_refused(trained, tmp_path, capsys):
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(trained, a)
    Trainer(cfg_of("train.steps=2", "train.checkpoint_every=2", "seed=5"), b, echo=lambda *x: None).run()
    shutil.copy(find_checkpoint(b) / "training.safetensors", find_checkpoint(a) / "training.safetensors")
    code, _, err = cli(["train", "--resume", a, "train.steps=3"], capsys)
    assert code == 2 and "belongs to another checkpoint" in err and "training.safetensors" in err


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real = ckpt.save_file

    def full_disk(tensors, filename, metadata=None):
        if "step_00000004" in filename and "training" in filename:
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    code, _, err = cli(["train", PRESET, *TINY, "train.steps=6", "train.checkpoint_every=2", "--run-dir", run],
                       capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"metassl train: error: {run / 'checkpoints' / 'step_00000004'}: cannot write") and \
        "No space left on device" in err and "--resume" in err
    assert hidden(run) == [] and load_checkpoint(find_checkpoint(run))[1]["step"] == 2
    assert not (run / "checkpoints" / "step_00000004").exists() and not (run / runlock.LOCK_NAME).exists()
    monkeypatch.setattr(ckpt, "save_file", real)
    assert cli(["train", "--resume", run], capsys)[0] == 0
    assert load_checkpoint(find_checkpoint(run))[1]["step"] == 6


# -- 10. SIGTERM ------------------------------------------------------------------------------------------------------
def test_sigterm_stops_like_sigint_and_the_run_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "metassl", "train", PRESET, *TINY, "train.steps=100000",
                             "train.checkpoint_every=3", "train.log_every=1", "--run-dir", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "checkpoints" / "latest").exists():
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert hidden(run) == []  # no temporaries, and the lock released
    done = load_checkpoint(find_checkpoint(run))[1]["step"]
    code, _, err = cli(["train", "--resume", run, f"train.steps={done + 2}"], capsys)
    assert code == 0, err
    assert load_checkpoint(find_checkpoint(run))[1]["step"] == done + 2


# -- 11. leftovers, metrics.jsonl across a resume, permissions ---------------------------------------------------------
def test_leftovers_of_killed_writes_are_cleaned_at_the_next_start(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(cfg_of("train.steps=2", "train.checkpoint_every=1", "train.val_every=1", "data.val_split=test",
                   "train.val_episodes=5"), run, echo=lambda *a: None).run()
    ck = run / "checkpoints"
    (ck / ".step_00000003.k2j4h5g6.tmp").mkdir()
    (ck / ".step_00000003.k2j4h5g6.tmp" / "model.safetensors").write_bytes(b"half")
    (ck / ".latest.ab12cd34.tmp").write_text("step_00000003")
    (ck / ".step_00000001.pruned.tmp").mkdir()
    (run / ".config.yaml.zz99yy88.tmp").write_text("half")
    os.replace(ck / "best", ck / ".best.old")  # killed between the two renames of a `best` replacement
    code, out, err = cli(["train", "--resume", run, "train.steps=3"], capsys)
    assert code == 0, err
    assert "cleaned up after an interrupted write" in out and ".best.old -> best (restored)" in out
    assert hidden(run) == [] and (ck / "best" / "state.json").is_file()


def test_metrics_after_a_resume_equal_an_uninterrupted_run(tmp_path, monkeypatch):
    over = ("train.steps=12", "train.log_every=4", "train.checkpoint_every=5")
    Trainer(cfg_of(*over), tmp_path / "straight", echo=lambda *a: None).run()
    undo = kill_at(monkeypatch, 7)  # checkpoint at 5: the window of steps 5..8 is half done
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg_of(*over), tmp_path / "run", echo=lambda *a: None).run()
    undo()
    Trainer(cfg_of(*over), tmp_path / "run", resume=True, echo=lambda *a: None).run()
    rows = rows_without_time(tmp_path / "run")
    assert [r["step"] for r in rows] == [4, 8, 12] and rows == rows_without_time(tmp_path / "straight")


def test_checkpoint_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        Trainer(cfg_of("train.steps=1"), tmp_path / "run", echo=lambda *a: None).run()
    finally:
        os.umask(old)
    run = tmp_path / "run"
    folder = find_checkpoint(run)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(folder) == 0o755
    assert {f.name: mode(f) for f in folder.iterdir()} == {f.name: 0o644 for f in folder.iterdir()}
    assert mode(run / "checkpoints" / "latest") == 0o644 and mode(run / "config.yaml") == 0o644
    assert mode(run / "metrics.jsonl") == 0o644


def test_demo_never_trains_over_an_existing_run(tmp_path, capsys):
    from metassl.cli.main import main

    run = tmp_path / "demo"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "checkpoints").mkdir()
    assert main(["demo", "--run-dir", str(run)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]
