"""Shared helpers of the annotation tool's tests: tiny datasets, a checkpoint, a live server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

flask = pytest.importorskip("flask", reason="the annotation tool needs Flask (pip install '.[annotate]')")

from weakseg.annotate import create_app, make_server  # noqa: E402
from weakseg.data.imports import create_dataset_from_images  # noqa: E402

CLASSES = ["background", "cat", "dog"]


def photo_dataset(tmp: Path, sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """A new, unannotated dataset (via ``create_dataset_from_images``) of small gradient photos."""
    sizes = sizes or {"a": (48, 64), "b": (40, 56), "trip/c": (36, 50)}
    photos = tmp / "photos"
    for name, (h, w) in sizes.items():
        arr = np.zeros((h, w, 3), np.uint8)
        arr[..., 0] = np.linspace(40, 220, w, dtype=np.uint8)[None, :]
        arr[..., 1] = np.linspace(60, 160, h, dtype=np.uint8)[:, None]
        arr[..., 2] = 120
        path = photos / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
    return create_dataset_from_images(tmp / "ds", photos, CLASSES)


def fake_checkpoint(path: Path, classes: int = 3, method: str = "pce") -> Path:
    """A loadable checkpoint of a small segmenter with random weights (no training)."""
    from weakseg.builders import build_model
    from weakseg.config import config_to_dict, load_config
    from weakseg.engine.checkpoint import save_checkpoint

    cfg = load_config(None, ["model.pretrained=null", "model.head=deeplabv2", f"method.name={method}"])
    model = build_model(cfg, classes, pretrained=False)
    return save_checkpoint(
        path,
        model=model.state_dict(),
        config=config_to_dict(cfg),
        classes=CLASSES[:classes] if classes <= 3 else [f"c{i}" for i in range(classes)],
        step=1,
    )


@contextmanager
def live_server(root: Path, checkpoint: Path | None = None, **kwargs: Any) -> Iterator[str]:
    """Serve ``create_app(root)`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    app = create_app(root, checkpoint, **kwargs)
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        app.extensions["weakseg_annotate"].close()
