"""Inference modes of DepthCompleter: precision, channels_last, torch.compile, CUDA graphs.

- precision 'fp32' | 'fp16' | 'bf16': autocast of the network (propagation stays float32).
  On the CPU 'fp16' is mapped to 'fp32' with a warning (the CPU has no fast fp16 kernels and the
  node should still start when device 'auto' falls back to the CPU); 'bf16' runs on the CPU.
  On a CUDA device without bf16 support, 'bf16' is a ValueError.
- channels_last: weights and activations in NHWC (faster tensor-core convolutions).
- compile: torch.compile of the network (compiles at the first frame of each size: call
  DepthCompleter.warmup at start). True = the default inductor backend; a string names another
  torch.compile backend (e.g. 'aot_eager', which the CPU tests use: inductor on the CPU takes
  about a minute per size to compile).
- cuda_graphs: the whole forward captured once per input shape (image size, batch size:
  a sweep that leaves with fewer cameras), precision and step count, and replayed; up to
  MAX_CUDA_GRAPHS captures are kept (least recently used dropped first), so batch sizes that
  alternate never capture again once each was seen. CUDA only: ignored with a warning on
  the CPU.
The classical baseline has no network: any mode other than the defaults is a ValueError.

'auto' (precision) and None (the boolean modes) pick the fastest numerically safe setting for
the device (choose_modes, FAST_CUDA_MODES): on CUDA reduced precision, channels_last,
torch.compile (where Triton is installed) and CUDA graphs; on the CPU none of them (the
onnxruntime backend is the fast path there). Explicit values are used as given.
"""
from __future__ import annotations

import collections
import dataclasses
import warnings
from typing import Callable, Hashable

import torch

#: Run-time precision -> autocast dtype (None = plain float32).
PRECISIONS = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
#: What 'auto' / None pick for a network on CUDA: the fastest modes whose error against fp32
#: stays within the bound stated in BENCHMARKS.md (bench/real_suite.py --precision measures it).
FAST_CUDA_MODES = {'precision': 'fp16', 'channels_last': True, 'compile': True,
                   'cuda_graphs': True}
#: ... and everywhere else (CPU, the classical baseline): plain fp32, eager.
PLAIN_MODES = {'precision': 'fp32', 'channels_last': False, 'compile': False,
               'cuda_graphs': False}


def choose_modes(device_type: str, has_network: bool, compile_available: bool,
                 precision: str = 'auto', channels_last: bool | None = None,
                 compile: bool | str | None = None,
                 cuda_graphs: bool | None = None) -> dict[str, bool | str]:
    """The inference modes to run with: each mode as given, or where it is 'auto' (precision) or
    None, FAST_CUDA_MODES for a network on a 'cuda' device (compile only when
    compile_available, i.e. Triton imports) and PLAIN_MODES otherwise. Pure: no device query."""
    fast = device_type == 'cuda' and has_network
    requested = {'precision': precision, 'channels_last': channels_last, 'compile': compile,
                 'cuda_graphs': cuda_graphs}
    chosen = {}
    for name, value in requested.items():
        if value is None or value == 'auto':
            value = (FAST_CUDA_MODES if fast and (name != 'compile' or compile_available)
                     else PLAIN_MODES)[name]
        chosen[name] = value
    return chosen


def compile_available() -> bool:
    """True when torch.compile's default (inductor) backend can build GPU kernels (Triton)."""
    from torch.utils._triton import has_triton
    return has_triton()
#: CUDA graphs a CudaGraphRunner keeps (each holds its own memory pool: the activations of one
#: forward at its shape), e.g. the full batch of a rig and a few partial ones.
MAX_CUDA_GRAPHS = 8


def resolve_precision(precision: str, device: torch.device, has_network: bool = True) -> str:
    """The precision that will run on `device`: `precision` ('auto': choose_modes's), or 'fp32'
    for 'fp16' on the CPU (with a warning). ValueError for unknown names, bf16 on a GPU without
    it, or any reduced precision for a completer without a network."""
    if precision == 'auto':
        precision = choose_modes(device.type, has_network, False)['precision']
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {(*PRECISIONS, "auto")}, got {precision!r}')
    if precision == 'fp32':
        return precision
    if not has_network:
        raise ValueError(f"precision {precision!r} needs a network; the 'classical' baseline "
                         "runs in fp32 on the CPU (use precision='fp32')")
    if device.type == 'cpu' and precision == 'fp16':
        warnings.warn("precision 'fp16' is not supported on the CPU: running fp32 instead "
                      "(use 'bf16' for reduced precision on the CPU)", stacklevel=3)
        return 'fp32'
    if (device.type == 'cuda' and precision == 'bf16'
            and not torch.cuda.is_bf16_supported(including_emulation=False)):
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"precision 'bf16' is not supported by {name}; use 'fp16' or 'fp32'")
    return precision


