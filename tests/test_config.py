from pathlib import Path

import pytest

from weakseg.config import ConfigError, config_from_dict, config_to_dict, load_config, to_yaml

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_yaml_and_dotted_overrides(tmp_path):
    path = write(tmp_path, "name: a\ntrain:\n  batch_size: 4\nmethod:\n  name: full\n")
    cfg = load_config(path, ["train.batch_size=2", "data.crop_size=[64,48]", "optim.lr=0.5"])
    assert cfg.name == "a"
    assert cfg.train.batch_size == 2
    assert cfg.data.crop_size == [64, 48]
    assert cfg.optim.lr == 0.5
    assert cfg.method == {"name": "full", "weight": 1.0, "label": "mask"}
    assert cfg.run_dir == Path("runs/a")


def test_method_defaults_and_override():
    cfg = load_config(None, ["method.name=pce", "method.weight=0.5"])
    assert cfg.method == {"name": "pce", "weight": 0.5}
    # switching the method by name starts from that method's own defaults
    cfg = load_config(None, ["method.weight=0.5", "method.name=full"])
    assert cfg.method == {"name": "full", "weight": 1.0, "label": "mask"}


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["train.bogus=1"], "train.bogus"),
        (["nothing=1"], "nothing"),
        (["train.batch_size=many"], "train.batch_size"),
        (["method.sigma=3"], "method.sigma"),
        (["method.name=unknown"], "unknown method 'unknown'"),
        (["optim.name=lbfgs"], "optim.name"),
        (["data.crop_size=[1,2,3]"], "data.crop_size"),
        (["train.steps=0"], "train.steps"),
        (["batch_size"], "expected key=value"),
    ],
)
def test_bad_keys_and_values_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace(".", r"\.")):
        load_config(None, overrides)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = write(tmp_path, "data:\n  rooot: /x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "data.rooot" in str(info.value) and str(path) in str(info.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/exp.yaml")


def test_round_trip_through_checkpoint_dict():
    cfg = load_config(None, ["method.name=full", "train.steps=7"])
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg
    assert "steps: 7" in to_yaml(cfg)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    cfg = load_config(path)
    assert cfg.method["name"] == path.parent.name
