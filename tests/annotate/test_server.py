"""The annotation tool's API and files on disk, through Flask's test client and a live loopback server."""

from __future__ import annotations

import csv
import json
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from annotate.helpers import CLASSES, fake_checkpoint, live_server, photo_dataset
from weakseg.annotate import create_app, decode_runs, encode_runs
from weakseg.cli import main
from weakseg.data import FolderDataset
from weakseg.data.synthetic import make_synthetic_dataset
from weakseg.io import read_label


def rows(path: Path) -> dict[str, list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        table = list(csv.reader(fh))
    return {r[0]: r[1:] for r in table[1:]}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return photo_dataset(tmp_path)


@pytest.fixture
def client(dataset: Path):
    app = create_app(dataset)
    yield app.test_client()
    app.extensions["weakseg_annotate"].close()


def save(client, sample_id: str, label: np.ndarray, tags=(), **extra):
    body = {
        "height": label.shape[0],
        "width": label.shape[1],
        "scribble": encode_runs(label),
        "tags": list(tags),
    }
    return client.put(f"/api/images/{sample_id}/annotation", json={**body, **extra})


def test_runs_round_trip() -> None:
    label = np.full((5, 7), 255, np.uint8)
    label[1, 2:5] = 1
    label[4, 6] = 0
    runs = encode_runs(label)
    assert runs[:2] == [255, 9] and sum(runs[1::2]) == 35
    np.testing.assert_array_equal(decode_runs(runs, (5, 7), "t"), label)


def test_dataset_listing_and_progress(client) -> None:
    data = client.get("/api/dataset").get_json()
    assert data["classes"] == CLASSES and data["background"] == 0 and not data["has_model"]
    assert [im["id"] for im in data["images"]] == ["a", "b", "trip/c"]
    assert not any(im["done"] for im in data["images"])
    assert data["colours"][:3] == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]  # the VOC colours of the PNGs
    image = client.get("/api/images/trip/c/image")
    assert image.status_code == 200 and image.mimetype == "image/png"


def test_a_save_writes_the_png_and_the_tags_row_and_reads_back_the_same(client, dataset: Path) -> None:
    scribble = np.full((48, 64), 255, np.uint8)
    scribble[10:13, 5:40] = 1
    scribble[30, 30] = 0
    response = save(client, "a", scribble, tags=[2])
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["tags"] == [0, 1, 2] and response.get_json()["done"]
    np.testing.assert_array_equal(read_label(dataset / "scribbles" / "a.png"), scribble)
    table = rows(dataset / "tags.csv")
    assert table == {"a": ["background;cat;dog"], "b": ["background"], "trip/c": ["background"]}

    back = client.get("/api/images/a/annotation").get_json()
    np.testing.assert_array_equal(decode_runs(back["scribble"], (48, 64), "t"), scribble)
    assert back["tags"] == [0, 1, 2] and back["revision"] > 0
    listing = client.get("/api/dataset").get_json()["images"]
    assert [im["done"] for im in listing] == [True, False, False]

    # unticking dog keeps cat: a scribbled class stays tagged
    save(client, "a", scribble, tags=[])
    assert rows(dataset / "tags.csv")["a"] == ["background;cat"]
    sample = FolderDataset(dataset, "train")[0]
    assert sample["id"] == "a" and sample["tags"].tolist() == [1.0, 1.0, 0.0]
    assert FolderDataset(dataset, "train").verify(progress=False) == []


def test_bad_saves_are_refused_and_change_nothing(client, dataset: Path) -> None:
    before = (dataset / "scribbles" / "a.png").read_bytes()
    good = np.full((48, 64), 255, np.uint8)
    r = save(client, "a", np.full((10, 10), 1, np.uint8))
    assert r.status_code == 400 and "canvas is 10x10, the image 64x48" in r.get_json()["error"]
    r = save(client, "a", np.full((48, 64), 7, np.uint8))
    assert r.status_code == 400 and "values [7] outside 0..2" in r.get_json()["error"]
    r = save(client, "a", good, tags=[5])
    assert r.status_code == 400 and "not a class index" in r.get_json()["error"]
    r = save(client, "a", good, scribble=[255, 3])
    assert r.status_code == 400 and "cover 3 pixels" in r.get_json()["error"]
    r = client.put(
        "/api/images/a/annotation", data="height=48", content_type="application/x-www-form-urlencoded"
    )
    assert r.status_code == 400 and "expected a JSON body" in r.get_json()["error"]
    assert (dataset / "scribbles" / "a.png").read_bytes() == before


