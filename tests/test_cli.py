"""End to end through the `metassl` command on tiny data (scikit-learn's digits, 8x8): train, eval, resume."""

import json
import subprocess
import sys
import time

import pytest
import torch

from metassl.cli.main import main
from metassl.engine.checkpoint import find_checkpoint, load_checkpoint

TINY = ["data.dataset=digits", "data.train_split=train", "data.val_split=test", "data.test_split=test",
        "model.backbone=mlp", "model.hidden=[32,16]", "model.image_size=8", "tasks.ways=5", "tasks.shots=2",
        "tasks.queries=3", "tasks.tasks_per_batch=2", "eval.ways=3", "eval.shots=[1,5]", "eval.episodes=40",
        "train.val_episodes=20", "train.progress=false", "train.tensorboard=true", "optim.lr=0.003",
        "train.report=false"]


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_then_eval_json(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "omniglot/protonet_5w1s", *TINY, "train.steps=60", "train.val_every=30",
                              "train.checkpoint_every=20", "train.report=true", "train.report_episodes=10",
                              "--run-dir", str(run)], capsys)
    assert code == 0, err
    files = {p.name for p in run.iterdir()}
    assert {"config.yaml", "checkpoints", "metrics.jsonl", "tensorboard", "learning_curves.png", "report"} <= files
    assert (run / "report" / "report.html").is_file() and "report:" in out
    assert (run / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((run / "tensorboard").iterdir())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "val"] == [30, 60]
    assert (run / "checkpoints" / "best" / "state.json").is_file()
    _, state, _ = load_checkpoint(find_checkpoint(run))
    assert state["step"] == 60 and state["config"]["seed"] == 0 and state["preprocess"]

    code, out, err = run_cli(["eval", str(run), "--dataset", "digits", "--split", "test", "--ways", "4", "--shots",
                              "1", "--queries", "5", "--episodes", "50", "--seed", "3", "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["protocol"] == {"name": "fewshot", "dataset": "digits", "split": "test", "ways": 4, "shots": 1,
                               "queries": 5, "episodes": 50, "seed": 3}
    for k in ("accuracy", "ci95", "precision", "recall", "f1", "roc_auc"):
        assert isinstance(res[k], float)
    assert 25.0 < res["accuracy"] <= 100.0 and 0 < res["ci95"] < 20
    # the same protocol gives the same number (fixed episodes), a different seed gives other episodes
    _, out2, _ = run_cli(["eval", str(run), "--dataset", "digits", "--split", "test", "--ways", "4", "--shots",
                          "1", "--queries", "5", "--episodes", "50", "--seed", "3", "--json"], capsys)
    assert json.loads(out2)["accuracy"] == res["accuracy"]
    # the library function behind the command: the same number, progress reported per protocol, nothing printed
    from metassl.engine.evaluate import evaluate_run

    seen = []
    _, _, (r,) = evaluate_run(str(run), "digits", "test", 4, 1, 5, 50, 3, batch_episodes=20,
                              progress=lambda p, done: seen.append((p.tag, done)))
    assert r.accuracy == res["accuracy"] and r.tag == "4w1s" and seen == [("4w1s", 20), ("4w1s", 40), ("4w1s", 50)]
    assert capsys.readouterr().out == ""

    code, out, _ = run_cli(["eval", str(run / "checkpoints" / "best")], capsys)
    assert code == 0 and "3-way 1-shot" in out and "3-way 5-shot" in out


def test_resume_equals_uninterrupted(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["omniglot/protonet_5w1s", *TINY, "train.val_every=0", "train.checkpoint_every=10"]
    assert run_cli(["train", *common, "train.steps=30", "--run-dir", str(straight)], capsys)[0] == 0
    assert run_cli(["train", *common, "train.steps=20", "--run-dir", str(split)], capsys)[0] == 0
    # continue the stopped run to 30 steps, as after a kill at step 20
    code, out, err = run_cli(["train", "--resume", str(split), "train.steps=30"], capsys)
    assert code == 0, err
    a, sa, _ = load_checkpoint(find_checkpoint(straight))
    b, sb, _ = load_checkpoint(find_checkpoint(split))
    assert sa["step"] == sb["step"] == 30
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    steps = [json.loads(x)["step"] for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "resumed log must not repeat steps"


def test_killed_process_resumes_from_last_checkpoint(tmp_path):
    run = tmp_path / "killed"
    args = [sys.executable, "-m", "metassl", "train", "omniglot/protonet_5w1s", *TINY, "train.val_every=0",
            "train.steps=100000", "train.checkpoint_every=5", "--run-dir", str(run)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "checkpoints" / "latest").exists():
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        proc.kill()
        proc.wait()
    folder = find_checkpoint(run)  # the latest complete checkpoint survives the kill
    _, state, _ = load_checkpoint(folder)
    done = state["step"]
    assert done >= 5
    code = main(["train", "--resume", str(run), f"train.steps={done + 5}"])
    assert code == 0
    _, state2, _ = load_checkpoint(find_checkpoint(run))
    assert state2["step"] == done + 5


@pytest.mark.parametrize("args,match", [
    (["train", "omniglot/protonet_5w1s", "train.stpes=3"], "did you mean 'steps'"),
    (["train", "omniglot/protonet_5w1s", *TINY, "train.steps=1", "tasks.ways=7"], "only 6 classes"),
    (["train", "omniglot/protonet_5w1s", *TINY, "train.steps=1", "train.val_every=1", "eval.shots=[200]"],
     r"class .\d. has \d+"),
    (["train", "omniglot/protonet_5w1s", "data.dataset=digits", "data.train_split=val"], "has no split 'val'"),
    (["eval", "/nonexistent/run"], "does not exist"),
])
def test_cli_errors_are_one_clear_line(args, match, capsys, tmp_path):
    code, out, err = run_cli([*args, *(["--run-dir", str(tmp_path / "r")] if args[0] == "train" else [])], capsys)
    assert code == 2
    assert err.startswith("metassl ") and "Traceback" not in err
    import re
    assert re.search(match, err), err


def test_missing_dataset_names_files(tmp_path, capsys):
    code, _, err = run_cli(["train", "omniglot/protonet_5w1s", "--data-root", str(tmp_path / "empty"),
                            "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "images_background.zip" in err and "--data-root" in err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_datasets_command(capsys, tmp_path):
    code, out, _ = run_cli(["datasets", "--data-root", str(tmp_path)], capsys)
    assert code == 0
    assert "digits" in out and "omniglot" in out and "not found" in out
