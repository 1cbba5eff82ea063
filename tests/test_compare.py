"""`metassl compare`: paired statistics of methods on the same fixed episodes, against scipy and hand computation,
and the CLI on two tiny runs."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from metassl.cli.main import main
from metassl.engine.evaluate import evaluate_run
from metassl.eval.compare import compare_results, paired_comparison
from metassl.eval.result import EvalResult

pytestmark = pytest.mark.usefixtures("one_thread")


def test_paired_statistics_on_known_numbers():
    a = [50.0, 60.0, 70.0, 80.0]
    b = [55.0, 62.0, 71.0, 90.0]
    c = paired_comparison(a, b)
    # differences 5, 2, 1, 10: mean 4.5, sample sd sqrt(49 / 3)
    sd = math.sqrt(49 / 3)
    assert c.mean_difference == pytest.approx(4.5)
    assert c.t_statistic == pytest.approx(4.5 / (sd / 2))
    assert c.ci95 == pytest.approx(stats.t.ppf(0.975, 3) * sd / 2)
    assert c.t_pvalue == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert c.wilcoxon_pvalue == pytest.approx(stats.wilcoxon(b, a).pvalue)
    assert (c.wins, c.losses, c.ties) == (4, 0, 0)
    # the t interval excludes 0 exactly when p < 0.05
    assert (c.mean_difference - c.ci95 > 0) == (c.t_pvalue < 0.05)


def test_paired_statistics_match_scipy_on_random_episodes():
    rng = np.random.default_rng(0)
    a = rng.uniform(60, 100, 600)
    b = np.clip(a + rng.normal(0.8, 3.0, 600), 0, 100)
    c = paired_comparison(a.tolist(), b.tolist())
    d = b - a
    assert c.mean_difference == pytest.approx(d.mean())
    lo, hi = stats.t.interval(0.95, 599, loc=d.mean(), scale=stats.sem(d))
    assert c.ci95 == pytest.approx((hi - lo) / 2)
    assert c.t_pvalue == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert c.wilcoxon_statistic == pytest.approx(stats.wilcoxon(b, a).statistic)
    assert c.wilcoxon_pvalue == pytest.approx(stats.wilcoxon(b, a).pvalue)
    assert c.wins + c.losses + c.ties == 600


def test_identical_methods_have_no_difference():
    a = [80.0, 90.0, 100.0]
    c = paired_comparison(a, a)
    assert c.mean_difference == 0 and c.ci95 == 0 and c.t_pvalue == 1.0 and c.wilcoxon_pvalue == 1.0
    assert c.ties == 3


def _result(seed, accs, ways=5):
    p = {"name": "fewshot", "dataset": "d", "split": "test", "ways": ways, "shots": 1, "queries": 15,
         "episodes": len(accs), "seed": seed}
    return EvalResult(p, float(np.mean(accs)), 0.0, per_episode_accuracy=list(accs))


def test_results_of_different_episodes_are_refused():
    with pytest.raises(ValueError, match="not paired"):
        compare_results([_result(0, [1.0, 2.0]), _result(1, [1.0, 2.0])])
    with pytest.raises(ValueError, match="not paired"):
        compare_results([_result(0, [1.0, 2.0]), _result(0, [1.0, 2.0], ways=3)])
    with pytest.raises(ValueError, match="at least 2 episodes"):
        paired_comparison([1.0], [2.0])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from metassl.config import apply_overrides, resolve
    from metassl.engine.trainer import train

    base = tmp_path_factory.mktemp("compare")
    runs = []
    for name, extra in (("protonet", []), ("cosine", ["learner.distance=cosine", "learner.temperature=0.1"])):
        cfg = resolve(apply_overrides({}, [
            "learner.name=protonet", "data.dataset=digits", "data.train_split=train", "data.val_split=null",
            "data.test_split=test", "model.backbone=conv4", "model.hidden=8", "model.depth=2", "tasks.ways=3",
            "tasks.shots=2", "tasks.queries=2", "train.steps=3", "train.progress=false", "train.tensorboard=false",
            "train.report=false", "eval.ways=3", "eval.shots=[1]", "eval.queries=5", "eval.episodes=30"] + extra))
        train(cfg, base / name)
        runs.append(base / name)
    return runs


def test_cli_compare_pairs_the_runs_episodes(two_runs, capsys):
    a, b = two_runs
    assert main(["compare", str(a), str(b), "--ways", "3", "--shots", "1", "--episodes", "30", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["learner"] for r in rows] == ["protonet", "protonet"] and rows[0]["paired_vs_first"] is None
    # each run's accuracy is what `metassl eval` gives on the same protocol
    singles = [evaluate_run(r, ways=3, shots=1, episodes=30)[2][0] for r in two_runs]
    for row, single in zip(rows, singles):
        assert row["accuracy"] == pytest.approx(single.accuracy) and row["ci95"] == pytest.approx(single.ci95)
    pc = rows[1]["paired_vs_first"]
    d = np.array(singles[1].per_episode_accuracy) - np.array(singles[0].per_episode_accuracy)
    assert pc["episodes"] == 30 and pc["mean_difference"] == pytest.approx(d.mean())
    assert pc["wins"] == int((d > 0).sum()) and pc["losses"] == int((d < 0).sum())
    # the people's table names the shared protocol and the reference
    assert main(["compare", str(a), str(b), "--ways", "3", "--shots", "1", "--episodes", "30"]) == 0
    out = capsys.readouterr().out
    assert "3-way 1-shot, 30 episodes" in out and "(reference)" in out and "Wilcoxon" in out


def test_cli_compare_needs_two_runs(two_runs, capsys):
    assert main(["compare", str(two_runs[0])]) == 2
    assert "at least two runs" in capsys.readouterr().err


def test_report_page_shows_the_comparison(two_runs, tmp_path):
    a, b = two_runs
    assert main(["report", str(a), str(b), "--episodes", "10", "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "Paired comparison" in page and "Wilcoxon" in page and "reference" in page
    rows = json.loads((tmp_path / "rep" / "comparison.json").read_text())
    assert len(rows) == 2 and rows[1]["paired_vs_first"]["episodes"] == 10
