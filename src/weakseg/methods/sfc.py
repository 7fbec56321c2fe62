"""``sfc``: Shared Feature Calibration (Zhao, Tang, Wang, Xiao; AAAI 2024, arXiv 2401.11719), stage 1.

Faithful to the authors' training code (github.com/Barrett-python/SFC; notes in ``shared/methods/SFC.md``).
One training step, for a batch of ``B`` crops plus ``bank_draws`` image-bank samples (IBR):

1. :meth:`SFC.prepare_batch`: the :class:`~weakseg.methods.image_bank.ImageBank` takes the batch's latest
   image of every foreground class, then ``bank_draws`` slots drawn uniformly with replacement are
   appended (all on the training device).
2. :meth:`SFC.run_model`: the classifier (built with SFC's heads, see :meth:`SFC.model_kwargs`) runs on
   the image ``I`` and on ``I' = I x aux_scale`` (bilinear, ``align_corners=True``).
3. :meth:`SFC.forward`, per scale: ``M_W`` = PCM-refined ``[1 - max_c M_c; M_c]`` with
   ``M_c = ReLU(cam_c) / max``, multiplied by the region mask (valid pixels; foreground channels only for
   tagged classes) before the PCM. At full scale also the prototype CAM ``M_P`` (seeds: background x
   ``bg_seed_scale``, arg-max, region mask; prototypes pooled from the detached side features). Terms:

   * ``cls`` = ``cls_weight * (MLSM(s(I), y) + MLSM(s(I'), y)) / 2``;
   * ``msdw_p`` = ``L_P_DW`` = ``proto_weight * mean_{n,k,h,w} w_k |M_W(I) - M_P(I) / max|`` with
     ``w_bg = 1`` and ``w_c = DC_c``;
   * ``msdw_w`` = ``L_W_DW`` = ``scale_weight * mean_{n,c in fg,h,w} DC_c |down(M_W(I)) y - M_W(I') y|``.

Distribution coefficients ``DC_c`` come from the training set (:meth:`SFC.fit_dataset`): ``DC_c ∝
sum_j |n_c - n_j| / (n_c + e)``, normalised to mean 1, with ``n_c`` the number of training images tagged
with class ``c`` and ``e = dc_bank_factor * (N / batch) * bank_draws / C`` the bank's extra samples per
class. On VOC train_aug this gives exactly the reference's weights (its hard-coded ``ben`` constants are
``sum_j |n_c - n_j|``, its ``660*4*3/20`` is ``e``). ``dc_counts="pixels"`` uses per-class pixel counts
of the label maps instead (an option; see :class:`SFCParams`).

Settings that are not method parameters (set them in the config as ``configs/sfc/voc_r50.yaml`` does):
gradient clipping at norm 1 (``optim.grad_clip``), SGD with the reference's effective momentum 1e-4,
ResNet-50 at stride 16 without dilation, frozen stem/``layer1``/``layer2`` and BatchNorm statistics.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weakseg.losses.multilabel import multilabel_soft_margin_loss
from weakseg.losses.sfc import (
    background_from_foreground,
    class_prototypes,
    distribution_coefficients,
    max_normalize,
    pcm_propagate,
    prototype_cam,
    prototype_consistency_loss,
    scale_consistency_loss,
    seed_masks,
)
from weakseg.methods.base import register_method
from weakseg.methods.cam import CAM, params_from_spec
from weakseg.methods.image_bank import ImageBank
from weakseg.models.classifier import DEFAULT_BG_THRESHOLD, insert_background

DC_COUNTS = ("images", "pixels", "uniform")
PIXEL_SOURCES = ("mask", "pseudo", "scribble")


@dataclass
class SFCParams:
    """SFC hyperparameters (defaults: the authors' code).

    Attributes:
        cls_weight: weight of the two-scale multi-label soft-margin loss.
        proto_weight: weight of ``L_P_DW`` (1.6).
        scale_weight: weight of ``L_W_DW`` (0.8).
        aux_scale: scale of the second input ``I'`` (0.5).
        bg_seed_scale: the background channel is multiplied by this before the seed arg-max (0.3).
        pcm_iterations: affinity propagations of the PCM (2).
        side_channels: widths of the side 1x1 convs, one per backbone level (128, 128, 256, 256).
        ibr: image bank re-sampling on/off.
        bank_draws: bank samples appended to every batch (4).
        dc_counts: class frequencies behind ``DC_c``: ``"images"`` (images tagged with the class, as the
            reference), ``"pixels"`` (labelled pixels of the class in the training label maps: masks,
            else pseudo-labels, else scribbles, rescaled to the total image count; image counts with a
            warning when the dataset has none; with ground-truth masks this uses pixel supervision an
            image-level method would not have) or ``"uniform"`` (``DC_c = 1``, the paper's ablation).
        dc_bank_factor: the factor 3 of the reference's bank correction ``660 * 4 * 3 / 20`` (0: none).
        bg_threshold: background score of the model's tag-free ``"logits"`` (not used by validation).
        seed_bg_offset, seed_fg_scale: validation seeds as SFC's inference scores them: on max-normalised
            maps the background channel gets ``+ 0.4`` and foreground channels ``x 2``
            (:func:`sfc_seed_scores`).
    """

    cls_weight: float = 1.0
    proto_weight: float = 1.6
    scale_weight: float = 0.8
    aux_scale: float = 0.5
    bg_seed_scale: float = 0.3
    pcm_iterations: int = 2
    side_channels: list[int] = field(default_factory=lambda: [128, 128, 256, 256])
    ibr: bool = True
    bank_draws: int = 4
    dc_counts: str = "images"
    dc_bank_factor: float = 3.0
    bg_threshold: float = DEFAULT_BG_THRESHOLD
    seed_bg_offset: float = 0.4
    seed_fg_scale: float = 2.0


def _check_params(p: SFCParams) -> None:
    if p.dc_counts not in DC_COUNTS:
        raise ValueError(f"method.dc_counts is '{p.dc_counts}'; expected one of {', '.join(DC_COUNTS)}")
    if not 0.0 < p.aux_scale < 1.0:
        raise ValueError(f"method.aux_scale must lie in (0, 1), got {p.aux_scale}")
    if p.bank_draws < 0 or p.pcm_iterations < 0 or p.dc_bank_factor < 0:
        raise ValueError("method.bank_draws, pcm_iterations and dc_bank_factor must be >= 0")
    if not p.side_channels or min(p.side_channels) < 1:
        raise ValueError(f"method.side_channels must be positive widths, got {p.side_channels}")


@dataclass
class ClassCounts:
    """Training-set statistics over all ``K`` classes: ``images[k]`` samples tagged with ``k``;
    ``pixels[k]`` labelled pixels of ``k`` in ``pixel_source`` label maps (None when not counted)."""

    num_images: int
    images: np.ndarray
    pixels: np.ndarray | None = None
    pixel_source: str | None = None


def count_classes(dataset: Any, pixels: bool = False, progress: bool = True, workers: int = 8) -> ClassCounts:
    """Count, over every sample of ``dataset``, the images tagged with each class and (``pixels``) the
    labelled pixels of each class in its first available label maps (masks, pseudo-labels, scribbles).

    Tags come from :meth:`~weakseg.data.base.SegDataset.tags_of` (a tags file, else label maps); label
    maps are read raw, without transforms, by ``workers`` threads (file decoding releases the GIL;
    COCO's 82k label maps would take minutes one by one). No CAM or model is involved.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from weakseg.io import read_label

    k = int(dataset.num_classes)
    n = len(dataset)
    source = _pixel_source(dataset) if pixels else None

    def count(i: int) -> tuple[np.ndarray, np.ndarray | None]:
        tagged = np.asarray(dataset.tags_of(i)) > 0.5
        if source is None:
            return tagged, None
        label = read_label(dataset.label_path(source, i))
        return tagged, np.bincount(label.ravel(), minlength=256)[:k]

    images = np.zeros(k, dtype=np.int64)
    pixel_counts = np.zeros(k, dtype=np.int64) if source is not None else None
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(count, range(n), chunksize=64)
        for tagged, pix in tqdm(
            results, total=n, desc="sfc: class statistics", disable=not progress or n < 2000
        ):
            images += tagged
            if pixel_counts is not None and pix is not None:
                pixel_counts += pix
    return ClassCounts(num_images=n, images=images, pixels=pixel_counts, pixel_source=source)


def _pixel_source(dataset: Any) -> str | None:
    """The first of masks / pseudo-labels / scribbles the dataset has files for (None: none)."""
    for key in PIXEL_SOURCES:
        try:
            dataset.label_path(key, 0)
        except (KeyError, AttributeError):
            continue
        return key
    return None


def sfc_seed_scores(
    maps: Tensor, tags: Tensor, background: int | None, bg_offset: float = 0.4, fg_scale: float = 2.0
) -> Tensor:
    """SFC's seed scores from ``[B, K, H, W]`` maps with their own background channel.

    As ``make_cam.py`` / ``eval_cam.py``: every channel divided by its spatial max (+1e-5), the background
    channel ``+ bg_offset``, foreground channels ``x fg_scale`` (the ``np.pad`` trick); classes not in
    ``tags`` (``[B, K]``) score -1, so the arg-max runs over the background and the tagged classes only.
    """
    scores = max_normalize(maps.float()) * fg_scale
    present = tags.to(scores.dtype)[:, :, None, None].clone()
    if background is not None:
        scores[:, background] = scores[:, background] / fg_scale + bg_offset
        present[:, background] = 1.0
    return scores * present + (present - 1.0)


@register_method
class SFC(CAM):
    """SFC stage 1: terms ``cls``, ``msdw_p`` (``L_P_DW``) and ``msdw_w`` (``L_W_DW``), already weighted.

    Call :meth:`fit_dataset` with the training set before training (it sets the class weights); the
    engine does. The model must be a :class:`~weakseg.models.classifier.CAMClassifier` with SFC's heads
    (``create_cam_classifier(..., **SFC.model_kwargs(spec))``).
    """

    name = "sfc"
    Params = SFCParams
    requires = ("tags",)

    def __init__(self, params: SFCParams, **kw: Any) -> None:
        super().__init__(params, **kw)
        _check_params(params)
        self.bank = ImageBank(self.num_foreground, params.bank_draws) if params.ibr else None
        self.register_buffer("dc_weights", torch.ones(self.num_foreground))
        self.class_counts: ClassCounts | None = None
        self._fitted = params.dc_counts == "uniform"
        self.register_load_state_dict_post_hook(_mark_fitted)

    # ------------------------------------------------------------------ engine hooks

    @classmethod
    def model_kwargs(cls, spec: Mapping[str, Any]) -> dict[str, Any]:
        """``bg_threshold`` plus SFC's heads: the PCM conv and the side convs."""
        p = params_from_spec(cls, spec)
        return {"bg_threshold": float(p.bg_threshold), "pcm": True, "side_channels": list(p.side_channels)}

    def fit_dataset(self, dataset: Any, *, batch_size: int, progress: bool = True) -> dict[str, Any]:
        """Set the distribution coefficients from the training set's own statistics.

        Args:
            dataset: the training :class:`~weakseg.data.base.SegDataset` (tags, optional label maps).
            batch_size: samples per step and process (the bank appends ``bank_draws`` per process).

        Returns ``{"images": [...], "pixels": [...] | None, "pixel_source", "extra", "dc": [...]}`` over the
        foreground classes, for logging.
        """
        p = self.params
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        counts = count_classes(dataset, pixels=p.dc_counts == "pixels", progress=progress)
        self.class_counts = counts
        fg = self.fg_index.cpu().numpy()
        images = counts.images[fg].astype(np.float64)
        freq = images
        if p.dc_counts == "pixels":
            if counts.pixels is None:
                warnings.warn(
                    "sfc: dc_counts='pixels' but the training set has no masks, pseudo-labels or scribbles; "
                    "using image counts",
                    stacklevel=2,
                )
            else:
                pix = counts.pixels[fg].astype(np.float64)
                freq = pix * images.sum() / max(pix.sum(), 1.0)  # pixel shares in image units
        extra = 0.0
        if p.ibr:
            extra = p.dc_bank_factor * (counts.num_images / batch_size) * p.bank_draws / self.num_foreground
        if p.dc_counts == "uniform":
            dc = torch.ones(self.num_foreground)
        else:
            dc = distribution_coefficients(torch.from_numpy(freq), extra=extra)
        self.set_class_weights(dc)
        return {
            "images": images.astype(int).tolist(),
            "pixels": None if counts.pixels is None else counts.pixels[fg].tolist(),
            "pixel_source": counts.pixel_source,
            "extra": extra,
            "dc": dc.tolist(),
        }

    def set_class_weights(self, dc: Tensor) -> None:
        """Set ``DC_c`` (``[C]``, foreground classes in class order) directly."""
        dc = torch.as_tensor(dc, dtype=torch.float32)
        if dc.shape != (self.num_foreground,):
            raise ValueError(f"expected {self.num_foreground} class weights, got shape {tuple(dc.shape)}")
        self.dc_weights.copy_(dc.to(self.dc_weights.device))
        self._fitted = True

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """IBR: update the bank from the batch and append ``bank_draws`` bank samples (training only)."""
        if self.bank is None or not self.training:
            return batch
        return self.bank.append(batch, self.foreground_tags(batch["tags"]) > 0.5)

    def run_model(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """Outputs for ``I``, with the outputs for ``I' = I x aux_scale`` under ``"aux_scale"``."""
        image = batch["image"]
        outputs = dict(model(image))
        small = F.interpolate(image, scale_factor=self.params.aux_scale, mode="bilinear", align_corners=True)
        outputs["aux_scale"] = model(small)
        return outputs

    # ------------------------------------------------------------------ maps

    def channel_labels(self, tags: Tensor) -> Tensor:
        """``[B, K]``: the foreground tags, and 1 in the background channel (SFC pads the label with 1)."""
        labels = tags.float().clone()
        if self.background is not None:
            labels[:, self.background] = 1.0
        return labels

    def _check_outputs(self, outputs: dict[str, Any]) -> None:
        if "pcm_embedding" not in outputs or "side_embedding" not in outputs:
            raise RuntimeError(
                "sfc: the model has no SFC heads (outputs 'pcm_embedding' / 'side_embedding'); build it with "
                "create_cam_classifier(..., **SFC.model_kwargs(cfg.method))"
            )

    def classifier_cam(self, outputs: dict[str, Any], region: Tensor | None) -> Tensor:
        """``M_W`` ``[B, K, h, w]`` (float32): ``[1 - max_c M_c; M_c]`` times ``region`` (if any), PCM'd."""
        self._check_outputs(outputs)
        fg = max_normalize(F.relu(outputs["cam"].float()))
        maps = (
            fg
            if self.background is None
            else insert_background(fg, background_from_foreground(fg), self.background)
        )
        if region is not None:
            maps = maps * region
        return pcm_propagate(maps, outputs["pcm_embedding"].float(), self.params.pcm_iterations)

    def prototype_cam(self, outputs: dict[str, Any], cam_w: Tensor, region: Tensor) -> Tensor:
        """``M_P`` ``[B, K, h, w]``: ``ReLU(cos)`` to prototypes pooled under the seeds of ``cam_w``."""
        side = outputs["side_embedding"].float()
        seeds = seed_masks(cam_w, region, self.background, self.params.bg_seed_scale)
        return prototype_cam(side, class_prototypes(seeds, side))

    def _region(self, labels: Tensor, valid: Tensor | None, grid: tuple[int, int]) -> Tensor:
        """``[B, K, h, w]``: valid pixels (nearest-resized to ``grid``) times the channel labels."""
        region = labels[:, :, None, None].expand(-1, -1, *grid)
        if valid is None:
            return region
        v = F.interpolate(valid[:, None].float(), size=grid, mode="nearest")
        return region * v

    def class_maps(self, outputs: dict[str, Any], tags: Tensor | None = None) -> dict[str, Tensor]:
        """Inference maps ``[B, K, h, w]`` as SFC's ``make_cam.py`` builds them (not normalised).

        ``"M_W"``: tag-free ``M_W`` (no region mask), PCM-refined. ``"M_P"``: the prototype CAM, with seeds
        restricted to the classes of ``tags`` (``[B, K]``; required) and the background.
        """
        if tags is None:
            raise ValueError("sfc: class_maps needs the image tags (prototypes of the present classes)")
        with torch.autocast(device_type=outputs["cam"].device.type, enabled=False):
            cam_w = self.classifier_cam(outputs, None)
            region = self._region(self.channel_labels(tags), None, tuple(cam_w.shape[-2:]))
            return {"M_W": cam_w, "M_P": self.prototype_cam(outputs, cam_w, region)}

    @property
    def seed_rule(self) -> str:
        return (
            "SFC make_cam/eval_cam: per-channel max-normalised maps, background "
            f"+{self.params.seed_bg_offset}, foreground x{self.params.seed_fg_scale}, arg-max over "
            "background and tagged classes"
        )

    def seed_scores(self, outputs: dict[str, Any], tags: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        """``"M_W+M_P"`` (the paper's combination: the sum of the two below), ``"M_W"`` and ``"M_P"``.

        Each map's seed scores are :func:`sfc_seed_scores` of its upsampled ``[B, K, *size]`` maps: the
        maps' own background channel decides background, as SFC's inference and evaluation do.
        """
        p = self.params
        scores = {
            name: sfc_seed_scores(
                F.interpolate(maps, size=size, mode="bilinear", align_corners=False),
                tags,
                self.background,
                bg_offset=p.seed_bg_offset,
                fg_scale=p.seed_fg_scale,
            )
            for name, maps in self.class_maps(outputs, tags).items()
        }
        return {"M_W+M_P": scores["M_W"] + scores["M_P"], **scores}

    # ------------------------------------------------------------------ loss

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        if not self._fitted:
            raise RuntimeError(
                "sfc: class weights are not set; call method.fit_dataset(train_set, batch_size=...) before "
                "training (or set_class_weights / dc_counts='uniform')"
            )
        if "aux_scale" not in outputs:
            raise RuntimeError("sfc: outputs lack 'aux_scale'; run the model through SFC.run_model")
        p = self.params
        tags, valid = batch["tags"], batch.get("valid")
        target = self.foreground_tags(tags).float()
        labels = self.channel_labels(tags)
        small = outputs["aux_scale"]
        cls = 0.5 * (
            multilabel_soft_margin_loss(outputs["cls_logits"], target)
            + multilabel_soft_margin_loss(small["cls_logits"], target)
        )
        with torch.autocast(device_type=outputs["cam"].device.type, enabled=False):
            region = self._region(labels, valid, tuple(outputs["cam"].shape[-2:]))
            cam_w = self.classifier_cam(outputs, region)
            cam_p = self.prototype_cam(outputs, cam_w, region)
            weights = torch.ones(self.num_classes, device=cam_w.device)
            weights[self.fg_index] = self.dc_weights
            msdw_p = prototype_consistency_loss(cam_w, cam_p, weights)
            small_region = self._region(labels, valid, tuple(small["cam"].shape[-2:]))
            cam_w_small = self.classifier_cam(small, small_region)
            msdw_w = scale_consistency_loss(cam_w, cam_w_small, labels, self.fg_index, self.dc_weights)
        return {
            "cls": p.cls_weight * cls,
            "msdw_p": p.proto_weight * msdw_p,
            "msdw_w": p.scale_weight * msdw_w,
        }


def _mark_fitted(module: nn.Module, incompatible_keys: Any) -> None:
    """After ``load_state_dict``, the class weights come from the checkpoint."""
    module._fitted = True  # type: ignore[attr-defined]
