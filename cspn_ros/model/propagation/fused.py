"""Fused GPU propagation loops (Triton), with the plain-torch references as the fallback.

Each public function computes exactly what its reference loop computes (`cspn.cspn_propagate`,
the branch loop of `cspnpp.py`, the step loop of `nlspn.py`): on CUDA tensors with Triton
installed it runs the fused kernels of `fused_kernels.py` (and, for the 3x3 CSPN on NVIDIA GPUs
with Triton's Gluon dialect, `fused_shared_kernels.py`), elsewhere (CPU, no Triton, ONNX
export, float64) the reference. Where gradients are needed the forward is fused and the
backward recomputes the reference loop under autograd (a documented fallback, not a kernel).

Triton is imported lazily: importing this module never needs it.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import torch

from cspn_ros.model.propagation.cspn import cspn_propagate_at as _cspn_reference_at
from cspn_ros.model.propagation.nlspn import sample_neighbours

#: Input dtypes the kernels read (they compute and return float32).
FUSED_DTYPES = (torch.float16, torch.float32)


@dataclasses.dataclass(frozen=True)
class LocalLaunch:
    """Tiling of the local (K x K) kernel: steps fused per launch, region size, warps.

    The region is REG_H x REG_W pixels (powers of two) of which the inner
    (REG - 2 * steps_per_launch * (K // 2)) are written; weights_resident keeps the region's
    weights in registers (3x3 only).
    """

    steps_per_launch: int
    region_height: int
    region_width: int
    num_warps: int
    weights_resident: bool

    def halo(self, kernel_size: int) -> int:
        return self.steps_per_launch * (kernel_size // 2)


@dataclasses.dataclass(frozen=True)
class SharedLaunch:
    """Tiling of the 3x3 shared-memory kernel (`fused_shared_kernels.cspn3_shared_kernel`).

    steps_per_launch steps per launch over a region_height x region_width region (powers of
    two) whose inner (region - 2 * steps_per_launch) pixels are written; num_warps warps,
    column_warps of them side by side, each thread holding rows_per_thread pixels of a column
    per repeat. programmatic: on sm_90+, launch as programmatic dependent launches, so that a
    launch reads and folds its weights while the previous one finishes. Raises ValueError for
    a tiling the kernel cannot take.
    """

    steps_per_launch: int
    region_height: int
    region_width: int
    rows_per_thread: int
    column_warps: int
    num_warps: int
    programmatic: bool = True

    def __post_init__(self) -> None:
        sizes = (self.region_height, self.region_width, self.rows_per_thread, self.column_warps,
                 self.num_warps)
        row_warps = self.num_warps // max(self.column_warps, 1)
        if (any(v < 1 or v & (v - 1) for v in sizes) or row_warps < 1
                or self.region_width % (32 * self.column_warps)
                or self.region_height % (2 * self.rows_per_thread * row_warps)
                or 2 * (self.region_width + 1) > self.region_height * self.region_width
                or min(self.region_height, self.region_width) <= 2 * self.steps_per_launch
                or self.steps_per_launch < 1):
            raise ValueError(f'{self} is not a tiling the shared-memory kernel takes')

    def halo(self, kernel_size: int) -> int:
        return self.steps_per_launch * (kernel_size // 2)


#: Per kernel size, chosen with bench/bench_propagation.py (see docs/kernels.md); the 3x3
#: entry is the fallback where the shared-memory kernel is unavailable.
DEFAULT_LAUNCH = {
    3: LocalLaunch(8, 64, 64, 16, True),
    5: LocalLaunch(3, 32, 64, 8, False),
    7: LocalLaunch(2, 32, 64, 8, False),
}

#: The 3x3 default where `shared_kernel_available()`.
DEFAULT_SHARED_LAUNCH = SharedLaunch(8, 64, 64, 4, 2, 16)


_AVAILABLE: bool | None = None  # decided once per process by available()
_SHARED_AVAILABLE: bool | None = None  # decided once per process by shared_kernel_available()
#: launch(grid, stream, *args) of the compiled shared-memory kernel by (constants, device, input
#: dtypes). The kernel does not specialise on argument values or alignment: one compilation
#: serves all calls alike.
_SHARED_LAUNCHERS: dict = {}


def available() -> bool:
    """True when Triton imports and a CUDA device is present (a plain module-level cache, which
    torch.compile traces without complaint, unlike functools.cache)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            import triton  # noqa: F401
            _AVAILABLE = torch.cuda.is_available()
        except ImportError:
            _AVAILABLE = False
    return _AVAILABLE


def shared_kernel_available() -> bool:
    """True when the 3x3 shared-memory kernel runs here: available(), an NVIDIA GPU (its
    layouts assume 32-thread warps) and a Triton with the Gluon dialect it is written in."""
    global _SHARED_AVAILABLE
    if _SHARED_AVAILABLE is None:
        _SHARED_AVAILABLE = False
        if available() and torch.version.hip is None:
            try:
                from cspn_ros.model.propagation import fused_shared_kernels  # noqa: F401
                _SHARED_AVAILABLE = True
            except (ImportError, AttributeError):
                pass
    return _SHARED_AVAILABLE


def _left_out_of_compile(function: Callable) -> Callable:
    """function, left out of torch.compile graphs where it can run (`available()`): it launches
    Triton kernels through Triton's own machinery, which Inductor cannot follow (it failed to
    lower the mask's bool -> uint8 view). Elsewhere the function is never called and is left
    as it is, so that importing this module does not import torch._dynamo (1.6 s on a 2-core
    CPU, paid by the first frame of a node that imports this module on its first forward)."""
    return torch.compiler.disable(function) if available() else function


def default_launch(kernel_size: int) -> LocalLaunch | SharedLaunch:
    """The tiling `cspn_propagate_at` uses for this window size when given none."""
    if kernel_size == 3 and shared_kernel_available():
        return DEFAULT_SHARED_LAUNCH
    return DEFAULT_LAUNCH.get(kernel_size) or LocalLaunch(1, 32, 64, 8, False)


def can_fuse(*tensors: torch.Tensor | None) -> bool:
    """True when the fused kernels can take these tensors (None entries are ignored)."""
    if not available() or torch.onnx.is_in_onnx_export() or torch.jit.is_scripting():
        return False
    return all(t.is_cuda and t.dtype in FUSED_DTYPES for t in tensors if t is not None)


def cspn_propagate(init: torch.Tensor, affinity: torch.Tensor, sparse_mask: torch.Tensor | None,
                   sparse: torch.Tensor, steps: int,
                   launch: LocalLaunch | SharedLaunch | None = None) -> torch.Tensor:
    """Drop-in for `cspn.cspn_propagate` (same arguments, same result); fused where possible.

    init, sparse (B,1,H,W) metres; affinity (B,k*k-1,H,W) normalised; sparse_mask (B,1,H,W)
    bool or None. Returns (B,1,H,W) float32 (the reference's dtype on the fallback path).
    """
    return cspn_propagate_at(init, affinity, sparse_mask, sparse, [steps], launch)[0]


def cspn_propagate_at(init: torch.Tensor, affinity: torch.Tensor,
                      sparse_mask: torch.Tensor | None, sparse: torch.Tensor,
                      counts: Sequence[int],
                      launch: LocalLaunch | SharedLaunch | None = None) -> list[torch.Tensor]:
    """CSPN depths after each of `counts` steps (one run of max(counts) steps): a CSPN++ branch.

    Same math and arguments as `cspn.cspn_propagate`; counts in any order, results in that
    order. Each result is (B,1,H,W). launch: the kernel tiling (default_launch(k) if None; a
    SharedLaunch is for the 3x3 window where shared_kernel_available()).
    """
    counts = [int(c) for c in counts]
    if min(counts, default=0) < 0:
        raise ValueError(f'step counts must be >= 0, got {counts}')
    if not can_fuse(init, affinity, sparse):
        return _cspn_reference_at(init, affinity, sparse_mask, sparse, counts)
    run = functools.partial(_cspn_fused_at, counts=counts, launch=launch)
    reference = functools.partial(_cspn_reference_at, counts=counts)
    return list(_run_with_reference_backward(run, reference, init, affinity, sparse_mask, sparse))


def nlspn_propagate(init: torch.Tensor, affinity: torch.Tensor, grid: torch.Tensor,
                    sparse_mask: torch.Tensor | None, sparse: torch.Tensor,
                    steps: int) -> torch.Tensor:
    """The NLSPN step loop of `nlspn.NLSPNPropagation.forward`; fused where possible.

    init, sparse (B,1,H,W) metres; affinity (B,N,H,W) normalised neighbour weights; grid
    (B,N*H,W,2) from `NLSPNPropagation.sampling_grid`; sparse_mask (B,1,H,W) bool (put back
    after every step, not before the first) or None. Returns (B,1,H,W) float32.
    """
    if not can_fuse(init, affinity, grid, sparse):
        return _nlspn_reference(init, affinity, grid, sparse_mask, sparse, steps)
    run = functools.partial(_nlspn_fused, steps=steps)
    reference = functools.partial(_nlspn_reference, steps=steps)
    return _run_with_reference_backward(
        lambda *args: (run(*args),), lambda *args: (reference(*args),),
        init, affinity, grid, sparse_mask, sparse)[0]


# ---------------------------------------------------------------------------------------------
# References (the teammates' math, arranged to the fused functions' signatures)

def _nlspn_reference(init, affinity, grid, sparse_mask, sparse, steps):
    centre = 1 - affinity.sum(dim=1, keepdim=True)
    depth = init
    for _ in range(steps):
        depth = centre * depth + (affinity * sample_neighbours(depth, grid)).sum(dim=1, keepdim=True)
        if sparse_mask is not None:
            depth = torch.where(sparse_mask, sparse, depth)
    return depth


# ---------------------------------------------------------------------------------------------
# Autograd: fused forward, reference backward

class _ReferenceBackward(torch.autograd.Function):
    """Forward with `fused`, backward by re-running `reference` under autograd."""

    @staticmethod
    def forward(ctx, fused: Callable, reference: Callable, *inputs):
        ctx.reference = reference
        ctx.save_for_backward(*inputs)
        return tuple(fused(*inputs))

    @staticmethod
    def backward(ctx, *output_grads):
        inputs = ctx.saved_tensors
        wanted = [i for i, t in enumerate(inputs) if ctx.needs_input_grad[i + 2]]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(i in wanted) if t is not None else None
                      for i, t in enumerate(inputs)]
            outputs = ctx.reference(*leaves)
            pairs = [(o, g) for o, g in zip(outputs, output_grads) if g is not None]
            grads = torch.autograd.grad([o for o, _ in pairs], [leaves[i] for i in wanted],
                                        [g for _, g in pairs], allow_unused=True)
        result = [None] * len(inputs)
        for index, grad in zip(wanted, grads):
            result[index] = grad
        return (None, None, *result)


def _run_with_reference_backward(fused, reference, *inputs):
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _ReferenceBackward.apply(fused, reference, *inputs)
    return tuple(fused(*inputs))


# ---------------------------------------------------------------------------------------------
# Launchers

def _planes(tensor: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> contiguous, as the kernels index it."""
    return tensor.contiguous()


def _mask_bytes(sparse_mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if sparse_mask is None:
        return like  # never read (REPLACE is off)
    mask = sparse_mask if sparse_mask.shape == like.shape else sparse_mask.expand_as(like)
    if mask.dtype == torch.bool and mask.is_contiguous():
        return mask.view(torch.uint8)  # the same bytes, 0/1, no copy
    return mask.to(torch.uint8).contiguous()


def _replaced(depth, sparse_mask, sparse):
    return depth if sparse_mask is None else torch.where(sparse_mask, sparse, depth)


@_left_out_of_compile
def _cspn_fused_at(init, affinity, sparse_mask, sparse, counts, launch):
    batch, neighbours, height, width = affinity.shape
    kernel_size = round((neighbours + 1) ** 0.5)
    launch = launch or default_launch(kernel_size)
    start = _planes(init)
    affinity, sparse = _planes(affinity), _planes(sparse)
    mask = _mask_bytes(sparse_mask, start)
    if isinstance(launch, SharedLaunch):
        advance = _shared_stepper(launch, kernel_size, start, affinity, sparse, mask,
                                  sparse_mask is not None)
    else:
        advance = _local_stepper(launch, kernel_size, start, affinity, sparse, mask,
                                 sparse_mask is not None)
    results, depth, done = {}, start, 0
    for count in sorted(set(counts)):
        while done < count:
            steps = min(launch.steps_per_launch, count - done)
            out = torch.empty(start.shape, device=start.device, dtype=torch.float32)
            advance(depth, out, steps)
            depth, done = out, done + steps
        results[count] = depth if done else _replaced(start, sparse_mask, sparse).float()
    return [results[c] for c in counts]


def _local_stepper(launch, kernel_size, start, affinity, sparse, mask, replace):
    """advance(depth, out, steps) running `fused_kernels.local_steps_kernel`."""
    from cspn_ros.model.propagation import fused_kernels

    batch, _, height, width = affinity.shape
    halo = launch.halo(kernel_size)
    tile_h, tile_w = launch.region_height - 2 * halo, launch.region_width - 2 * halo
    if tile_h <= 0 or tile_w <= 0:
        raise ValueError(f'{launch} leaves no tile for a {kernel_size}x{kernel_size} kernel')
    if launch.weights_resident and kernel_size != 3:
        raise ValueError('weights_resident is for the 3x3 kernel only')
    grid = (_cdiv(width, tile_w), _cdiv(height, tile_h), batch)
    block = launch.region_height * launch.region_width
    scratch = torch.empty(grid[0] * grid[1] * batch * 2 * block, device=start.device,
                          dtype=torch.float32)

    def advance(depth, out, steps):
        fused_kernels.local_steps_kernel[grid](
            depth, start, affinity, sparse, mask, out, scratch, height, width, steps,
            K=kernel_size, HALO=halo, REG_H=launch.region_height, REG_W=launch.region_width,
            WEIGHTS_RESIDENT=launch.weights_resident, REPLACE=replace,
            num_warps=launch.num_warps)
    return advance


def _shared_stepper(launch, kernel_size, start, affinity, sparse, mask, replace):
    """advance(depth, out, steps) running `fused_shared_kernels.cspn3_shared_kernel`; launches
    after the first of a stepper are chained (their depth is the previous launch's output)."""
    from cspn_ros.model.propagation import fused_shared_kernels

    if kernel_size != 3:
        raise ValueError('the shared-memory kernel is for the 3x3 window only')
    batch, _, height, width = affinity.shape
    halo = launch.halo(kernel_size)
    grid = (_cdiv(width, launch.region_width - 2 * halo),
            _cdiv(height, launch.region_height - 2 * halo), batch)
    pdl = launch.programmatic and _compute_capability(start.device) >= (9, 0)
    stream = None  # fetched at the first relaunch, then kept for the call's other launches
    chained = False

    def advance(depth, out, steps):
        nonlocal chained, stream
        args = (depth, start, affinity, sparse, mask, out, height, width, steps)
        constants = (halo, launch.region_height, launch.region_width, launch.rows_per_thread,
                     launch.column_warps, replace, chained, pdl, launch.num_warps)
        key = (constants, start.device, *(t.dtype for t in args[:5]))
        relaunch = _SHARED_LAUNCHERS.get(key)
        if relaunch is None:  # the JIT compiles (or loads) it; its run returns the kernel
            names = ('HALO', 'REG_H', 'REG_W', 'ROWS_PER_THREAD', 'COLUMN_WARPS', 'REPLACE',
                     'CHAINED', 'PDL', 'NUM_WARPS')
            kernel = fused_shared_kernels.cspn3_shared_kernel[grid](
                *args, **dict(zip(names, constants)), num_warps=launch.num_warps,
                launch_pdl=pdl)
            _SHARED_LAUNCHERS[key] = _direct_launcher(kernel) or _runner_launcher(kernel)
        else:  # relaunch the compiled kernel: the JIT's per-call argument binding costs ~10 us
            if stream is None:
                stream = _current_stream(start.device)
            relaunch(grid, stream, *args, *constants)
        chained = True
    return advance


def _current_stream(device: torch.device) -> int:
    """The raw CUDA stream handle a launch on `device` goes to now (Triton's own look-up)."""
    from triton.runtime.driver import driver
    return driver.active.get_current_stream(device.index)


def _runner_launcher(compiled) -> Callable:
    """launch(grid, stream, *args) through the compiled kernel's public runner."""
    return lambda grid, stream, *args: compiled[grid](*args, stream=stream)


def _direct_launcher(compiled) -> Callable | None:
    """launch(grid, stream, *args) straight into a compiled Triton kernel's C launcher: what
    `compiled[grid](*args, stream=stream)` does, minus the runner's per-call Python (launch-hook
    chains, launch metadata, scratch checks; a few us a launch, three launches a 24-step call).
    None where the launcher is not the one this is written for (Triton 3.4-3.6 CUDA: no hooks
    set, no scratch memory, one CTA per cluster); the caller then uses `_runner_launcher`.
    Launch hooks (profilers) set after the first launch are not called."""
    try:
        from triton import knobs
        hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    except (ImportError, AttributeError):
        return None
    run = compiled.run  # loads the module on first use
    launch = getattr(run, 'launch', None)
    if (launch is None or any(getattr(hook, 'calls', hook) for hook in hooks)
            or getattr(run, 'global_scratch_size', 1) or getattr(run, 'profile_scratch_size', 1)
            or getattr(run, 'num_ctas', 0) != 1):
        return None
    function, metadata = compiled.function, compiled.packed_metadata
    cooperative, programmatic = run.launch_cooperative_grid, run.launch_pdl

    def direct(grid, stream, *args):
        launch(grid[0], grid[1], grid[2], stream, function, cooperative, programmatic,
               None, None, metadata, None, None, None, *args)
    return direct


@functools.cache
def _compute_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


@_left_out_of_compile
def _nlspn_fused(init, affinity, grid, sparse_mask, sparse, steps, block=256, num_warps=4):
    from cspn_ros.model.propagation import fused_kernels

    batch, count, height, width = affinity.shape
    depth = _planes(init)
    affinity, grid, sparse = _planes(affinity), _planes(grid), _planes(sparse)
    mask = _mask_bytes(sparse_mask, depth)
    launch_grid = (_cdiv(height * width, block), batch)
    buffers = [torch.empty(depth.shape, device=depth.device, dtype=torch.float32)
               for _ in range(min(steps, 2))]
    for step in range(steps):
        out = buffers[step % 2]
        fused_kernels.nonlocal_step_kernel[launch_grid](
            depth, affinity, grid, sparse, mask, out, height, width, N=count,
            N_PAD=_next_power_of_two(count), BLOCK=block, REPLACE=sparse_mask is not None,
            num_warps=num_warps)
        depth = out
    return depth.float()


def _cdiv(total: int, part: int) -> int:
    return -(-total // part)


def _next_power_of_two(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())
