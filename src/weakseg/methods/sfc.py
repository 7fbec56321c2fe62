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
   ``bg_seed_scale``, arg-max, region mask, taken from ``M_W`` or, with ``seed_source="cam"``, from the
   same map before the PCM; prototypes pooled from the detached side features). Terms:

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

Settings that are not method parameters (set them in the config as
``configs/sfc/voc_r50-cls_512x512_3966.yaml`` does): gradient clipping at norm 1 (``optim.grad_clip``),
SGD with the reference's effective momentum 1e-4, ResNet-50 at stride 16 without dilation, frozen
stem/``layer1``/``layer2`` and BatchNorm statistics.

Collapse diagnostics (every step, over the batch's own images, bank samples left out; datasets with a
background class): ``sfc/empty_bg_prototype`` = the share of images without a single background seed
(their background prototype is 0, so ``M_P``'s background channel is 0 and ``L_P_DW`` pulls ``M_W``'s
background towards 0) and ``sfc/bg_seed_share`` = the share of valid pixels seeded as background. They
are detached device scalars (:meth:`SFC.log_values`, no host synchronisation); their per-step history
is returned with the validation metrics (``"sfc_train_statistics"``, in the run's ``metrics.json``).

Validation (:meth:`SFC.seed_scores`): single-scale seeds by SFC's rule (``M_W + M_P``, ``M_W``, ``M_P``
with their own background, ``+ 0.4`` / ``x 2``; the first picks ``best.ckpt``) and, for comparison with
``cam``, the raw classifier CAM by IRN's rule (``"cam"``, background score ``bg_threshold``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weakseg.data.sample import Batch
from weakseg.losses.cam_consistency import (
    distribution_coefficients,
    prototype_consistency_loss,
    scale_consistency_loss,
)
from weakseg.losses.multilabel import multilabel_soft_margin_loss
from weakseg.methods.base import register_method
from weakseg.methods.cam import (  # noqa: F401  (ClassCounts, count_classes: re-exported)
    CAM,
    ClassCounts,
    check_tag_variety,
    count_classes,
    params_from_spec,
)
from weakseg.methods.image_bank import ImageBank
from weakseg.models.classifier import DEFAULT_BG_THRESHOLD
from weakseg.models.outputs import ModelOutputs
from weakseg.ops.class_maps import (
    background_from_foreground,
    class_prototypes,
    insert_background,
    max_normalize,
    pcm_propagate,
    prototype_cam,
    seed_masks,
)

