"""The annotation tool's model side: a checkpoint's predictions and how unsure it is of each image.

:class:`Predictor` loads a segmenter checkpoint (never running code from the file, as every weakseg
loader), predicts an image with the checkpoint's inference settings (scales, flip, window, resize;
no CRF, so it stays interactive on a CPU) and scores its uncertainty as the mean normalised
entropy of the per-pixel class probabilities (0: sure everywhere, 1: uniform everywhere). A
background thread scores every listed image once, so the page can list them most uncertain first.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weakseg.annotate.store import AnnotationStore
from weakseg.io import UserError, read_image_rgb

CACHE_SIZE = 32  # predictions kept in memory (label maps of recently viewed images)


class Predictor:
    """Predictions and uncertainty scores of one checkpoint over an :class:`AnnotationStore`.

    Args:
        checkpoint: a weakseg segmenter checkpoint (``last.ckpt`` / ``best.ckpt``).
        store: the dataset being annotated; the checkpoint must predict its number of classes.
        device: ``cpu``, ``cuda``, ... (default: cuda when available).
    """

    def __init__(
        self, checkpoint: str | os.PathLike, store: AnnotationStore, device: str | None = None
    ) -> None:
        from weakseg.engine.checkpoint import CheckpointError
        from weakseg.engine.inference import inference_options
        from weakseg.engine.trainer import load_trained_model
        from weakseg.methods import get_method_class, model_kind

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, cfg, meta = load_trained_model(checkpoint, self.device)
        if model_kind(get_method_class(cfg.method["name"])) == "classifier":
            raise CheckpointError(
                f"checkpoint {checkpoint} is an image-level classifier ({cfg.method['name']}); the overlay "
                "needs a segmenter (pce, rloss, full, ... or aal)"
            )
        classes = list(meta.get("classes") or [])
        if classes and len(classes) != len(store.classes):
            raise CheckpointError(
                f"checkpoint {checkpoint} predicts {len(classes)} classes, the dataset at {store.root} has "
                f"{len(store.classes)}; use a checkpoint trained on this dataset"
            )
        self.checkpoint = Path(checkpoint)
        self.store = store
        self.num_classes = len(store.classes)
        self.options = {**inference_options(cfg.eval), "crf": None}
        self._model_lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[np.ndarray, float]] = OrderedDict()
        self._scores: dict[str, float] = {}
        self._errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ one image
    def predict(self, sample_id: str) -> tuple[np.ndarray, float]:
        """(uint8 [H, W] predicted class ids, uncertainty in [0, 1]) of a listed image."""
        path = self.store.image_path(sample_id)
        with self._model_lock:
            if sample_id in self._cache:
                self._cache.move_to_end(sample_id)
                return self._cache[sample_id]
            image = read_image_rgb(path, self.store.spec.image_mode)
            from weakseg.data.base import to_tensors
            from weakseg.engine.inference import predict_probs

            x = to_tensors({"image": image})["image"][None].to(self.device)
            probs = predict_probs(self.model, x, num_classes=self.num_classes, **self.options)[0]
            labels = probs.argmax(dim=0).to(torch.uint8).cpu().numpy()
            score = uncertainty(probs)
            self._cache[sample_id] = (labels, score)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            self._scores[sample_id] = score
            return labels, score

    # ------------------------------------------------------------------ ranking
    def start_ranking(self) -> None:
        """Score every listed image in a background thread (once; safe to call again)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._rank, name="weakseg-annotate-rank", daemon=True)
            self._thread.start()

    def _rank(self) -> None:
        for sid in self.store.ids:
            if self._stop.is_set():
                return
            if sid in self._scores:
                continue
            try:
                self.predict(sid)
            except (UserError, OSError, ValueError) as err:
                self._errors[sid] = str(err)

    def ranking(self) -> dict[str, Any]:
        """``{"total", "scored", "finished", "items": [{"id", "uncertainty"}]}``, most uncertain first."""
        items = sorted(self._scores.items(), key=lambda kv: (-kv[1], kv[0]))
        return {
            "total": len(self.store.ids),
            "scored": len(self._scores),
            "finished": self._thread is not None and not self._thread.is_alive(),
            "failed": len(self._errors),
            "items": [{"id": sid, "uncertainty": round(score, 4)} for sid, score in items],
        }

    def close(self, timeout: float = 10.0) -> None:
        """Stop the ranking thread (after the image it is on)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def uncertainty(probs: torch.Tensor) -> float:
    """Mean normalised entropy of probabilities ``[K, H, W]``: 0 when every pixel is certain, 1 when
    every pixel is uniform over the K classes."""
    k = probs.shape[0]
    if k < 2:
        return 0.0
    p = probs.float().clamp_min(1e-12)
    entropy = -(p * p.log()).sum(dim=0) / math.log(k)
    return float(entropy.mean().clamp(0.0, 1.0))


__all__ = ["Predictor", "uncertainty"]
