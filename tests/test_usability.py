"""Issue 21, items 6, 7, 8, 10 and 11, on tiny runs (scikit-learn's digits, 2 training steps): runs remember their
data root, preset labels stay off runs moved to other data, a run that is all warm-up says so, the command line
takes its arguments in any order (and `| head`), runs/latest, and a report that shows progress and shares one
embedding of the test split without changing a number."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metassl.cli.main import main, parse_args
from metassl.config import load_config

TINY = ["data.dataset=digits", "data.train_split=train", "data.val_split=null", "data.test_split=test",
        "model.hidden=8", "model.depth=3", "tasks.ways=5", "tasks.shots=1", "tasks.queries=3",
        "tasks.tasks_per_batch=2", "train.steps=2", "train.progress=false", "train.tensorboard=false",
        "train.report=false", "eval.ways=3", "eval.shots=[1]", "eval.episodes=20"]


@contextlib.contextmanager
def cwd(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def train(base: Path, *extra: str) -> tuple[Path, str, str]:
    """A tiny run under base/runs (the default folder: no --run-dir), from base, with --data-root data; the run
    folder and what was printed."""
    out, err = io.StringIO(), io.StringIO()
    with cwd(base), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["train", "omniglot/protonet_5w1s", *TINY, "output_dir=runs", *extra, "--data-root", "data"]) == 0
    line = next(x for x in out.getvalue().splitlines() if x.startswith("run folder: "))
    return base / line.split()[2], out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("usability")
    (base / "data").mkdir()
    return base


@pytest.fixture(scope="module")
def run(base):
    return train(base)


def test_run_remembers_its_data_root(run, base, tmp_path, monkeypatch, capsys):
    run_dir = run[0]
    state = json.loads(next((run_dir / "checkpoints").glob("step_*/state.json")).read_text())
    assert state["origin"]["data_root"] == "data"
    assert state["origin"]["data_root_abs"] == str((base / "data").resolve())
    import metassl.engine.frozen as frozen

    roots = []
    real = frozen.load_dataset
    monkeypatch.setattr(frozen, "load_dataset", lambda ds, sp, root, *a: roots.append(root) or real(ds, sp, root, *a))
    monkeypatch.chdir(tmp_path)  # elsewhere: the relative "data" is not here, the absolute path is used
    assert main(["eval", str(run_dir), "--episodes", "5"]) == 0
    assert main(["eval", str(run_dir), "--episodes", "5", "--data-root", str(tmp_path)]) == 0  # explicit wins
    assert roots == [str((base / "data").resolve()), str(tmp_path)]


def test_preset_labels_only_on_the_presets_data(run, capsys):
    from metassl.engine.build import load_model
    from metassl.engine.provenance import paper_reference

    run_dir = run[0]
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--split", "train", "--ways", "5", "--shots", "1", "--episodes", "5"]) == 0
    out = capsys.readouterr().out
    assert "5-way 1-shot" in out and "paper" not in out  # the preset's 98.8 is Omniglot's, not digits'
    model, _ = load_model(run_dir)
    protocol = {"dataset": "digits", "split": "test", "ways": 5, "shots": 1}
    assert paper_reference(model.config, model.origin, protocol) is None
    on_own_data = {**model.origin, "preset_data": {"dataset": "digits", "test_split": "test", "options": {}}}
    assert paper_reference(model.config, on_own_data, protocol) == 98.8
    from metassl.report import write_report

    page = write_report(run_dir, episodes=5, out=run_dir / "report_labels").html.read_text()
    assert "trained on digits" in page and "Snell" not in page  # not the preset's description
    assert "<code>data.dataset=digits</code>" in page and "omniglot/protonet_5w1s" in page  # the overrides


def test_short_run_all_warmup_warns(base):
    from metassl.engine.trainer import warmup_note

    new, _, err = train(base, "optim.warmup_steps=3")
    lines = [x for x in err.splitlines() if "warm" in x]
    assert len(lines) == 1 and "optim.warmup_steps=3" in lines[0] and "train.steps=2" in lines[0], err
    assert "reaches only 0.000667" in lines[0]  # 2/3 of optim.lr=0.001
    assert (base / "runs" / "latest").resolve() == new.resolve()  # runs/latest follows the newest run
    cfg = load_config("omniglot/protonet_5w1s", ["train.steps=100", "optim.warmup_steps=10"])
    assert warmup_note(cfg) is None  # a tenth of the run: fine


def test_argument_order(run, base, tmp_path, capsys):
    run_dir = run[0]
    assert (base / "runs" / "latest").is_symlink()
    for cmd in (["train", "omniglot/protonet_5w1s", "train.steps=3", "--data-root", "D", "tasks.ways=7"],
                ["eval", "R", "learner.distance=cosine", "--data-root", "D", "learner.temperature=0.1"]):
        a = parse_args(cmd)
        assert a.data_root == "D" and len(a.overrides) == 2, cmd
    # predict: RUN after --query is not a query; --run RUN; the documented form
    a = parse_args(["predict", "--support", "S", "--query", "q1.png", "q2.png", str(run_dir)])
    assert a.run == str(run_dir) and a.query == ["q1.png", "q2.png"]
    assert parse_args(["predict", "--query", "q.png", "--run", "R", "--support", "S"]).run == "R"
    a = parse_args(["predict", "R", "--support", "S", "--query", "q.png"])
    assert a.run == "R" and a.query == ["q.png"]
    with pytest.raises(SystemExit):
        parse_args(["predict", "--support", "S", "--query", "q1.png", "q2.png"])
    assert "give the run first" in capsys.readouterr().err
    # a reader that goes away (`metassl presets | head -1`) ends the command quietly
    p = subprocess.Popen([sys.executable, "-m", "metassl", "presets"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_report_progress_and_shared_embedding(run, capsys):
    from metassl.engine.build import load_model
    from metassl.engine.frozen import load_run_split
    from metassl.eval.episodes import Protocol
    from metassl.engine.shared_features import SharedFeatures
    from metassl.report import write_report

    run_dir, out, _ = run
    assert "trained 2 steps" in out and f"run folder runs/{run_dir.name}" in out
    capsys.readouterr()
    assert main(["report", str(run_dir), "--episodes", "30"]) == 0
    o = capsys.readouterr()
    assert "written in" in o.out and "report: embedding" in o.err and "report: evaluating 3-way 1-shot" in o.err
    page = (run_dir / "report" / "report.html").read_text()
    assert '<figure class=wide><img src="learning_curves.png"' in page
    model, _ = load_model(run_dir)
    split = load_run_split(model)
    shared = SharedFeatures.build(model, split, Protocol("digits", "test", 3, 1, 15, 30, 0), 50)
    # only the rows the checked episodes read are embedded (lazily, as the report needs them)
    assert shared and 0 < int(shared.embedded.sum()) < split.images.shape[0]
    # the same numbers with one embedding of the test split as with every episode's images embedded
    shared = write_report(run_dir, episodes=30, out=run_dir / "r1").table
    alone = write_report(run_dir, episodes=30, out=run_dir / "r2", share_features=False).table
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in shared]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in alone]
    sweep = [(run_dir / d / "report.html").read_text().split("Accuracy against shots")[1] for d in ("r1", "r2")]
    assert sweep[0].split("<h2>")[0] == sweep[1].split("<h2>")[0]
    # `metassl eval` too: each test image embedded once, the same accuracies and per-episode values as images
    from metassl.engine.evaluate import evaluate_run

    _, st1, r1 = evaluate_run(run_dir, shots=[1, 2], episodes=30)
    _, st2, r2 = evaluate_run(run_dir, shots=[1, 2], episodes=30, share_features=False)
    assert st1["shared_features"] and not st2["shared_features"]
    assert [r.per_episode_accuracy for r in r1] == [r.per_episode_accuracy for r in r2]
    assert len(r1[0].per_episode_accuracy) == 30 and r1[0].accuracy != r1[1].accuracy
