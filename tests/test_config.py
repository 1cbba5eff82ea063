import pytest

from metassl.config import ConfigError, apply_overrides, load_config, load_raw, resolve


def test_preset_loads_with_base_and_overrides():
    cfg = load_config("omniglot/protonet_5w1s", ["train.steps=7", "optim.lr=1e-4", "eval.shots=[1,5]"])
    assert cfg.tasks.ways == 60 and cfg.tasks.shots == 1  # from base and child
    assert cfg.eval.paper == {"5w1s": 98.8}
    assert cfg.train.steps == 7 and cfg.optim.lr == pytest.approx(1e-4) and cfg.eval.shots == [1, 5]
    assert cfg.learner.name == "protonet" and cfg.model.backbone == "conv4"


def test_every_preset_resolves():
    from metassl.config import list_presets

    for p in list_presets():
        load_config(p)


@pytest.mark.parametrize("override,match", [
    ("train.stpes=5", r"unknown config key 'train.stpes'; did you mean 'steps'"),
    ("learner.distanse=cosine", r"did you mean 'distance'"),
    ("model.hiden=32", r"did you mean 'hidden'"),
    ("trian.steps=5", r"unknown config key 'trian'; did you mean 'train'"),
])
def test_unknown_keys_suggest_close_ones(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("omniglot/protonet_5w1s", [override])


@pytest.mark.parametrize("override,match", [
    ("optim.lr=-1", r"optim.lr must be in \[0.0, 10.0\], got -1.0"),
    ("tasks.ways=1", r"tasks.ways must be in \[2, 100000\], got 1"),
    ("optim.name=lamb", r"optim.name must be one of adam, adamw, sgd, lars; got .lamb."),
    ("learner.distance=manhattan", r"learner.distance must be one of euclidean, l2, cosine"),
    ("train.steps=many", r"train.steps must be an integer, got 'many'"),
    ("train.progress=maybe", r"train.progress must be true or false"),
    ("model.backbone=vgg", r"unknown backbone 'vgg'"),
    ("learner.name=protonett", r"unknown learner .protonett.*Did you mean protonet"),
])
def test_bad_values_name_key_and_range(override, match):
    with pytest.raises((ConfigError, KeyError), match=match):
        load_config("omniglot/protonet_5w1s", [override])


def test_backbone_specific_keys_follow_the_backbone():
    cfg = resolve({"model": {"backbone": "resnet12", "widths": [8, 8, 8, 8]}})
    assert cfg.model.widths == [8, 8, 8, 8]
    with pytest.raises(ConfigError, match="unknown config key 'model.hidden'"):
        resolve({"model": {"backbone": "resnet12", "hidden": 8}})


def test_missing_preset_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="neither a YAML file nor a preset.*Did you mean omniglot/protonet_5w1s"):
        load_raw("omniglot/protonet_5w1")
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        apply_overrides({}, ["train.steps"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_raw(str(bad))