def test_ids_that_would_escape_or_are_not_listed_are_refused(client, dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes((dataset / "images" / "a.png").read_bytes())
    for url in (
        "/api/images/../secret/image",
        "/api/images/%2E%2E/%2E%2E/secret/image",
        "/api/images/trip/../../../secret/image",
        "/api/images//etc/passwd/image",
        "/api/images/nothere/image",
        "/api/images/trip%5C..%5C..%5Csecret/annotation",
    ):
        response = client.get(url, follow_redirects=True)
        assert response.status_code in (400, 404), url
    r = save(client, "../escape", np.full((48, 64), 255, np.uint8))
    assert r.status_code in (400, 404)
    assert not (dataset.parent / "escape.png").exists() and not list(tmp_path.rglob("escape*"))


def test_requests_for_another_host_name_are_refused(client) -> None:
    assert client.get("/api/dataset", headers={"Host": "127.0.0.1:8765"}).status_code == 200
    refused = client.get("/api/dataset", headers={"Host": "attacker.example:8765"})
    assert refused.status_code == 403 and "refused" in refused.get_json()["error"]


def test_concurrent_saves_never_mix_files_or_lose_rows(dataset: Path) -> None:
    app = create_app(dataset)
    maps = {}
    for k, sid in enumerate(["a", "a", "b", "trip/c"]):
        h, w = {"a": (48, 64), "b": (40, 56), "trip/c": (36, 50)}[sid]
        m = np.full((h, w), 255, np.uint8)
        m[k * 3 : k * 3 + 2, :] = 1 + k % 2
        maps[k] = (sid, m)
    errors = []

    def writer(k: int) -> None:
        client = app.test_client()
        sid, m = maps[k]
        for _ in range(5):
            r = save(client, sid, m)
            if r.status_code != 200:
                errors.append(r.get_json())

    threads = [threading.Thread(target=writer, args=(k,)) for k in maps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    on_disk = read_label(dataset / "scribbles" / "a.png")
    assert any(np.array_equal(on_disk, maps[k][1]) for k in (0, 1))  # one tab's map, whole
    table = rows(dataset / "tags.csv")
    assert table["b"] == ["background;cat"] and table["trip/c"] == ["background;dog"]
    assert table["a"][0] in ("background;cat", "background;dog", "background;cat;dog")


def test_existing_onehot_tags_keep_their_form_and_other_rows(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "syn", num_train=3, num_val=2, size=(32, 32), seed=0)
    header = (root / "tags.csv").read_text().splitlines()[0]
    app = create_app(root)
    client = app.test_client()
    listing = client.get("/api/dataset").get_json()["images"]
    assert [im["id"] for im in listing] == ["train_0000", "train_0001", "train_0002", "val_0000", "val_0001"]
    assert all(im["done"] for im in listing)  # simulated scribbles
    before = rows(root / "tags.csv")
    scribble = np.full((32, 32), 255, np.uint8)
    scribble[0, :] = 3
    assert save(client, "val_0001", scribble).status_code == 200
    after = rows(root / "tags.csv")
    assert (root / "tags.csv").read_text().splitlines()[0] == header
    assert after["val_0001"] == ["1", "0", "0", "1"]
    assert {k: v for k, v in after.items() if k != "val_0001"} == {
        k: v for k, v in before.items() if k != "val_0001"
    }


def test_a_dataset_without_scribbles_or_tags_in_its_layout_gets_them(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "syn", num_train=2, num_val=0, size=(32, 32), seed=1)
    meta = json.loads((root / "dataset.json").read_text())
    del meta["layout"]["scribbles"], meta["layout"]["tags"]
    (root / "dataset.json").write_text(json.dumps(meta))
    (root / "tags.csv").unlink()
    client = create_app(root).test_client()
    scribble = np.full((32, 32), 255, np.uint8)
    scribble[5, 5] = 2
    assert save(client, "train_0001", scribble).status_code == 200
    layout = json.loads((root / "dataset.json").read_text())["layout"]
    assert layout["scribbles"] == "scribbles/{id}.png" and layout["tags"] == "tags.csv"
    assert rows(root / "tags.csv")["train_0001"] == ["background;square"]
    assert FolderDataset(root, "train").verify(progress=False) == []


@pytest.mark.slow
def test_prediction_overlay_and_uncertainty_ranking(dataset: Path, tmp_path: Path) -> None:
    ckpt = fake_checkpoint(tmp_path / "model.ckpt")
    app = create_app(dataset, ckpt, device="cpu")
    client = app.test_client()
    try:
        assert client.get("/api/dataset").get_json()["has_model"]
        pred = client.get("/api/images/b/prediction").get_json()
        labels = decode_runs(pred["labels"], (40, 56), "t")
        assert labels.max() < 3 and 0.0 <= pred["uncertainty"] <= 1.0
        state = app.extensions["weakseg_annotate"]
        state.predictor._thread.join(120)
        ranking = client.get("/api/uncertainty").get_json()
        assert ranking["finished"] and ranking["scored"] == 3 and ranking["failed"] == 0
        scores = [it["uncertainty"] for it in ranking["items"]]
        assert sorted(it["id"] for it in ranking["items"]) == ["a", "b", "trip/c"] and scores == sorted(
            scores, reverse=True
        )
    finally:
        app.extensions["weakseg_annotate"].close()
    no_model = create_app(dataset).test_client().get("/api/images/a/prediction")
    assert no_model.status_code == 404 and "--checkpoint" in no_model.get_json()["error"]


@pytest.mark.slow
def test_checkpoints_that_do_not_fit_are_one_line_errors(dataset: Path, tmp_path: Path, capsys) -> None:
    four = fake_checkpoint(tmp_path / "four.ckpt", classes=4)
    assert main(["annotate", str(dataset), "--checkpoint", str(four), "--port", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("weakseg annotate: error: ")
        and "predicts 4 classes" in err
        and len(err.splitlines()) == 1
    )
    cam = fake_checkpoint(tmp_path / "cam.ckpt", method="cam")
    assert main(["annotate", str(dataset), "--checkpoint", str(cam), "--port", "0", "--device", "cpu"]) == 2
    assert "image-level classifier" in capsys.readouterr().err


def test_cli_argument_errors_and_a_busy_port(dataset: Path, tmp_path: Path, capsys) -> None:
    assert main(["annotate"]) == 2
    assert "give DATASET_DIR" in capsys.readouterr().err
    assert main(["annotate", "--new", str(tmp_path / "n"), "--images", str(tmp_path)]) == 2
    assert "--new DIR needs --images PHOTOS_DIR and --classes" in capsys.readouterr().err
    assert main(["annotate", str(tmp_path / "nothing")]) == 2
    assert "not a dataset folder" in capsys.readouterr().err
    with live_server(dataset) as url:
        port = url.rsplit(":", 1)[1]
        assert main(["annotate", str(dataset), "--port", port]) == 2
        err = capsys.readouterr().err.strip()
        assert f"port {port} on 127.0.0.1 is in use" in err and len(err.splitlines()) == 1


def test_a_live_server_answers_on_loopback_only(dataset: Path) -> None:
    with live_server(dataset) as url:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/api/dataset", timeout=10) as response:
            assert json.load(response)["name"] == "ds"
        with urllib.request.urlopen(f"{url}/", timeout=10) as response:
            page = response.read().decode()
        assert '<script src="/static/app.js">' in page
        for asset in ("app.js", "app.css"):
            with urllib.request.urlopen(f"{url}/static/{asset}", timeout=10) as response:
                assert response.status == 200 and len(response.read()) > 1000
