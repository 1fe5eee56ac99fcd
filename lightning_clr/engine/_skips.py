"""Skip flags read one step late: AMP's GradScaler tells an optimizer that skips inf/NaN steps by itself
(``fused=True``) through ``optimizer.found_inf``, a tensor on the gradients' device. Reading it at once
(``bool(found_inf)``) would make every optimizer step wait for the GPU, the very sync ``fused=True`` avoids.

:class:`SkipFlags` copies each flag to pinned host memory without blocking (``non_blocking=True``) and records
a CUDA event after the copy; the flag is read at the optimizer's next step, when the copy has long landed
(the event is queried first and waited on only if the GPU is still more than a step behind). A flag on the
CPU is copied too and read at the same point, so CPU runs take the same path.

Example:
    >>> import torch
    >>> flags = SkipFlags()
    >>> flags.watch(torch.tensor([1.0])); flags.watch(torch.tensor([0.0])); bool(flags)
    True
    >>> flags.skipped(), bool(flags)
    (1, False)
"""

from __future__ import annotations

from typing import Any, Optional

import torch

__all__ = ["SkipFlags"]


class SkipFlags:
    """The ``found_inf`` flags of one optimizer's steps that were counted before their flag was read."""

    def __init__(self) -> None:
        self.pending: list[tuple[torch.Tensor, Optional[Any]]] = []  # (host copy, CUDA event or None), oldest first
        self._spare: list[tuple[torch.Tensor, Any]] = []  # pinned buffers and events to reuse

    def __bool__(self) -> bool:
        return bool(self.pending)

    def watch(self, found_inf: torch.Tensor) -> None:
        """Start the flag's copy to the host; nothing waits for it."""
        if found_inf.device.type == "cuda":
            host, event = self._spare.pop() if self._spare else _pinned()
            host.copy_(found_inf.detach(), non_blocking=True)  # GradScaler's flag has one element
            event.record(torch.cuda.current_stream(found_inf.device))
            self.pending.append((host, event))
        else:
            self.pending.append((found_inf.detach().clone(), None))

    def skipped(self) -> int:
        """How many watched steps the optimizer skipped; reads every flag (waits for a copy still under way)."""
        count = 0
        for host, event in self.pending:
            if event is not None:
                if not event.query():  # the GPU is still on that step: wait for that step only
                    event.synchronize()
                self._spare.append((host, event))
            count += host.item() != 0
        self.pending.clear()  # the same list: the writer's pre-hook holds it
        return count


def _pinned() -> tuple[torch.Tensor, Any]:
    return torch.empty(1, dtype=torch.float32, pin_memory=True), torch.cuda.Event()
