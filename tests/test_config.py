from pathlib import Path

import pytest
from omegaconf import OmegaConf

from weakseg.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    to_yaml,
)
from weakseg.methods import get_method_class, model_kind

ROOT = Path(__file__).resolve().parents[1]


FULL_DEFAULTS = {
    "name": "full",
    "weight": 1.0,
    "label": "mask",
    "loss": "ce",
    "ce_weight": 0.5,
    "dice_weight": 0.5,
    "class_weights": None,
}


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
    assert cfg.method == FULL_DEFAULTS
    assert cfg.run_dir == Path("runs/a")


def test_method_defaults_and_override():
    cfg = load_config(None, ["method.name=pce", "method.weight=0.5"])
    assert cfg.method == {"name": "pce", "weight": 0.5}
    # switching the method by name starts from that method's own defaults
    cfg = load_config(None, ["method.weight=0.5", "method.name=full"])
    assert cfg.method == FULL_DEFAULTS


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


EXPERIMENTS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "_base_")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_parse(path):
    cfg = load_config(path)
    assert cfg.method["name"] == path.parent.name


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_build_on_a_base(path):
    """Each experiment states only what differs from a family file in configs/_base_."""
    bases = OmegaConf.to_container(OmegaConf.load(path)).get("_base_")
    bases = [bases] if isinstance(bases, str) else bases
    assert bases, f"{path} has no _base_"
    for base in bases:
        assert (path.parent / base).resolve().parent == ROOT / "configs" / "_base_", base


# the short names of configs/README.md
BACKBONE_TOKENS = {
    "efficientnet_lite0": "effnetlite0",
    "resnet50": "r50",
    "resnet50.tv_in1k": "r50",
    "resnet101": "r101",
    "resnet101.tv_in1k": "r101",
    "swin_base_patch4_window12": "swinb",
    "vit_base_patch16": "vitb16",
}
HEAD_TOKENS = {
    "deeplabv3plus": "v3p",
    "deeplabv2": "v2",
    "deeplabv2_aspp_bn": "v2asppbn",
    "deeplabv2_cdsp": "v2cdsp",
    "upernet": "upernet",
}


def _steps_token(steps: int) -> str:
    if steps >= 10000:
        return f"{round(steps / 1000)}k"
    return f"{steps // 1000}k" if steps % 1000 == 0 else str(steps)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_config_names_say_what_they_are(path):
    """configs/<method>/<dataset>_<backbone>-<head>_<H>x<W>_<steps>.yaml, read from the resolved config."""
    cfg = load_config(path)
    dataset, model, crop, steps = path.stem.split("_")
    if cfg.data.format == "folder":
        assert dataset in cfg.data.root.replace("-", ""), (dataset, cfg.data.root)
    else:
        assert dataset == cfg.data.format
    classifier = model_kind(get_method_class(cfg.method["name"])) == "classifier"  # no use of model.head
    head = "cls" if classifier else HEAD_TOKENS[cfg.model.head]
    assert model == f"{BACKBONE_TOKENS[cfg.model.backbone]}-{head}"
    assert crop == "{}x{}".format(*cfg.data.crop_size)
    assert steps == _steps_token(cfg.train.steps)


def test_base_files_are_merged_under_the_experiment(tmp_path):
    (tmp_path / "_base_").mkdir()
    (tmp_path / "_base_" / "data.yaml").write_text(
        "data:\n  crop_size: [64, 64]\n  hflip: 0.0\ntrain:\n  steps: 7\n"
    )
    (tmp_path / "_base_" / "method.yaml").write_text(
        "method:\n  name: rloss\n  sigma_rgb: 20.0\ntrain:\n  steps: 9\n"
    )
    exp = tmp_path / "exp.yaml"
    exp.write_text("_base_: [_base_/data.yaml, _base_/method.yaml]\nname: exp\ndata:\n  hflip: 0.5\n")
    cfg = load_config(exp, ["train.batch_size=3"])
    assert cfg.data.crop_size == [64, 64] and cfg.data.hflip == 0.5  # the file overrides its bases
    assert cfg.train.steps == 9  # later bases override earlier ones
    assert cfg.method["name"] == "rloss" and cfg.method["sigma_rgb"] == 20.0  # method sections inherit too
    assert cfg.train.batch_size == 3 and cfg.name == "exp"
    exp.write_text("_base_: _base_/method.yaml\nmethod:\n  name: pce\n")  # another method: its own defaults
    assert load_config(exp).method == {"name": "pce", "weight": 1.0}


def test_base_errors_name_the_file(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("_base_: b.yaml\n")
    b.write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)
    a.write_text("_base_: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing.yaml \(a base of"):
        load_config(a)
    a.write_text("_base_: {x: 1}\n")
    with pytest.raises(ConfigError, match="_base_"):
        load_config(a)


def test_shipped_configs_with_bases_resolve_as_before_they_had_them():
    """The ACDC configs state only what differs from their base; what they resolve to is the full protocol."""
    cfg = load_config(ROOT / "configs" / "rloss" / "acdc_effnetlite0-v3p_256x256_2k.yaml")
    assert cfg.name == "acdc_rloss_effnetlite0" and cfg.method["sigma_rgb"] == 26.0
    assert cfg.data.root == "../shared/data/acdc-scribble" and cfg.eval.volume_dice is True
    assert cfg.model.head_channels == 64 and cfg.optim.name == "adamw" and cfg.train.steps == 2000


def test_overrides_apply_to_a_restored_config(tmp_path):
    cfg = load_config(write(tmp_path, "name: a\nmethod:\n  name: full\n"))
    assert apply_overrides(cfg, []) is cfg
    changed = apply_overrides(cfg, ["train.batch_size=3", "method.dice_weight=0.25"])
    assert changed.train.batch_size == 3 and changed.method["dice_weight"] == 0.25
    assert cfg.train.batch_size != 3  # the original is left as it was
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(cfg, ["train.batch_size"])