DC_COUNTS = ("images", "pixels", "uniform")
SEED_SOURCES = ("pcm", "cam")


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
        bg_threshold: background score of the model's tag-free ``"logits"`` and of the raw-CAM validation
            seeds (``mIoU_cam``, IRN's rule, as the ``cam`` method validates).
        seed_bg_offset, seed_fg_scale: validation seeds as SFC's inference scores them: on max-normalised
            maps the background channel gets ``+ 0.4`` and foreground channels ``x 2``
            (:func:`sfc_seed_scores`).
        seed_source: the map the prototype seeds are taken from: ``"pcm"``, ``M_W`` after the PCM (the
            authors' code), or ``"cam"``, the same map before the PCM (an option of weakseg, not of the
            paper). On voc-real with EfficientNet-lite0 the learnt PCM affinity averages each cell over
            ~60 % of a 14x14 grid, and seeds taken after it leave 60-75 % of the crops without any
            background seed, against 2 % before it (``benchmarks/sfc_collapse_probe.py``).
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
    seed_source: str = "pcm"


def _check_params(p: SFCParams) -> None:
    if p.seed_source not in SEED_SOURCES:
        raise ValueError(
            f"method.seed_source is '{p.seed_source}'; expected one of {', '.join(SEED_SOURCES)}"
        )
    if p.dc_counts not in DC_COUNTS:
        raise ValueError(f"method.dc_counts is '{p.dc_counts}'; expected one of {', '.join(DC_COUNTS)}")
    if not 0.0 < p.aux_scale < 1.0:
        raise ValueError(f"method.aux_scale must lie in (0, 1), got {p.aux_scale}")
    if p.bank_draws < 0 or p.pcm_iterations < 0 or p.dc_bank_factor < 0:
        raise ValueError("method.bank_draws, pcm_iterations and dc_bank_factor must be >= 0")
    if not p.side_channels or min(p.side_channels) < 1:
        raise ValueError(f"method.side_channels must be positive widths, got {p.side_channels}")


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
    dc_weights: Tensor  # [C] buffer

    def __init__(self, params: SFCParams, **kw: Any) -> None:
        super().__init__(params, **kw)
        _check_params(params)
        self.bank = ImageBank(self.num_foreground, params.bank_draws) if params.ibr else None
        self.register_buffer("dc_weights", torch.ones(self.num_foreground))
        self.class_counts: ClassCounts | None = None
        self._fitted = params.dc_counts == "uniform"
        self.register_load_state_dict_post_hook(_mark_fitted)
        self._last_stats: dict[str, Tensor] = {}
        self._stat_history: list[tuple[int, Tensor]] = []  # (step, [2] detached device tensor)

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

        Also warns when the training tags hardly vary (:func:`~weakseg.methods.cam.check_tag_variety`).

        Returns ``{"images": [...], "pixels": [...] | None, "pixel_source", "extra", "dc": [...],
        "dominant_tags": {...}}`` over the foreground classes, for logging.
        """
        p = self.params
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        counts = count_classes(dataset, pixels=p.dc_counts == "pixels", progress=progress)
        self.class_counts = counts
        dominant = check_tag_variety(self.name, dataset, self.background, counts, progress=progress)
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
            "dominant_tags": dominant,
        }

    def set_class_weights(self, dc: Tensor) -> None:
        """Set ``DC_c`` (``[C]``, foreground classes in class order) directly."""
        dc = torch.as_tensor(dc, dtype=torch.float32)
        if dc.shape != (self.num_foreground,):
            raise ValueError(f"expected {self.num_foreground} class weights, got shape {tuple(dc.shape)}")
        self.dc_weights.copy_(dc.to(self.dc_weights.device))
        self._fitted = True

    def prepare_batch(self, batch: Batch) -> Batch:
        """IBR: update the bank from the batch and append ``bank_draws`` bank samples (training only)."""
        if self.bank is None or not self.training:
            return batch
        return cast(Batch, self.bank.append(batch, self.foreground_tags(batch["tags"]) > 0.5))

    def run_model(self, model: nn.Module, batch: Batch) -> ModelOutputs:
        """Outputs for ``I``, with the outputs for ``I' = I x aux_scale`` under ``"aux_scale"``."""
        image = batch["image"]
        outputs = cast(ModelOutputs, dict(model(image)))
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

    def _check_outputs(self, outputs: ModelOutputs) -> None:
        if "pcm_embedding" not in outputs or "side_embedding" not in outputs:
            raise RuntimeError(
                "sfc: the model has no SFC heads (outputs 'pcm_embedding' / 'side_embedding'); build it with "
                "create_cam_classifier(..., **SFC.model_kwargs(cfg.method))"
            )

    def classifier_cam(self, outputs: ModelOutputs, region: Tensor | None) -> Tensor:
        """``M_W`` ``[B, K, h, w]`` (float32): :meth:`raw_maps` PCM'd."""
        return self.propagate(outputs, self.raw_maps(outputs, region))

    def raw_maps(self, outputs: ModelOutputs, region: Tensor | None) -> Tensor:
        """``[1 - max_c M_c; M_c]`` ``[B, K, h, w]`` (float32) times ``region`` (if any), before the PCM."""
        self._check_outputs(outputs)
        fg = max_normalize(F.relu(outputs["cam"].float()))
        maps = (
            fg
            if self.background is None
            else insert_background(fg, background_from_foreground(fg), self.background)
        )
        return maps if region is None else maps * region

    def propagate(self, outputs: ModelOutputs, maps: Tensor) -> Tensor:
        """The PCM: ``maps`` propagated ``pcm_iterations`` times along the model's pixel affinities."""
        return pcm_propagate(maps, outputs["pcm_embedding"].float(), self.params.pcm_iterations)

    def prototype_cam(
        self, outputs: ModelOutputs, cam_w: Tensor, region: Tensor, seeds: Tensor | None = None
    ) -> Tensor:
        """``M_P`` ``[B, K, h, w]``: ``ReLU(cos)`` to prototypes pooled under the seeds of ``cam_w``
        (:meth:`seeds` unless given)."""
        side = outputs["side_embedding"].float()
        if seeds is None:
            seeds = self.seeds(self.seed_map(outputs, cam_w, region), region)
        return prototype_cam(side, class_prototypes(seeds, side))

    def seed_map(
        self, outputs: ModelOutputs, cam_w: Tensor, region: Tensor, raw: Tensor | None = None
    ) -> Tensor:
        """The map the prototype seeds come from (``seed_source``): ``cam_w`` (``M_W``, after the PCM) or
        the maps before the PCM (``raw`` if given, else :meth:`raw_maps` of ``outputs`` and ``region``)."""
        if self.params.seed_source == "pcm":
            return cam_w
        return self.raw_maps(outputs, region) if raw is None else raw

    def seeds(self, source: Tensor, region: Tensor) -> Tensor:
        """One-hot prototype seeds ``[B, K, h, w]`` of ``source`` (:meth:`seed_map`; background x
        ``bg_seed_scale``, arg-max, times ``region``), no gradient."""
        return seed_masks(source, region, self.background, self.params.bg_seed_scale)

    def seed_statistics(self, seeds: Tensor, region: Tensor, num_images: int) -> dict[str, Tensor]:
        """Collapse diagnostics of the first ``num_images`` images (detached scalars; {} without a
        background class): ``sfc/empty_bg_prototype``, the share of images without any background seed,
        and ``sfc/bg_seed_share``, the share of their valid pixels seeded as background."""
        if self.background is None:
            return {}
        with torch.no_grad():
            bg = seeds[:num_images, self.background].flatten(1)
            valid = region[:num_images, self.background].flatten(1)  # the crop (background label is 1)
            empty = (bg.sum(1) == 0).float().mean()
            share = bg.sum() / valid.sum().clamp_min(1.0)
        return {"sfc/empty_bg_prototype": empty, "sfc/bg_seed_share": share}

    def log_values(self) -> dict[str, Tensor]:
        """The collapse diagnostics of the last training step (see the module doc)."""
        return dict(self._last_stats)

    def training_statistics(self) -> dict[str, list[float]]:
        """Per-step history of :meth:`seed_statistics` in this process (empty before any step)."""
        if not self._stat_history:
            return {}
        values = torch.stack([v for _, v in self._stat_history]).cpu().tolist()
        return {
            "step": [step for step, _ in self._stat_history],
            "empty_bg_prototype": [v[0] for v in values],
            "bg_seed_share": [v[1] for v in values],
        }

    def _region(self, labels: Tensor, valid: Tensor | None, grid: tuple[int, ...]) -> Tensor:
        """``[B, K, h, w]``: valid pixels (nearest-resized to ``grid``) times the channel labels."""
        region = labels[:, :, None, None].expand(-1, -1, *grid)
        if valid is None:
            return region
        v = F.interpolate(valid[:, None].float(), size=grid, mode="nearest")
        return region * v

    def class_maps(self, outputs: ModelOutputs, tags: Tensor | None = None) -> dict[str, Tensor]:
        """Inference maps as SFC's ``make_cam.py`` builds them (not normalised).

        ``"cam"``: the raw classifier CAM ``ReLU(cam)`` ``[B, C, h, w]`` (foreground only, as the ``cam``
        method's, so both are scored by the same rule). ``"M_W"`` ``[B, K, h, w]``: tag-free ``M_W`` (no
        region mask), PCM-refined, with its own background channel. ``"M_P"`` ``[B, K, h, w]``: the
        prototype CAM, with seeds restricted to the classes of ``tags`` (``[B, K]``; required) and the
        background.
        """
        if tags is None:
            raise ValueError("sfc: class_maps needs the image tags (prototypes of the present classes)")
        with torch.autocast(device_type=outputs["cam"].device.type, enabled=False):
            cam_w = self.classifier_cam(outputs, None)
            region = self._region(self.channel_labels(tags), None, tuple(cam_w.shape[-2:]))
            return {
                "cam": F.relu(outputs["cam"].float()),
                "M_W": cam_w,
                "M_P": self.prototype_cam(outputs, cam_w, region),
            }

    @property
    def seed_rule(self) -> str:
        return (
            "M_W+M_P, M_W, M_P: SFC make_cam/eval_cam, per-channel max-normalised maps, their own background "
            f"+{self.params.seed_bg_offset}, foreground x{self.params.seed_fg_scale}, arg-max over "
            "background and tagged classes; cam: the raw classifier CAM, background where all tagged classes "
            f"are below {self.params.bg_threshold} (IRN, as the cam method)"
        )

    def seed_scores(self, outputs: dict[str, Any], tags: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        """``"M_W+M_P"`` (the paper's combination: the sum of the two below), ``"M_W"``, ``"M_P"`` and
        ``"cam"``.

        The first three are :func:`sfc_seed_scores` of the upsampled ``[B, K, *size]`` maps: the maps'
        own background channel decides background, as SFC's inference and evaluation do. ``"cam"`` is
        :meth:`~weakseg.methods.cam.CAM.raw_cam_scores` (IRN's rule, the ``cam`` method's validation).
        """
        p = self.params
        maps = self.class_maps(cast(ModelOutputs, outputs), tags)
        scores = {
            name: sfc_seed_scores(
                F.interpolate(maps[name], size=size, mode="bilinear", align_corners=False),
                tags,
                self.background,
                bg_offset=p.seed_bg_offset,
                fg_scale=p.seed_fg_scale,
            )
            for name in ("M_W", "M_P")
        }
        return {
            "M_W+M_P": scores["M_W"] + scores["M_P"],
            **scores,
            "cam": self.raw_cam_scores(outputs, tags, size),
        }

    @torch.no_grad()
    def validate(
        self, model: nn.Module, dataset: Any, eval_cfg: Any, device: torch.device
    ) -> dict[str, Any] | None:
        """:meth:`~weakseg.methods.cam.CAM.validate`, plus ``"sfc_train_statistics"`` (the per-step
        collapse diagnostics so far, see :meth:`training_statistics`) once training has run."""
        metrics = super().validate(model, dataset, eval_cfg, device)
        history = self.training_statistics()
        if metrics is not None and history:
            metrics["sfc_train_statistics"] = history
        return metrics

    # ------------------------------------------------------------------ loss

    def forward(self, outputs: ModelOutputs, batch: Batch) -> dict[str, Tensor]:
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
            raw = self.raw_maps(outputs, region)
            cam_w = self.propagate(outputs, raw)
            seeds = self.seeds(self.seed_map(outputs, cam_w, region, raw), region)
            cam_p = self.prototype_cam(outputs, cam_w, region, seeds)
            own_images = tags.shape[0] - int(batch.get("num_bank", 0))
            self._last_stats = self.seed_statistics(seeds, region, own_images)
            if self._last_stats and self.training:
                self._stat_history.append((self.step + 1, torch.stack(list(self._last_stats.values()))))
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
    assert isinstance(module, SFC)  # registered by SFC.__init__ on itself
    module._fitted = True
