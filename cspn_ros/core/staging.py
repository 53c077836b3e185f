"""Host -> device staging of one frame for `core.pipeline.CompletionPipeline`'s device path:
pinned upload buffers reused across frames, and per-stage timing (CUDA events or wall clock).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np


class HostStaging:
    """Host -> device uploads through page-locked (pinned on CUDA) host buffers, one per name,
    reused across frames and grown only when a frame needs more bytes. A buffer is refilled
    only after its previous copy finished (waited for on its CUDA event, normally long done).
    """

    def __init__(self, device: Any) -> None:
        import torch
        self.device = torch.device(device)
        self._stream = (torch.cuda.current_stream(self.device) if self.device.type == 'cuda'
                        else None)
        self._buffers: dict[str, Any] = {}
        self._copied: dict[str, Any] = {}

    def upload(self, name: str, array: np.ndarray) -> Any:
        """Copy `array` (any strides) into the `name` buffer and start a non_blocking copy to
        the device -> tensor of array's shape and dtype on the device (on the CPU: a view of the
        buffer, valid until the next upload under `name`)."""
        import torch
        dtype = torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype
        size = array.size * array.itemsize
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < size:
            buffer = torch.empty(max(size, 1), dtype=torch.uint8,
                                 pin_memory=self.device.type == 'cuda')
            self._buffers[name] = buffer
        if name in self._copied:
            self._copied.pop(name).synchronize()
        staged = buffer[:size].view(dtype).view(array.shape)
        np.copyto(staged.numpy(), array, casting='no')
        uploaded = staged.to(self.device, non_blocking=True)
        if self.device.type == 'cuda':
            self._copied[name] = torch.cuda.Event()
            self._copied[name].record(self._stream)
        return uploaded


class StageClock:
    """Seconds per named stage of one frame: CUDA events on a CUDA device (the stages' device
    time, read after one synchronisation at the end), wall-clock perf_counter elsewhere."""

    def __init__(self, device: Any) -> None:
        import torch
        self._cuda = torch.device(device).type == 'cuda'
        # the stream looked up once: record() without one costs ~50 us of Python each time
        self._stream = torch.cuda.current_stream(device) if self._cuda else None
        self._marks: list[tuple[str, Any]] = [('start', self._now())]

    def _now(self) -> Any:
        if not self._cuda:
            return time.perf_counter()
        import torch
        event = torch.cuda.Event(enable_timing=True)
        event.record(self._stream)
        return event

    def mark(self, stage: str) -> None:
        """The stage that started at the previous mark ends now."""
        self._marks.append((stage, self._now()))

    def seconds(self) -> dict[str, float]:
        """{stage: seconds}; on CUDA waits for the last mark (the frame's one synchronisation)."""
        pairs = zip(self._marks, self._marks[1:])
        if not self._cuda:
            return {stage: end - begin for (_, begin), (stage, end) in pairs}
        self._marks[-1][1].synchronize()
        return {stage: begin.elapsed_time(end) / 1e3 for (_, begin), (stage, end) in pairs}