def resolve_modes(device: torch.device, has_network: bool, channels_last: bool,
                  compile: bool | str, cuda_graphs: bool) -> bool:
    """Check the boolean modes for `device`; returns cuda_graphs as it will run (False on the
    CPU, with a warning). ValueError for non-bool values or modes on a completer without a
    network."""
    modes = {'channels_last': channels_last, 'compile': compile, 'cuda_graphs': cuda_graphs}
    for name, value in modes.items():
        if not isinstance(value, bool) and not (name == 'compile' and isinstance(value, str)):
            raise ValueError(f'{name} must be True or False, got {value!r}')
    if isinstance(compile, str) and compile not in torch._dynamo.list_backends(exclude_tags=()):
        raise ValueError(f'compile backend {compile!r} is not one of '
                         f'{torch._dynamo.list_backends(exclude_tags=())}')
    if not has_network and any(modes.values()):
        raise ValueError("the 'classical' baseline has no network: channels_last, compile and "
                         'cuda_graphs do not apply to it')
    if cuda_graphs and device.type != 'cuda':
        warnings.warn(f'cuda_graphs needs a CUDA device; ignored on {device}', stacklevel=3)
        return False
    return cuda_graphs


@dataclasses.dataclass
class CapturedForward:
    """A forward recorded on static buffers: `replay()` recomputes `outputs` from whatever
    `inputs` hold (both keep their storage from one replay to the next)."""

    inputs: tuple[torch.Tensor, ...]
    outputs: dict[str, torch.Tensor]
    replay: Callable[[], None]


def capture_cuda_graph(forward: Callable[..., dict[str, torch.Tensor]],
                       inputs: tuple[torch.Tensor, ...], warmup_runs: int = 2
                       ) -> CapturedForward:
    """`forward(*inputs)` captured in a torch.cuda.CUDAGraph on clones of the CUDA `inputs`,
    after warmup_runs runs on a side stream (as torch.cuda.graphs requires: lazy
    initialisation, cuDNN algorithm choice, Triton and torch.compile compilation happen
    outside the capture). The graph keeps its own memory pool until it is dropped."""
    static_inputs = tuple(t.clone() for t in inputs)
    side = torch.cuda.Stream(device=static_inputs[0].device)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_runs):
            forward(*static_inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = forward(*static_inputs)
    return CapturedForward(static_inputs, outputs, graph.replay)


class CudaGraphRunner:
    """Replays `forward(*inputs) -> dict of tensors` from CUDA graphs, one per signature.

    A signature is the inputs' shapes/dtypes/devices plus `key` (precision, steps). The first
    call with a signature captures its graph (`capture`, default capture_cuda_graph); later
    calls replay it. At most max_graphs are kept: capturing one more drops the least recently
    used first (its memory pool is freed). Each call copies the inputs into the graph's static
    buffers and returns clones of its outputs, so results stay valid after the next call.
    `forward` must not synchronise with the host (no .item(), no data-dependent Python control
    flow). `captures` counts the captures made, `len(runner)` the graphs kept.
    """

    def __init__(self, max_graphs: int = MAX_CUDA_GRAPHS,
                 capture: Callable[[Callable[..., dict[str, torch.Tensor]],
                                    tuple[torch.Tensor, ...]], CapturedForward]
                 = capture_cuda_graph) -> None:
        if max_graphs < 1:
            raise ValueError(f'max_graphs must be >= 1, got {max_graphs}')
        self.max_graphs = int(max_graphs)
        self.captures = 0
        self._capture = capture
        self._graphs: collections.OrderedDict[Hashable, CapturedForward] = (
            collections.OrderedDict())

    def __len__(self) -> int:
        return len(self._graphs)

    def __call__(self, forward: Callable[..., dict[str, torch.Tensor]],
                 *inputs: torch.Tensor, key: Hashable = None) -> dict[str, torch.Tensor]:
        signature = (key, tuple((t.shape, t.dtype, t.device) for t in inputs))
        captured = self._graphs.get(signature)
        if captured is None:
            while len(self._graphs) >= self.max_graphs:  # free the pool before capturing anew
                self._graphs.popitem(last=False)
            captured = self._capture(forward, inputs)
            self.captures += 1
            self._graphs[signature] = captured
        self._graphs.move_to_end(signature)
        for static, value in zip(captured.inputs, inputs):
            static.copy_(value)
        captured.replay()
        return {name: value.clone() for name, value in captured.outputs.items()}

    def clear(self) -> None:
        """Drop every graph (and its memory pool)."""
        self._graphs.clear()
