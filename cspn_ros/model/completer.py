"""DepthCompleter: the one inference entry point shared by the node, bag replay and tools.

numpy in, numpy out (`__call__`, `complete`), or torch tensors that stay on the device
(`complete_tensor`) for the GPU pipeline. Depths are float32 metres, 0 = missing / no estimate.
Inference modes (precision, channels_last, compile, cuda_graphs) are explained in inference.py.
Backends: 'torch' runs the network eagerly; 'onnxruntime' runs the network before
propagation as an exported ONNX graph cached per input size and the propagation in torch
(onnx_backend.py; CPU, fp32); 'auto' picks onnxruntime where it applies (see resolve_backend).
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cspn_ros.config import ModelConfig
from cspn_ros.model.checkpoint import CheckpointError, load_checkpoint, load_weights
from cspn_ros.model.fill import classical_fill
from cspn_ros.model.inference import (PRECISIONS, CudaGraphRunner, choose_modes,
                                      compile_available, resolve_modes, resolve_precision)
from cspn_ros.model.input_bound import bound_by_inputs
from cspn_ros.model.network import CompletionNet
from cspn_ros.model import onnx_backend

#: Weights shipped with the package (None in from_checkpoint).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / 'weights' / 'default.safetensors'
#: Network outputs a completer returns (guidance stays inside).
OUTPUTS = ('depth', 'confidence', 'depth_init')
BACKENDS = ('torch', 'onnxruntime', 'auto')


@dataclasses.dataclass(frozen=True)
class Completion:
    """One completed frame, (H,W) float32 each: depth and depth_init in metres (before / after
    propagation), confidence in [0, 1] (the model's confidence in `depth`)."""

    depth: np.ndarray
    confidence: np.ndarray
    depth_init: np.ndarray


def resolve_device(device: str | torch.device) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (cuda if available, else cpu) -> torch.device.

    Raises RuntimeError when CUDA is asked for but not available (the caller decides about
    falling back).
    """
    if str(device) == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(device)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError(f'device {str(device)!r} requested but CUDA is not available '
                               "(torch.cuda.is_available() is False); use 'cpu' or 'auto'")
        if device.index is None:
            device = torch.device('cuda', torch.cuda.current_device())
    return device


def resolve_backend(backend: str, device: torch.device, has_network: bool, precision: str,
                    channels_last: bool, compile: bool | str) -> str:
    """'torch' or 'onnxruntime' as it will run. 'auto' = onnxruntime for a network on the CPU in
    fp32 without channels_last / compile when onnxruntime is installed (2-2.6x faster at
    640x480: BENCHMARKS.md), else torch. ValueError for unknown names, and for an explicit
    'onnxruntime' that cannot run (no network, not the CPU, reduced precision or torch-only
    modes, not installed)."""
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    problems = [text for failed, text in (
        (not has_network, "the 'classical' baseline has no network"),
        (device.type != 'cpu', f'it runs on the CPU only, not {device}'),
        (precision != 'fp32', f"it runs fp32 only, not {precision!r}"),
        (channels_last or compile, 'channels_last and compile are torch modes'),
        (not onnx_backend.available(), 'onnxruntime is not installed')) if failed]
    if backend == 'auto':
        return 'torch' if problems else 'onnxruntime'
    if backend == 'onnxruntime' and problems:
        raise ValueError(f"backend 'onnxruntime' cannot run here: {'; '.join(problems)}")
    return backend


class DepthCompleter:
    """Dense depth from RGB + sparse depth with a CompletionNet, or classical_fill for
    config.propagation == 'classical' (no torch network).

    Attributes: config (ModelConfig), device (torch.device), precision ('fp32'|'fp16'|'bf16',
    settable; 'auto' sets the device's fast one), channels_last, compile, cuda_graphs (the modes
    as chosen: None / 'auto' arguments pick the fastest safe one for the device, see
    inference.choose_modes), backend
    ('torch' | 'onnxruntime', as resolved by resolve_backend), model
    (CompletionNet in eval mode, None for 'classical'), meta (checkpoint metadata), steps
    (propagation steps, settable at run time without reloading).
    """

    def __init__(self, config: ModelConfig, model: CompletionNet | None,
                 device: str | torch.device = 'cpu', precision: str = 'fp32',
                 meta: dict | None = None, *, channels_last: bool | None = False,
                 compile: bool | str | None = False, cuda_graphs: bool | None = False,
                 backend: str = 'torch') -> None:
        if (model is None) == config.has_weights:
            raise ValueError(f'propagation {config.propagation!r} '
                             + ('needs a model' if config.has_weights else 'takes no model'))
        self.config = config
        self.device = resolve_device(device)
        modes = choose_modes(self.device.type, model is not None,
                             self.device.type == 'cuda' and compile_available(), precision,
                             channels_last, compile, cuda_graphs)
        precision, channels_last, compile, cuda_graphs = modes.values()
        self.precision = precision
        self.cuda_graphs = resolve_modes(self.device, model is not None, channels_last, compile,
                                         cuda_graphs)
        self.channels_last = channels_last
        self.compile = compile
        self.model = None if model is None else model.to(self.device).eval()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._network = self.model
        if compile:
            self._network = torch.compile(self.model, dynamic=False,
                                          backend='inductor' if compile is True else compile)
        self._graphs = CudaGraphRunner() if self.cuda_graphs else None
        self.meta = dict(meta or {})
        self._requested_backend = backend
        self._onnx = None
        self._select_backend(self.precision)

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, device: str | torch.device = 'cpu',
                        precision: str = 'auto', *, channels_last: bool | None = None,
                        compile: bool | str | None = None, cuda_graphs: bool | None = None,
                        backend: str = 'auto') -> 'DepthCompleter':
        """Load a .safetensors/.pt checkpoint (None = the packaged default weights).

        Raises CheckpointError (a ValueError) naming the file and the problem. The modes are
        explained in inference.py. By default everything is the fastest for the device: on CUDA
        fp16, channels_last, compile and CUDA graphs (call warmup before the first frame: it
        compiles and captures); on the CPU the onnxruntime backend (resolve_backend). Pass
        explicit values to opt out (e.g. precision='fp32', compile=False).
        """
        if path is None:
            path = DEFAULT_CHECKPOINT
            if not path.is_file():
                raise CheckpointError(path, 'the packaged default weights are not shipped in '
                                            'this build yet; pass a checkpoint path or use '
                                            "DepthCompleter.from_config(config) ('classical' "
                                            'needs no weights)')
        state_dict, config, meta = load_checkpoint(path)
        model = None
        if config.has_weights:
            model = CompletionNet(config)
            load_weights(model, state_dict, path)
        return cls(config, model, device, precision, meta, channels_last=channels_last,
                   compile=compile, cuda_graphs=cuda_graphs, backend=backend)

    @classmethod
    def from_config(cls, config: ModelConfig | dict | str | Path | None = None,
                    device: str | torch.device = 'cpu', precision: str = 'fp32', *,
                    channels_last: bool = False, compile: bool | str = False,
                    cuda_graphs: bool = False, backend: str = 'torch') -> 'DepthCompleter':
        """An untrained network for `config` (anything ModelConfig.load accepts), or the
        classical baseline for 'classical'. The modes are explained in inference.py; backend
        as in from_checkpoint (default torch: untrained networks are for tests and training)."""
        config = ModelConfig.load(config)
        return cls(config, CompletionNet(config) if config.has_weights else None, device,
                   precision, channels_last=channels_last, compile=compile,
                   cuda_graphs=cuda_graphs, backend=backend)

    @property
    def precision(self) -> str:
        """'fp32', 'fp16' or 'bf16' as it runs (CPU 'fp16' reads 'fp32'); settable."""
        return self._precision

    @precision.setter
    def precision(self, precision: str) -> None:
        precision = resolve_precision(precision, self.device, self.config.has_weights)
        if hasattr(self, '_requested_backend'):  # set after construction: backend may change
            self._select_backend(precision)
        self._precision = precision

    def _select_backend(self, precision: str) -> None:
        """Resolve the requested backend for `precision` (auto: onnxruntime in fp32 on the CPU,
        torch for bf16) and make the onnxruntime runner on first use."""
        self.backend = resolve_backend(self._requested_backend, self.device,
                                       self.model is not None, precision, self.channels_last,
                                       self.compile)
        if self.backend == 'onnxruntime' and self._onnx is None:
            self._onnx = onnx_backend.OnnxRunner(self._export, onnx_backend.model_digest(
                self.model, onnx_backend.config_json(self.config)))

    def warmup(self, height: int, width: int, iterations: int = 2, batch: int = 1) -> None:
        """Run `iterations` random frames of height x width (batches of `batch` frames, as
        `complete_batch` runs them) so that the first real frame is not slow (cuDNN, Triton
        and torch.compile compilation; CUDA graph capture)."""
        generator = torch.Generator(self.device).manual_seed(0)
        for _ in range(iterations):
            rgbs, sparses = [], []
            for _ in range(batch):
                rgbs.append(torch.randint(0, 256, (height, width, 3), dtype=torch.uint8,
                                          device=self.device, generator=generator))
                hits = torch.rand(height, width, device=self.device, generator=generator) < 0.05
                depth = 1 + 40 * torch.rand(height, width, device=self.device,
                                            generator=generator)
                sparses.append(torch.where(hits, depth, 0.0))
            self.complete_batch(rgbs, sparses)
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def release_graphs(self) -> None:
        """Drop the captured CUDA graphs and their memory (captured again when needed)."""
        if self._graphs is not None:
            self._graphs.clear()

    @property
    def steps(self) -> int | tuple[int, ...]:
        """Propagation steps: an int (cspn, nlspn) or the branch step counts (cspnpp); 0 for
        'classical'. Settable at run time; the weights do not depend on it."""
        return self.model.propagation.steps if self.model is not None else 0

    @steps.setter
    def steps(self, steps: int | tuple[int, ...]) -> None:
        if self.model is None:
            raise ValueError("the 'classical' completer has no propagation steps")
        current = self.model.propagation.steps
        counts = tuple(int(s) for s in steps) if isinstance(current, tuple) else (int(steps),)
        if isinstance(current, tuple) and len(counts) != len(current):
            raise ValueError(f'steps must give {len(current)} step counts, got {steps}')
        if not all(0 <= count <= 256 for count in counts):
            raise ValueError(f'steps must be in [0, 256], got {steps}')
        self.model.propagation.steps = counts if isinstance(current, tuple) else counts[0]

    def __call__(self, rgb: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """rgb (H,W,3) uint8, sparse (H,W) float32 m (0/NaN/inf = missing) -> (H,W) float32 m."""
        return self.complete(rgb, sparse).depth

    def complete(self, rgb: np.ndarray, sparse: np.ndarray) -> Completion:
        """rgb (H,W,3) uint8, sparse (H,W) float32 metres (0/NaN/inf = missing) -> Completion."""
        _check_inputs(rgb, sparse, np.ndarray, np.dtype(np.uint8), np.dtype(np.float32))
        if self.model is None:
            depth = classical_fill(_valid_depth(sparse), self.config.max_depth)
            return Completion(depth, (depth > 0).astype(np.float32), depth)
        outputs = self._run(_host_tensor(rgb).to(self.device), _host_tensor(sparse).to(self.device))
        return Completion(*(outputs[key][0, 0].cpu().numpy() for key in OUTPUTS))

    def complete_tensor(self, rgb_t: torch.Tensor,
                        sparse_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rgb_t (H,W,3) uint8, sparse_t (H,W) float32 metres, both on self.device ->
        (depth (H,W) float32 metres, confidence (H,W) float32), on self.device.

        No host round trip for the network; the classical baseline runs on the CPU.
        """
        _check_inputs(rgb_t, sparse_t, torch.Tensor, torch.uint8, torch.float32)
        for name, tensor in (('rgb_t', rgb_t), ('sparse_t', sparse_t)):
            if tensor.device != self.device:
                raise ValueError(f'{name} is on {tensor.device}, expected {self.device}')
        if self.model is None:
            depth = torch.from_numpy(classical_fill(_valid_depth(sparse_t.cpu().numpy()),
                                                    self.config.max_depth)).to(self.device)
            return depth, (depth > 0).float()
        outputs = self._run(rgb_t, sparse_t)
        return outputs['depth'][0, 0], outputs['confidence'][0, 0]

    def complete_batch(self, rgbs: list, sparses: list) -> list[tuple[Any, Any]]:
        """Frames of one size (several cameras) -> [(depth (H,W), confidence (H,W))], one per
        frame: rgbs (H,W,3) uint8 and sparses (H,W) float32 metres, all numpy (results numpy)
        or all tensors on self.device (results tensors there). The torch network completes
        them in one forward pass; the classical fill and the onnxruntime graph (exported at
        batch 1) one frame at a time. Equal to completing each frame alone."""
        on_host = isinstance(rgbs[0], np.ndarray)
        if self.model is None or self.backend == 'onnxruntime' or len(rgbs) == 1:
            if on_host:
                return [(c.depth, c.confidence) for c in map(self.complete, rgbs, sparses)]
            return [self.complete_tensor(rgb, sparse) for rgb, sparse in zip(rgbs, sparses)]
        array_type, rgb_dtype, sparse_dtype = ((np.ndarray, np.dtype(np.uint8),
                                                np.dtype(np.float32)) if on_host else
                                               (torch.Tensor, torch.uint8, torch.float32))
        for rgb, sparse in zip(rgbs, sparses):
            _check_inputs(rgb, sparse, array_type, rgb_dtype, sparse_dtype)
        if len({tuple(sparse.shape) for sparse in sparses}) > 1:
            raise ValueError(f'one batch takes frames of one size, got '
                             f'{sorted({tuple(sparse.shape) for sparse in sparses})}')
        if on_host:
            rgbs, sparses = [_host_tensor(a) for a in rgbs], [_host_tensor(a) for a in sparses]
        outputs = self._run(torch.stack(rgbs).to(self.device),
                            torch.stack(sparses).to(self.device))
        depth, confidence = outputs['depth'][:, 0], outputs['confidence'][:, 0]
        if on_host:
            depth, confidence = depth.cpu().numpy(), confidence.cpu().numpy()
        return list(zip(depth, confidence))

    def _run(self, rgb_t: torch.Tensor, sparse_t: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network on device tensors, one frame (H,W,3) / (H,W) or a batch (B,H,W,3) /
        (B,H,W); OUTPUTS as (B,1,H,W) float32, the depth bounded by the inputs around each
        pixel when config.input_bound > 0 (on a GPU inside the CUDA graph when enabled)."""
        with torch.inference_mode():
            if self.backend == 'onnxruntime':
                rgb, sparse = _network_inputs(rgb_t, sparse_t)
                return self._bounded(self._run_onnx(rgb, sparse), sparse)
            if self._graphs is None:
                return self._forward(rgb_t, sparse_t)
            return self._graphs(self._forward, rgb_t, sparse_t, key=(self.precision, self.steps))

    def _run_onnx(self, rgb: torch.Tensor, sparse: torch.Tensor) -> dict[str, torch.Tensor]:
        """rgb (1,3,H,W) [0, 1], sparse (1,1,H,W) m -> OUTPUTS: CompletionNet.predict as an
        onnxruntime graph between the depth scale and the propagation in torch."""
        from cspn_ros.export import PREDICT_OUTPUT_NAMES
        scale = self.model.depth_scale(sparse)
        predicted = self._onnx({'rgb': rgb.contiguous().numpy(), 'sparse': sparse.numpy(),
                                'scale': scale.numpy()})
        outputs = self.model.propagate(
            *(torch.from_numpy(predicted[name]) for name in PREDICT_OUTPUT_NAMES), sparse)
        return {key: outputs[key] for key in OUTPUTS}

    def _forward(self, rgb_t: torch.Tensor, sparse_t: torch.Tensor) -> dict[str, torch.Tensor]:
        """rgb_t ([B,]H,W,3) uint8, sparse_t ([B,]H,W) metres -> OUTPUTS (B,1,H,W): the
        network under autocast, then the input bound (`_bounded`)."""
        dtype = PRECISIONS[self.precision]
        autocast = (contextlib.nullcontext() if dtype is None
                    else torch.autocast(self.device.type, dtype=dtype))
        rgb, sparse = _network_inputs(rgb_t, sparse_t)
        with autocast:
            outputs = self._network(rgb, sparse)
        return self._bounded({key: outputs[key] for key in OUTPUTS}, sparse)

    def _bounded(self, outputs: dict[str, torch.Tensor], sparse: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
        """outputs with the depth bounded by the inputs of sparse (B,1,H,W) m around each pixel
        when config.input_bound > 0 (model/input_bound.py; no host synchronisation on a
        GPU)."""
        if self.config.input_bound > 0:
            outputs['depth'] = bound_by_inputs(outputs['depth'], sparse, self.config.input_bound)
        return outputs

    def _export(self, path, height: int, width: int):
        """The network before propagation as ONNX at (height, width) px (for OnnxRunner)."""
        from cspn_ros.export import to_onnx
        return to_onnx(self, path, height, width, propagation=False)


def _network_inputs(rgb_t: torch.Tensor, sparse_t: torch.Tensor):
    """rgb_t ([B,]H,W,3) uint8, sparse_t ([B,]H,W) metres -> the network's rgb (B,3,H,W) float
    in [0, 1] and sparse (B,1,H,W) metres with missing = 0 (B = 1 for one frame)."""
    if rgb_t.ndim == 3:
        rgb_t = rgb_t.unsqueeze(0)
    return rgb_t.permute(0, 3, 1, 2).float() / 255.0, _network_sparse(sparse_t)


def _network_sparse(sparse_t: torch.Tensor) -> torch.Tensor:
    """sparse_t ([B,]H,W) metres -> (B,1,H,W) metres with missing = 0 (B = 1 for one frame)."""
    if sparse_t.ndim == 2:
        sparse_t = sparse_t.unsqueeze(0)
    return _valid_depth(sparse_t).unsqueeze(1)


def _valid_depth(sparse):
    """Non-finite and non-positive depths -> 0 (missing); numpy or torch in, same type out."""
    if isinstance(sparse, torch.Tensor):
        return torch.where(torch.isfinite(sparse) & (sparse > 0), sparse, 0.0)
    return np.where(np.isfinite(sparse) & (sparse > 0), sparse, np.float32(0)).astype(np.float32)


def _check_inputs(rgb, sparse, array_type, rgb_dtype, sparse_dtype) -> None:
    """ValueError with a clear message unless rgb is (H,W,3) rgb_dtype and sparse (H,W)
    sparse_dtype of the same H, W."""
    for name, value in (('rgb', rgb), ('sparse', sparse)):
        if not isinstance(value, array_type):
            raise ValueError(f'{name} must be a {array_type.__module__}.{array_type.__name__}, '
                             f'got {type(value).__name__}')
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'rgb must have shape (H, W, 3), got {tuple(rgb.shape)}')
    if sparse.ndim != 2:
        raise ValueError(f'sparse must have shape (H, W), got {tuple(sparse.shape)}')
    if tuple(rgb.shape[:2]) != tuple(sparse.shape):
        raise ValueError(f'rgb is {tuple(rgb.shape[:2])} (H, W) but sparse is '
                         f'{tuple(sparse.shape)}; project the depth into the colour image first')
    if rgb.dtype != rgb_dtype:
        raise ValueError(f'rgb must be {rgb_dtype} (0-255), got {rgb.dtype}')
    if sparse.dtype != sparse_dtype:
        raise ValueError(f'sparse must be {sparse_dtype} metres, got {sparse.dtype}')


def _host_tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing `array`'s memory when it is contiguous and writable (message views are
    often read-only: those are copied once, since torch tensors cannot be read-only)."""
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, order='C', copy=True)
    return torch.from_numpy(array)
