"""Image Bank Re-sampling (IBR, SFC): the latest training image of every class, kept on the device.

SFC keeps one slot per foreground class holding the most recent training image (with its tags and
valid mask) that contains that class, and appends a few slots drawn uniformly at random to every
batch, so tail classes are seen more often. The reference holds the bank in host memory and copies it
to the GPU every step (``slot.cuda()``, ``vm.cuda()``: ~0.5 GB per step at 512x512) after copying
every batch image back to the host; here the bank is a set of device buffers updated with tensor
operations only: no host transfer and no host synchronisation (see
``benchmarks/sfc_image_bank_transfer.py``).

The buffers are allocated on the first update, on the batch's device, with the batch's spatial size
(training crops have a fixed size). They are not part of ``state_dict`` (a checkpoint stays small; a
resumed run starts with an empty bank, which refills within a few steps). Under DDP every process
keeps its own bank (the buffers do not exist when DDP registers buffers, so they are never broadcast).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ImageBank"]


class ImageBank(nn.Module):
    """A bank of ``num_slots`` samples (slot ``c`` = latest image containing class ``c``).

    Empty slots hold zero images, zero tags and an all-False valid mask, as in SFC (a drawn empty slot
    is an all-negative training sample with no valid pixel).

    Attributes (``None`` until the first :meth:`update`): ``images`` float ``[S, 3, H, W]``, ``tags``
    float ``[S, K]``, ``valid`` bool ``[S, H, W]``, ``filled`` bool ``[S]``.
    """

    images: Tensor | None
    tags: Tensor | None
    valid: Tensor | None
    filled: Tensor | None

    def __init__(self, num_slots: int, draws: int = 4) -> None:
        super().__init__()
        if num_slots < 1 or draws < 0:
            raise ValueError(f"need num_slots >= 1 and draws >= 0, got {num_slots} and {draws}")
        self.num_slots = int(num_slots)
        self.draws = int(draws)
        for name in ("images", "tags", "valid", "filled"):
            self.register_buffer(name, None, persistent=False)

    def reset(self) -> None:
        """Forget every slot (the next update reallocates the buffers)."""
        self.images = self.tags = self.valid = self.filled = None

    def _allocate(self, images: Tensor, tags: Tensor, valid: Tensor) -> None:
        s = self.num_slots
        self.images = images.new_zeros((s, *images.shape[1:]))
        self.tags = tags.new_zeros((s, *tags.shape[1:]))
        self.valid = valid.new_zeros((s, *valid.shape[1:]))
        self.filled = torch.zeros(s, dtype=torch.bool, device=images.device)

    @torch.no_grad()
    def update(self, images: Tensor, tags: Tensor, valid: Tensor, membership: Tensor) -> None:
        """Store, for every slot, the last sample of the batch that belongs to it.

        Args:
            images: ``[B, 3, H, W]``; tags: ``[B, K]``; valid: bool ``[B, H, W]``.
            membership: bool ``[B, S]``, sample ``b`` belongs to slot ``s`` (its foreground tags).

        Later samples in the batch overwrite earlier ones (the batch order is already random), as in
        the reference. Runs on the batch's device with gathers and ``where`` only (no host sync).
        """
        b = images.shape[0]
        if membership.shape != (b, self.num_slots):
            raise ValueError(f"membership must be [B, {self.num_slots}], got {tuple(membership.shape)}")
        if self.images is None:
            self._allocate(images, tags, valid)
        # allocated together
        assert self.images is not None and self.tags is not None and self.valid is not None
        assert self.filled is not None
        if self.images.shape[1:] != images.shape[1:] or self.tags.shape[1:] != tags.shape[1:]:
            raise ValueError(
                f"image bank holds samples {tuple(self.images.shape[1:])} with tags "
                f"{tuple(self.tags.shape[1:])}, got {tuple(images.shape[1:])} and {tuple(tags.shape[1:])}: "
                "training crops must have one size"
            )
        if self.images.device != images.device:
            self._to_device(images.device)
        # last[s] = 1 + index of the last sample in slot s, 0 when none
        order = torch.arange(1, b + 1, device=images.device)
        last = (membership.to(torch.long) * order[:, None]).amax(dim=0)
        has = last > 0
        src = (last - 1).clamp_min(0)
        self.images = torch.where(
            has.view(-1, 1, 1, 1), images.detach()[src].to(self.images.dtype), self.images
        )
        self.tags = torch.where(has.view(-1, 1), tags.detach()[src].to(self.tags.dtype), self.tags)
        self.valid = torch.where(has.view(-1, 1, 1), valid[src], self.valid)
        self.filled = self.filled | has

    def _to_device(self, device: torch.device) -> None:
        assert self.images is not None and self.tags is not None and self.valid is not None
        assert self.filled is not None
        self.images, self.tags, self.valid, self.filled = (
            t.to(device) for t in (self.images, self.tags, self.valid, self.filled)
        )

    @torch.no_grad()
    def draw(self, count: int | None = None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``count`` (default ``draws``) slots drawn uniformly with replacement: ``"image"``, ``"tags"``,
        ``"valid"`` (and ``"slot"``, the drawn indices), all on the bank's device."""
        if self.images is None:
            raise RuntimeError("the image bank is empty: call update() with a batch first")
        assert self.tags is not None and self.valid is not None
        n = self.draws if count is None else int(count)
        idx = torch.randint(self.num_slots, (n,), device=self.images.device, generator=generator)
        return {"image": self.images[idx], "tags": self.tags[idx], "valid": self.valid[idx], "slot": idx}

    def append(self, batch: Mapping[str, Any], membership: Tensor) -> dict[str, Any]:
        """Update the bank from ``batch`` and return a copy whose ``"image"``, ``"tags"`` and ``"valid"``
        have ``draws`` bank samples appended (``"num_bank"`` says how many). Other entries are unchanged
        (they keep the original batch size)."""
        images, tags = batch["image"], batch["tags"]
        valid = batch.get("valid")
        if valid is None:
            valid = torch.ones(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)
        self.update(images, tags, valid, membership)
        out = dict(batch)
        out["num_bank"] = self.draws
        if self.draws == 0:
            return out
        extra = self.draw()
        out["image"] = torch.cat([images, extra["image"].to(images.dtype)], dim=0)
        out["tags"] = torch.cat([tags, extra["tags"].to(tags.dtype)], dim=0)
        out["valid"] = torch.cat([valid, extra["valid"]], dim=0)
        return out

    def extra_repr(self) -> str:
        return f"num_slots={self.num_slots}, draws={self.draws}"
