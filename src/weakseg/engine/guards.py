"""Guards of the training loop: non-finite losses and gradients, and errors from DataLoader workers.

:class:`NonFiniteGuard` looks at every step without a host synchronisation: each step only updates
small flags on the device; :meth:`NonFiniteGuard.check` reads them (one sync) at the next
log / validation / checkpoint boundary, before anything is written, and raises
:class:`TrainingDivergedError` naming the step and the loss terms that went non-finite.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import torch

from weakseg.engine.distributed import DistInfo
from weakseg.io import UserError

T = TypeVar("T")


class TrainingDivergedError(UserError):
    """A loss term or the gradients became NaN / inf; nothing of the diverged state was written."""


class NonFiniteGuard:
    """Flags on ``device``: which loss terms, and whether the gradients, were ever non-finite, and the
    first (1-based) step where something was.

    ``observe_*`` launch a few tiny device ops per step and never synchronise; :meth:`check` does.
    """

    def __init__(self, device: torch.device, check_grads: bool = True):
        self.device = device
        self.check_grads = check_grads
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_terms: dict[str, torch.Tensor] = {}
        self.bad_grads = torch.zeros((), dtype=torch.bool, device=device)

    def _mark(self, step: int, bad: torch.Tensor) -> None:
        self.first_step = torch.where(bad & (self.first_step < 0), step, self.first_step)

    def observe_losses(self, step: int, losses: Mapping[str, torch.Tensor]) -> None:
        """Record the loss terms of update ``step`` (1-based, as in the logs)."""
        any_bad = None
        for name, value in losses.items():
            bad = ~torch.isfinite(value.detach()).all()
            self.bad_terms[name] = self.bad_terms[name] | bad if name in self.bad_terms else bad
            any_bad = bad if any_bad is None else any_bad | bad
        if any_bad is not None:
            self._mark(step, any_bad)

    def observe_grad_norm(self, step: int, grad_norm: torch.Tensor) -> None:
        """Record the total gradient norm of update ``step`` (non-finite iff some gradient is)."""
        bad = ~torch.isfinite(grad_norm.detach())
        self.bad_grads = self.bad_grads | bad
        self._mark(step, bad)

    def check(self, step: int, info: DistInfo, last_saved_step: int | None, hint: str = "") -> None:
        """Raise :class:`TrainingDivergedError` if anything was non-finite (all processes agree)."""
        names = sorted(self.bad_terms)
        flags = torch.stack([self.bad_grads, *(self.bad_terms[n] for n in names)]).float()
        first = torch.where(self.first_step < 0, torch.iinfo(torch.long).max, self.first_step)
        if info.enabled:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
        flags_cpu = flags.cpu().bool().tolist()  # the one host sync
        if not any(flags_cpu):
            return
        terms = [n for n, bad in zip(names, flags_cpu[1:]) if bad]
        what = []
        if terms:
            what.append("loss term(s) " + ", ".join(repr(t) for t in terms))
        if flags_cpu[0]:
            what.append("gradients")
        saved = (
            f"the last checkpoint written is from step {last_saved_step}"
            if last_saved_step is not None
            else "no checkpoint was written"
        )
        raise TrainingDivergedError(
            f"training diverged: {' and '.join(what)} became NaN/inf at step {int(first.item())} "
            f"(found at step {step}; nothing was written after it, {saved}); "
            f"{hint or 'lower optim.lr or set optim.grad_clip=1.0'}, then start again or --resume"
        )


def worker_message(err: BaseException) -> str:
    """The original one-line message of an exception re-raised from a DataLoader worker.

    PyTorch re-raises a worker's exception as the same type with the whole worker traceback as its
    message; this takes the text after the last ``<module>.<Type>: `` of that traceback.
    """
    text = str(err)
    if "Original Traceback" not in text:
        return text
    cls = type(err)
    for marker in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
        at = text.rfind(marker)
        if at >= 0:
            return text[at + len(marker) :].strip()
    return text.strip().splitlines()[-1]


def reraise_worker_errors(batches: Iterable[T]) -> Iterator[T]:
    """Iterate ``batches`` (a DataLoader); a :class:`~weakseg.io.UserError` from a worker comes out
    as the same type with its original one-line message instead of the worker's traceback."""
    iterator = iter(batches)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except UserError as err:
            message, kind = worker_message(err), type(err)
            if message == str(err):
                raise
        else:
            yield item
            continue
        # Stop the workers now: left to garbage collection, their shutdown waits ~5 s for a timeout.
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()
        raise kind(f"{message} (in a DataLoader worker)")


def nonfinite_hint(amp: str, lr: float, grad_clip: Any) -> str:
    """What to change after a divergence, for the message."""
    tips = [f"lower optim.lr (now {lr:g})"]
    if not grad_clip:
        tips.append("set optim.grad_clip=1.0")
    if amp == "fp16":
        tips.append("use train.amp=bf16 or none instead of fp16")
    return ", ".join(tips[:-1]) + (" or " if len(tips) > 1 else "") + tips[-1]
