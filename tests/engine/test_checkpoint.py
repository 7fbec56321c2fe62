"""Checkpoints never run code when loaded; old ones still load or convert; NaN weights are refused."""

from __future__ import annotations

import os
import random
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from weakseg.config import config_to_dict, load_config
from weakseg.engine.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    NonFiniteWeightsError,
    check_classes,
    convert_checkpoint,
    load_checkpoint,
    load_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from weakseg.io import atomic_torch_save


class ShellPayload:
    """Pickles as ``os.system("touch <marker>")``: what a crafted checkpoint runs on a naive load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def minimal_payload() -> dict:
    return {"model": {"w": torch.ones(2)}, "config": {"name": "x"}, "classes": ["background", "a"]}


@pytest.mark.parametrize("where", ["top_level", "inside_a_real_checkpoint"])
def test_crafted_checkpoint_is_refused_before_any_of_it_runs(tmp_path, where):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    payload = ShellPayload(marker)
    if where == "inside_a_real_checkpoint":
        payload = {**minimal_payload(), "format_version": 1, "extra": payload}
    torch.save(payload, path)

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert "\n" not in message and "system" in message and "nothing from it was executed" in message
    assert "weakseg convert-checkpoint" in message

    # the file really is live: the unsafe loader runs it (this is what weakseg no longer does)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_new_checkpoints_hold_only_plain_values_and_restore_every_rng(tmp_path):
    random.seed(1)
    np.random.seed(2)
    np.random.randn()  # leaves a cached Gaussian in numpy's legacy state
    torch.manual_seed(3)
    save_checkpoint(tmp_path / "c.ckpt", **minimal_payload())
    expected = (random.random(), np.random.randn(), torch.rand(2))

    # loads with PyTorch's own restricted unpickler and no allow-list at all
    raw = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION == 2
    set_rng_state(load_checkpoint(tmp_path / "c.ckpt")["rng"])
    again = (random.random(), np.random.randn(), torch.rand(2))
    assert expected[0] == again[0] and expected[1] == again[1] and torch.equal(expected[2], again[2])


def test_format_1_checkpoints_with_numpy_rng_state_still_load_and_resume(tmp_path):
    np.random.seed(7)
    legacy = {
        **minimal_payload(),
        "format_version": 1,
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
    }
    torch.save(legacy, tmp_path / "old.ckpt")
    expected = np.random.rand(3)
    ckpt = load_checkpoint(tmp_path / "old.ckpt")
    set_rng_state(ckpt["rng"])
    assert np.array_equal(np.random.rand(3), expected)


def test_untrusted_types_are_named_and_a_trusted_old_file_converts(tmp_path):
    old = {**minimal_payload(), "best_score": np.float64(0.5), "step": np.int64(7), "rng": rng_state()}
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(
        CheckpointError, match=r"numpy\S*scalar.*convert-checkpoint .*old\.ckpt .*old\.v2\.ckpt"
    ):
        load_checkpoint(tmp_path / "old.ckpt")

    convert_checkpoint(tmp_path / "old.ckpt", tmp_path / "old.v2.ckpt")
    new = torch.load(tmp_path / "old.v2.ckpt", weights_only=True)
    assert new["best_score"] == 0.5 and new["step"] == 7 and isinstance(new["step"], int)
    assert torch.equal(new["model"]["w"], torch.ones(2))


def test_a_diverged_state_is_never_written(tmp_path):
    with pytest.raises(NonFiniteWeightsError, match=r"last\.ckpt.*'w'.*NaN or inf"):
        save_checkpoint(tmp_path / "last.ckpt", model={"w": torch.tensor([1.0, float("nan")])}, config={})
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_with_nan_weights_is_refused_for_evaluation(tmp_path):
    from weakseg.builders import build_model
    from weakseg.engine.trainer import load_trained_model

    cfg = load_config(None, ["model.pretrained=null", "model.head=deeplabv2"])
    state = build_model(cfg, 3, pretrained=False).state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    atomic_torch_save(
        tmp_path / "nan.ckpt",
        {"model": state, "config": config_to_dict(cfg), "classes": ["bg", "a", "b"], "format_version": 2},
    )
    with pytest.raises(NonFiniteWeightsError, match=f"NaN/inf weights.*{name}"):
        load_trained_model(tmp_path / "nan.ckpt")


def test_weights_of_another_model_are_a_one_line_error():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    with pytest.raises(
        CheckpointError, match=r"1 shape mismatches \(e\.g\. 0\.weight \[4, 2\] vs \[3, 2\]\)"
    ):
        load_state(model, {"0.weight": torch.zeros(4, 2), "0.bias": torch.zeros(3)}, "x.ckpt", "model")
    with pytest.raises(CheckpointError, match="1 missing keys.*1 unexpected keys"):
        load_state(model, {"0.weight": torch.zeros(3, 2), "extra": torch.zeros(1)}, "x.ckpt", "model")


def test_class_count_mismatch_names_both_sides():
    class Data:
        classes, root, split = ["background", "cat", "dog"], "data/pets", "val"

    with pytest.raises(CheckpointError, match=r"x\.ckpt was trained on 2 classes .* data/pets .* has 3"):
        check_classes(["background", "cat"], Data(), "x.ckpt")
    with pytest.warns(UserWarning, match="matching them by index"):
        check_classes(["bg", "cat", "dog"], Data(), "x.ckpt")
