"""CPU-side tests of the fused-propagation dispatch (CI has no GPU and no Triton).

The kernels themselves are checked on a GPU by bench/gpu_check_propagation.py.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import cspn_loop_reference

from cspn_ros.config import ModelConfig
from cspn_ros.model.propagation import cspn, fused, nlspn


def random_case(kernel_size=3, batch=2, height=9, width=13, seed=None):
    generator = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2 ** 31)
    init = 1 + 10 * torch.rand(batch, 1, height, width, generator=generator)
    pick = torch.rand(batch, 1, height, width, generator=generator) < 0.2
    sparse = torch.where(pick, 1 + 10 * torch.rand(batch, 1, height, width, generator=generator),
                         torch.zeros(()))
    raw = torch.randn(batch, kernel_size ** 2 - 1, height, width, generator=generator)
    return init, cspn.normalize_affinity(raw), sparse


#: Checks of a machine where the fused path cannot run (CI); on a CUDA machine with Triton the
#: dispatch rightly imports Triton and uses the shared-memory kernel.
cpu_machine_only = pytest.mark.skipif(torch.cuda.is_available(),
                                      reason='checks the machine without CUDA (CI)')


@cpu_machine_only
def test_unavailable_without_cuda_or_triton():
    """Without CUDA nothing may claim the fused path."""
    assert fused.available() is False
    init, affinity, sparse = random_case()
    assert not fused.can_fuse(init, affinity, sparse)


@cpu_machine_only
def test_importing_never_needs_triton():
    """Importing the dispatch (and the model package) must not import triton."""
    code = ('import sys; import cspn_ros.model.propagation.fused as f; '
            'import cspn_ros.model.propagation.cspn, cspn_ros.model.propagation.cspnpp, '
            'cspn_ros.model.propagation.nlspn; '
            'f.available(); print("triton" in sys.modules)')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == 'False'


@cpu_machine_only
def test_a_cpu_forward_never_imports_torch_dynamo():
    """Where the fused path cannot run, nothing is wrapped for torch.compile: importing
    torch._dynamo takes ~1.6 s on this machine, which the node's first frame paid (and the
    frames queued behind it) when fused.py wrapped its launchers at import."""
    code = ('import sys, numpy as np; from cspn_ros.model.completer import DepthCompleter; '
            "c = DepthCompleter.from_config({'width': 8, 'steps': 2}, device='cpu'); "
            'c(np.zeros((32, 48, 3), np.uint8), np.ones((32, 48), np.float32)); '
            'import cspn_ros.model.propagation.fused; '
            'print("torch._dynamo" in sys.modules)')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip().splitlines()[-1] == 'False'


@pytest.mark.parametrize('kernel_size,preserve', [(3, True), (3, False), (5, True)])
def test_cpu_path_is_the_reference_and_matches_a_loop(kernel_size, preserve):
    init, affinity, sparse = random_case(kernel_size, batch=1, height=6, width=7)
    mask = sparse > 0 if preserve else None
    out = fused.cspn_propagate(init, affinity, mask, sparse, 3)
    assert torch.equal(out, cspn.cspn_propagate(init, affinity, mask, sparse, 3))
    expected = cspn_loop_reference(init, affinity, sparse, 3, kernel_size, preserve)
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_propagate_at_matches_separate_runs_in_the_order_asked():
    init, affinity, sparse = random_case()
    mask = sparse > 0
    counts = [5, 0, 2, 5]
    outs = fused.cspn_propagate_at(init, affinity, mask, sparse, counts)
    assert len(outs) == len(counts)
    for count, out in zip(counts, outs):
        assert torch.equal(out, cspn.cspn_propagate(init, affinity, mask, sparse, count))
    with pytest.raises(ValueError):
        fused.cspn_propagate_at(init, affinity, mask, sparse, [-1])


def test_nlspn_cpu_path_matches_the_module_loop():
    config = ModelConfig(propagation='nlspn', steps=3)
    module = nlspn.NLSPNPropagation(config)
    batch, height, width, count = 1, 7, 9, config.nlspn_neighbors
    init, _, sparse = random_case(batch=batch, height=height, width=width)
    grid = module.sampling_grid(torch.randn(batch, count, 2, height, width))
    affinity = module.affinities(torch.randn(batch, count, height, width), grid, None)
    mask = sparse > 0
    out = fused.nlspn_propagate(init, affinity, grid, mask, sparse, 3)
    depth = init
    for _ in range(3):
        sampled = nlspn.sample_neighbours(depth, grid)
        depth = (1 - affinity.sum(1, keepdim=True)) * depth + (affinity * sampled).sum(1, keepdim=True)
        depth = torch.where(mask, sparse, depth)
    assert torch.allclose(out, depth, rtol=1e-6, atol=1e-6)


def test_reference_backward_matches_autograd_through_the_reference():
    """The autograd fallback (fused forward, reference backward) gives the reference's grads.

    On CPU the forward is the reference too, so the Function is driven directly with a
    stand-in 'fused' forward that is the reference: the backward path is what is tested.
    """
    init, affinity, sparse = random_case(batch=1, height=6, width=8)
    mask = sparse > 0
    reference = lambda i, a, m, s: fused._cspn_reference_at(i, a, m, s, [4])  # noqa: E731
    grads = []
    for through_function in (True, False):
        leaf_init = init.clone().requires_grad_()
        leaf_affinity = affinity.clone().requires_grad_()
        if through_function:
            (out,) = fused._ReferenceBackward.apply(reference, reference, leaf_init,
                                                    leaf_affinity, mask, sparse)
        else:
            (out,) = reference(leaf_init, leaf_affinity, mask, sparse)
        weights = torch.rand(out.shape, generator=torch.Generator().manual_seed(3))
        (out * weights).sum().backward()
        grads.append((leaf_init.grad, leaf_affinity.grad))
    for got, want in zip(*grads):
        assert got is not None and torch.allclose(got, want, rtol=1e-6, atol=1e-7)
        assert got.abs().sum() > 0


def test_float64_and_export_fall_back(monkeypatch):
    """Inputs the kernels do not take (float64), or an ONNX export, use the reference."""
    monkeypatch.setattr(fused, 'available', lambda: True)
    init, affinity, sparse = random_case()
    assert not fused.can_fuse(init.double())  # CPU tensors are never fused
    monkeypatch.setattr(torch.Tensor, 'is_cuda', property(lambda self: True))
    assert fused.can_fuse(init, affinity.half(), None)
    assert not fused.can_fuse(init.double())
    monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: True)
    assert not fused.can_fuse(init)


def test_default_launches_leave_a_tile():
    for kernel_size, launch in fused.DEFAULT_LAUNCH.items():
        for size in (launch.region_height, launch.region_width):
            assert size - 2 * launch.halo(kernel_size) > 0
            assert size & (size - 1) == 0  # Triton blocks are powers of two
    shared = fused.DEFAULT_SHARED_LAUNCH
    assert fused.SharedLaunch(*dataclasses.astuple(shared)) == shared  # passes its own checks
    assert shared.region_height - 2 * shared.halo(3) > 0


@pytest.mark.parametrize('fields', [
    (8, 64, 48, 4, 2, 16),   # region width not a power of two
    (8, 64, 64, 4, 4, 16),   # four column warps of 32 threads are wider than the region
    (8, 32, 64, 4, 2, 16),   # eight row warps of 4 rows fill 32 rows: no second half
    (32, 64, 64, 4, 2, 16),  # the halo eats the region
])
def test_shared_launch_rejects_tilings_the_kernel_cannot_take(fields):
    with pytest.raises(ValueError):
        fused.SharedLaunch(*fields)


@cpu_machine_only
def test_without_the_shared_kernel_the_3x3_default_is_the_global_memory_kernel():
    assert not fused.shared_kernel_available()  # CPU-only here
    assert fused.default_launch(3) == fused.DEFAULT_LAUNCH[3]
    assert fused.default_launch(5) == fused.DEFAULT_LAUNCH[5]


def test_mask_bytes_are_the_mask_as_uint8_without_a_copy():
    init, _, sparse = random_case()
    mask = sparse > 0
    as_bytes = fused._mask_bytes(mask, init)
    assert as_bytes.dtype == torch.uint8 and torch.equal(as_bytes.bool(), mask)
    assert as_bytes.data_ptr() == mask.data_ptr()
    strided = fused._mask_bytes(mask.transpose(2, 3).contiguous().transpose(2, 3), init)
    assert torch.equal(strided.bool(), mask) and strided.is_contiguous()
