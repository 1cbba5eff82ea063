"""Pre-train, then meta-learn: `init_from` copies exactly the encoder tensors and reports the rest."""

import pytest

from metassl.cli.main import main
from metassl.engine.checkpoint import find_checkpoint, load_checkpoint

BASE = ["data.dataset=digits", "data.train_split=train", "data.val_split=null", "data.test_split=test",
        "model.backbone=conv4", "model.depth=2", "model.hidden=8", "tasks.ways=3", "tasks.shots=2", "tasks.queries=2",
        "train.progress=false", "train.tensorboard=false", "train.report=false"]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("src") / "run"
    assert main(["train", "omniglot/protonet_5w1s", *BASE, "train.steps=5", "--run-dir", str(run)]) == 0
    return run


def test_encoder_copied_exactly(source_run, tmp_path, capsys):
    dst = tmp_path / "dst"
    assert main(["train", "omniglot/protonet_5w1s", *BASE, "train.steps=0", f"init_from={source_run}",
                 "--run-dir", str(dst)]) == 0
    assert "encoder initialized from" in capsys.readouterr().out
    a, _, _ = load_checkpoint(find_checkpoint(source_run))
    b, _, _ = load_checkpoint(find_checkpoint(dst))
    enc = [k for k in a if k.startswith("encoder.")]
    assert enc and all((a[k] == b[k]).all() for k in enc)


def test_mismatch_lists_keys_and_shapes(source_run, tmp_path, capsys):
    code = main(["train", "omniglot/protonet_5w1s", *BASE, "model.hidden=16", "train.steps=1",
                 f"init_from={source_run}", "--run-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "encoder.features.0.weight: source (8, 1, 3, 3) vs model (16, 1, 3, 3)" in err
    code = main(["train", "omniglot/protonet_5w1s", *BASE, "model.depth=3", "train.steps=1",
                 f"init_from={source_run}", "--run-dir", str(tmp_path / "y")])
    err = capsys.readouterr().err
    assert code == 2 and "missing in the source: ['encoder.features." in err


def test_maml_starts_from_an_encoder_with_running_statistics(source_run, tmp_path, capsys):
    # the source (ProtoNet, BatchNorm with running statistics) -> MAML (batch statistics only): the weights are
    # copied, the statistics are skipped and reported
    dst = tmp_path / "maml"
    assert main(["train", "omniglot/maml_5w1s", *BASE, "model.pool=max", "model.flatten=flatten",
                 "tasks.tasks_per_batch=2", "train.steps=0", f"init_from={source_run}", "--run-dir", str(dst)]) == 0
    assert "encoder initialized from" in capsys.readouterr().out
    a, _, _ = load_checkpoint(find_checkpoint(source_run))
    b, _, _ = load_checkpoint(find_checkpoint(dst))
    weights = [k for k in b if k.startswith("encoder.")]
    assert weights and all((a[k] == b[k]).all() for k in weights)
    assert any(k.endswith("running_mean") for k in a) and not any(k.endswith("running_mean") for k in b)


def test_train_fraction_keeps_a_seeded_subset_of_classes(tmp_path, capsys):
    from metassl.config import apply_overrides, resolve
    from metassl.engine.trainer import Trainer

    def classes(seed):
        cfg = resolve(apply_overrides({}, BASE + ["data.train_fraction=0.5", "train.steps=1", f"seed={seed}"]))
        return Trainer(cfg, tmp_path / f"r{seed}").train_split.class_names

    a, b, c = classes(0), classes(0), classes(1)
    assert a == b and len(a) == 3 and set(a) <= {"0", "1", "2", "3", "4", "5"}
    assert a != c or classes(2) != a  # another seed, another subset
