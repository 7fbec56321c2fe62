"""The training loop end to end on a tiny synthetic set: outputs, exact resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from train_helpers import tiny_train_config
from weakseg.config import ConfigError
from weakseg.data.synthetic import make_synthetic_dataset
from weakseg.engine.checkpoint import load_checkpoint
from weakseg.engine.trainer import check_log_names, load_trained_model, train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    make_synthetic_dataset(root, num_train=8, num_val=3, size=(48, 48), seed=1)
    return root


def tiny_config(data: Path, out: Path, *extra: str):
    return tiny_train_config(data, out, *extra)


def loss_rows(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_training_writes_the_run_folder(tiny_data, tmp_path):
    result = train(tiny_config(tiny_data, tmp_path / "run"), device="cpu", progress=False)
    run = result.run_dir
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "metrics.json",
        "last.ckpt",
        "best.ckpt",
        "per_class_IoU.png",
        "training_curves.png",
    ):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "overlays").iterdir()) == ["val_0000.jpg", "val_0001.jpg"]
    assert result.step == 4
    assert set(loss_rows(run)) == {1, 2, 3, 4}
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["mIoU"] <= 1.0 and metrics["step"] == 4
    ckpt = load_checkpoint(run / "last.ckpt")
    assert ckpt["step"] == 4 and ckpt["classes"][0] == "background"
    # the saved config rebuilds the same model
    model, cfg, meta = load_trained_model(run / "last.ckpt")
    assert cfg.train.steps == 4 and meta["image_mode"] == "RGB"
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k])


def test_resume_reproduces_the_next_steps_exactly(tiny_data, tmp_path):
    straight = train(
        tiny_config(tiny_data, tmp_path / "a", "train.keep_every=2"), device="cpu", progress=False
    )
    snapshot = straight.run_dir / "step_0000002.ckpt"
    assert load_checkpoint(snapshot)["step"] == 2

    resumed = train(tiny_config(tiny_data, tmp_path / "b"), resume=snapshot, device="cpu", progress=False)
    assert resumed.step == 4
    a = load_checkpoint(straight.run_dir / "last.ckpt")
    b = load_checkpoint(resumed.run_dir / "last.ckpt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    la, lb = loss_rows(straight.run_dir), loss_rows(resumed.run_dir)
    assert la[3] == lb[3] and la[4] == lb[4]


def test_resume_in_place_keeps_the_log_consistent(tiny_data, tmp_path):
    run = tmp_path / "c"
    train(tiny_config(tiny_data, run, "train.keep_every=2"), device="cpu", progress=False)
    # resuming from step 2 in the same folder drops the log rows of steps 3-4 and writes them again
    train(tiny_config(tiny_data, run), resume=run / "step_0000002.ckpt", device="cpu", progress=False)
    steps = [
        json.loads(line)["step"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert steps == [1, 2, 3, 4]


def test_method_needing_missing_labels_is_a_clear_error(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "d", "method.name=full", "method.label=pseudo")
    with pytest.raises(ConfigError, match="needs 'pseudo' labels.*data.pseudo_dir"):
        train(cfg, device="cpu", progress=False)


def test_method_progress_hook_sees_every_step(tiny_data, tmp_path, monkeypatch):
    from weakseg.methods.pce import PartialCE

    seen = []
    original = PartialCE.set_progress

    def spy(self, step, total):
        seen.append((step, total))
        original(self, step, total)

    monkeypatch.setattr(PartialCE, "set_progress", spy)
    train(tiny_config(tiny_data, tmp_path / "e"), device="cpu", progress=False)
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]


def test_bf16_autocast_and_gradient_clipping_train(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "f", "train.amp=bf16", "optim.grad_clip=1.0", "train.steps=2")
    result = train(cfg, device="cpu", progress=False)
    losses = loss_rows(result.run_dir)
    assert set(losses) == {1, 2} and all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def test_fast_depthwise_backward_trains_the_same_weights(tiny_data, tmp_path, monkeypatch):
    """``train.fast_depthwise`` (on by default on CPU) routes the depthwise layers of the step through
    weakseg.engine.depthwise, and the update equals the one from ATen's backward to rounding. One step:
    the tiny run is unstable enough (loss 1.3 -> 8.9 at step 2) to amplify rounding after that."""
    from weakseg.engine import depthwise

    routed = []
    real_apply = depthwise._DepthwiseConv2d.apply
    monkeypatch.setattr(depthwise._DepthwiseConv2d, "apply", lambda *a: routed.append(1) or real_apply(*a))
    runs = {}
    for fast in (True, False):
        run = tmp_path / f"fast_{fast}"
        cfg = tiny_config(tiny_data, run, f"train.fast_depthwise={fast}", "train.steps=1")
        assert cfg.train.fast_depthwise is fast
        before = len(routed)
        runs[fast] = train(cfg, device="cpu", progress=False).run_dir
        # of EfficientNet-lite0's 16 depthwise layers, the 9 stride-1 ones with 5x5 or dilated filters
        # are routed (channels-last on CPU keeps the strided 5x5 one with ATen), when the switch is on
        assert len(routed) - before == (9 if fast else 0)
    fast, plain = (load_checkpoint(runs[f] / "last.ckpt")["model"] for f in (True, False))
    for key, value in plain.items():
        torch.testing.assert_close(fast[key], value, rtol=1e-5, atol=2e-6, msg=key)
    assert loss_rows(runs[True]) == loss_rows(runs[False])  # the forward is the same computation


def test_channels_last_defaults_to_on_for_cpu_training(tiny_data, tmp_path):
    from weakseg.engine.trainer import use_channels_last

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    auto = tiny_config(tiny_data, tmp_path / "auto", "train.steps=1")
    assert auto.model.channels_last is None
    assert use_channels_last(auto, cpu) and not use_channels_last(auto, gpu)
    off = tiny_config(tiny_data, tmp_path / "off", "model.channels_last=false")
    on = tiny_config(tiny_data, tmp_path / "on", "model.channels_last=true")
    assert not use_channels_last(off, cpu) and use_channels_last(on, gpu)
    # the run trains (and saves) NHWC convolution weights
    weights = load_checkpoint(train(auto, device="cpu", progress=False).run_dir / "last.ckpt")["model"]
    stem = weights["backbone.model.conv_stem.weight"]
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()


def test_training_set_caches_decoded_samples_per_loading_process(tiny_data, tmp_path, monkeypatch):
    from weakseg.data.base import SegDataset

    budgets = []
    real = SegDataset.cache_decoded
    monkeypatch.setattr(SegDataset, "cache_decoded", lambda self, mb: budgets.append(mb) or real(self, mb))
    for workers in (0, 2):  # each loading process holds an equal share of data.cache_mb
        run = tmp_path / f"cache_{workers}"
        cfg = tiny_config(tiny_data, run, "train.steps=1", "data.cache_mb=300", f"data.num_workers={workers}")
        train(cfg, device="cpu", progress=False)
    assert budgets == [300.0, 150.0]
    with pytest.raises(ConfigError, match="data.cache_mb"):
        tiny_config(tiny_data, tmp_path / "bad", "data.cache_mb=-1")


def test_cpu_training_keeps_freed_memory_for_reuse(tiny_data, tmp_path, monkeypatch):
    import platform

    from weakseg.engine import trainer

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert trainer.keep_freed_memory() is True  # mallopt accepted both settings
    calls = []
    monkeypatch.setattr(trainer, "keep_freed_memory", lambda: calls.append(1) or True)
    for keep in (True, False):
        cfg = tiny_config(
            tiny_data, tmp_path / f"keep_{keep}", "train.steps=1", f"train.keep_freed_memory={keep}"
        )
        train(cfg, device="cpu", progress=False)
    assert calls == [1]


def test_a_loss_term_may_not_take_a_column_the_trainer_writes() -> None:
    check_log_names("aal", {"cls", "seg", "aa", "reassign"})  # AAL's terms: no clash
    with pytest.raises(ValueError, match=r"method 'aal'.*\['lr'\]"):
        check_log_names("aal", {"cls", "seg", "lr"})  # the label-reassign term once hid the learning rate
    with pytest.raises(ValueError, match=r"\['images_per_s', 'loss'\]"):
        check_log_names("custom", {"loss", "images_per_s", "ok"})
