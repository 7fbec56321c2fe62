"""Training never clobbers a run, never writes a diverged state, and checks its data first."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch

from train_helpers import tiny_train_config
from weakseg.config import ConfigError, config_to_dict, load_config
from weakseg.data.folder import write_dataset_json
from weakseg.data.synthetic import make_synthetic_dataset
from weakseg.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from weakseg.engine.guards import TrainingDivergedError, reraise_worker_errors, worker_message
from weakseg.engine.run_folder import RunFolderError, RunLock
from weakseg.engine.trainer import MetricsLog, train
from weakseg.io import TEMP_MARKER, DataError, UserError, WeaksegWarning
from weakseg.methods.pce import PartialCE


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    make_synthetic_dataset(root, num_train=8, num_val=3, size=(32, 32), seed=1)
    return root


def config(data: Path, out: Path, *extra: str):
    return tiny_train_config(data, out, *extra, crop=32, overlays=1)


def fake_finished_run(run: Path) -> dict[Path, bytes]:
    """The outputs of an earlier run (and a file of the user's), as path -> content."""
    files = {
        run / "config.yaml": b"name: old\n",
        run / "metrics.json": b"{}",
        run / "metrics.jsonl": b'{"step": 1, "loss": 1.0}\n',
        run / "last.ckpt": b"old weights",
        run / "step_0000099.ckpt": b"old snapshot",
        run / "overlays" / "old_sample.jpg": b"old overlay",
        run / "eval_val" / "metrics.json": b"{}",
        run / "notes.txt": b"the user's own file",
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return files


# ------------------------------------------------------------------------------ run folders
def test_second_train_into_a_finished_run_is_refused_untouched(data, tmp_path):
    run = tmp_path / "run"
    before = fake_finished_run(run)
    with pytest.raises(RunFolderError, match="already holds a finished run.*--resume.*--overwrite.*--out"):
        train(config(data, run), device="cpu", progress=False)
    assert {p: p.read_bytes() for p in before} == before
    assert not (run / ".weakseg.lock").exists()  # refused before anything was written


@pytest.mark.slow  # one real training with its final validation and plots (~6 s on 2 busy cores)
def test_overwrite_clears_the_old_outputs_first(data, tmp_path):
    run = tmp_path / "run"
    before = fake_finished_run(run)
    stale_temp = run / f".last.ckpt.{2**22 + 7}.abcd{TEMP_MARKER}.ckpt"  # a write killed earlier
    stale_temp.write_bytes(b"partial")
    train(
        config(data, run, "train.steps=1", "train.num_overlays=0"),
        overwrite=True,
        device="cpu",
        progress=False,
    )
    for gone in ("step_0000099.ckpt", "overlays/old_sample.jpg", "eval_val"):
        assert not (run / gone).exists(), gone
    assert not stale_temp.exists()
    assert (run / "notes.txt").read_bytes() == before[run / "notes.txt"]
    assert load_checkpoint(run / "last.ckpt")["step"] == 1
    assert json.loads((run / "metrics.json").read_text())["step"] == 1


def test_a_run_folder_in_use_is_refused_even_with_overwrite(data, tmp_path):
    run = tmp_path / "run"
    lock = RunLock(run).acquire()  # another training holds the folder
    try:
        with pytest.raises(
            RunFolderError, match=f"in use by a training that is still running \\(process {os.getpid()}\\)"
        ):
            train(config(data, run), overwrite=True, device="cpu", progress=False)
    finally:
        lock.release()


# ------------------------------------------------------------------------------ non-finite values
@pytest.fixture
def poisoned_pce(monkeypatch):
    """PartialCE whose loss (or only its gradients) turns NaN at one chosen 0-based step."""
    original = PartialCE.forward
    plan: dict[str, object] = {"step": None, "kind": "loss"}

    def forward(self, outputs, batch):
        losses = original(self, outputs, batch)
        if self.step == plan["step"]:
            if plan["kind"] == "loss":
                losses["pce"] = losses["pce"] * float("nan")
            else:  # finite value, NaN gradient: d sqrt(u)/du is inf at u = 0, times 0
                losses["pce"] = losses["pce"] + torch.sqrt(0.0 * outputs["logits"].sum())
        return losses

    monkeypatch.setattr(PartialCE, "forward", forward)
    return plan


def test_nan_loss_at_a_non_log_step_stops_before_anything_is_written(data, tmp_path, poisoned_pce):
    poisoned_pce["step"] = 2  # the third update: no log, validation or checkpoint at that step
    run = tmp_path / "run"
    cfg = config(data, run, "train.steps=6", "train.log_every=5", "train.val_every=100", "train.ckpt_every=2")
    with pytest.raises(TrainingDivergedError) as info:
        train(cfg, device="cpu", progress=False)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, UserError)  # the CLI: one line, exit 2
    assert "loss term(s) 'pce' and gradients became NaN/inf at step 3 (found at step 4" in message
    assert "the last checkpoint written is from step 2" in message and "optim.lr" in message
    last = load_checkpoint(run / "last.ckpt")
    assert last["step"] == 2 and all(
        torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point()
    )
    assert not (run / "best.ckpt").exists() and not (run / "metrics.json").exists()
    assert not (run / "metrics.jsonl").exists()  # no log row of the diverged state


def test_nan_gradients_with_a_finite_loss_are_caught(data, tmp_path, poisoned_pce):
    poisoned_pce.update(step=0, kind="grad")
    with pytest.raises(
        TrainingDivergedError,
        match=r"^training diverged: gradients became NaN/inf at step 1 .*no checkpoint was written",
    ):
        train(config(data, tmp_path / "run", "train.steps=2"), device="cpu", progress=False)
    assert not (tmp_path / "run" / "last.ckpt").exists()


# ------------------------------------------------------------------------------ resume
def test_torn_last_log_line_is_dropped_with_a_warning_on_resume(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    with pytest.warns(WeaksegWarning, match=r"metrics\.jsonl: dropped line 3"):
        MetricsLog(log, resume_step=2, tensorboard=False).close()
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]


def save_fake_checkpoint(path: Path, cfg, classes: list[str]) -> Path:
    return save_checkpoint(path, model={}, config=config_to_dict(cfg), classes=classes, step=2)


def test_resume_from_another_methods_checkpoint_is_refused(data, tmp_path):
    other = load_config(None, ["method.name=cam", "model.pretrained=null"])
    ckpt = save_fake_checkpoint(tmp_path / "cam.ckpt", other, ["background", "a", "b", "c"])
    with pytest.raises(CheckpointError, match="trained with method 'cam' but the config trains 'pce'"):
        train(config(data, tmp_path / "run"), resume=ckpt, device="cpu", progress=False)


def test_resume_with_another_class_count_is_refused(data, tmp_path):
    ckpt = save_fake_checkpoint(tmp_path / "x.ckpt", config(data, tmp_path / "x"), ["background", "a"])
    with pytest.raises(CheckpointError, match=r"trained on 2 classes .* has 4"):
        train(config(data, tmp_path / "run"), resume=ckpt, device="cpu", progress=False)


# ------------------------------------------------------------------------------ pre-flight
def test_batch_larger_than_the_split_stops_before_training(data, tmp_path):
    with pytest.raises(DataError, match=r"train\.batch_size=20 needs at least 20 .* split 'train' .* has 8"):
        train(config(data, tmp_path / "run", "train.batch_size=20"), device="cpu", progress=False)
    assert not (tmp_path / "run").exists()


def test_unreadable_sample_stops_in_the_preflight(tmp_path):
    root = tmp_path / "d"
    make_synthetic_dataset(root, num_train=6, num_val=2, size=(16, 16), seed=0)
    (root / "images" / "train_0005.png").write_bytes(b"not a png")
    with pytest.raises(
        DataError, match=r"pre-flight check of split 'train'.*train_0005\.png.*weakseg data verify"
    ):
        train(config(root, tmp_path / "run"), device="cpu", progress=False)
    assert not (tmp_path / "run").exists()


def test_method_without_its_labels_names_the_command_that_makes_them(tmp_path):
    root = tmp_path / "masks_only"
    make_synthetic_dataset(root, num_train=4, num_val=2, size=(16, 16), seed=0)
    spec = json.loads((root / "dataset.json").read_text())
    write_dataset_json(root, spec["classes"], layout={"images": "images/{id}.png", "masks": "masks/{id}.png"})
    with pytest.raises(ConfigError, match=r"needs 'scribble' labels .* `weakseg data simulate .*masks_only"):
        train(config(root, tmp_path / "run"), device="cpu", progress=False)


def test_worker_errors_arrive_as_their_one_line_message():
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise DataError(f"image file not found: /data/img_{i}.png")

    loader = torch.utils.data.DataLoader(Broken(), num_workers=1)
    with pytest.raises(DataError) as info:
        list(reraise_worker_errors(loader))
    assert str(info.value) == "image file not found: /data/img_0.png (in a DataLoader worker)"
    plain = DataError("just one line")
    assert worker_message(plain) == "just one line"


def test_a_bad_sample_found_by_a_worker_during_training_is_one_line(tmp_path):
    root = tmp_path / "d"
    make_synthetic_dataset(root, num_train=20, num_val=2, size=(32, 32), seed=0)
    (root / "images" / "train_0001.png").unlink()  # not among the pre-flight's spread sample
    cfg = config(root, tmp_path / "run", "data.num_workers=1", "train.steps=10")
    with pytest.raises(DataError) as info:
        train(cfg, device="cpu", progress=False)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("image file not found: ") and "train_0001.png" in str(info.value)
    assert str(info.value).endswith("(in a DataLoader worker)")


def test_unsafe_ids_cannot_write_outside_the_prediction_folder(tmp_path):
    from weakseg.engine.evaluation import _save_prediction

    sample = {"id": "../../escaped", "image": torch.zeros(3, 4, 4)}
    with pytest.raises(DataError, match="outside"):
        _save_prediction(tmp_path / "out" / "pred", sample, torch.zeros(4, 4), palette=None, ignore=255)
    assert not (tmp_path / "escaped.png").exists() and not (tmp_path / "out").exists()


def test_training_overlays_cannot_be_written_outside_the_run(tmp_path):
    from weakseg.engine.trainer import write_overlays

    class FirstChannel(torch.nn.Module):
        def forward(self, x):
            return {"logits": x[:, :2]}

    class Data:
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"id": "../../escaped", "image": torch.zeros(3, 8, 8), "mask": torch.zeros(8, 8).long()}

    cfg = load_config(None, ["train.num_overlays=1"])
    with pytest.raises(DataError, match="outside"):
        write_overlays(FirstChannel(), Data(), tmp_path / "run" / "overlays", cfg, torch.device("cpu"))
    assert not (tmp_path / "escaped.jpg").exists()


def test_duplicate_ids_do_not_stop_training_but_are_warned_about(data, tmp_path):
    from weakseg.data.folder import write_split

    write_split(data, "dup_train", ["train_0000", "train_0001", "train_0000", "train_0002"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match="batch_size=8"):  # stop right after the split was read
            train(
                config(data, tmp_path / "run", "data.train_split=dup_train", "train.batch_size=8"),
                device="cpu",
            )
    assert any("dup_train.txt lists 1 sample id(s) more than once" in str(w.message) for w in caught)
