"""Check the fused propagation kernels against the torch references on a CUDA GPU.

Fresh random inputs (never zeros) at several sizes, odd ones included; references run in float64
on the same (rounded) inputs; relative error ||out - ref|| / ||ref|| within float32 / float16
tolerances; outputs land in memory poisoned with NaN first, so an unwritten pixel fails.
Also checks that gradients through the fused path equal the reference's.

    python3 bench/gpu_check_propagation.py [--json OUT.json]    (exit status 1 on any failure)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cspn_ros.config import ModelConfig  # noqa: E402
from cspn_ros.model.propagation import cspn, fused, nlspn  # noqa: E402
from cspn_ros.model.propagation.cspnpp import CSPNPlusPlusPropagation  # noqa: E402
from cspn_ros.model.propagation.fused import SharedLaunch  # noqa: E402

TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-5}  # both compute in float32; see docs
SIZES = [(1, 352, 1216), (1, 480, 640), (2, 37, 91), (1, 101, 257), (3, 5, 7)]


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def poison_allocator(shape, device) -> None:
    """Fill freed blocks of this size with NaN so outputs allocated next start as NaN."""
    blocks = [torch.full(shape, float('nan'), device=device) for _ in range(8)]
    del blocks


def random_inputs(batch, height, width, channels, device, generator):
    def rand(*shape):
        return torch.rand(*shape, device=device, generator=generator)
    init = 0.5 + 20 * rand(batch, 1, height, width)
    sparse = torch.where(rand(batch, 1, height, width) < 0.05, 0.5 + 20 * rand(batch, 1, height, width),
                         torch.zeros((), device=device))
    guidance = torch.randn(batch, channels, height, width, device=device, generator=generator)
    return init, guidance, sparse


def local_launches(kernel_size):
    """Tilings checked per window size: the default, and for 3x3 also the global-memory
    kernel's (the fallback) and shared-memory tilings of every thread arrangement."""
    if kernel_size != 3:
        return [None]
    launches = [None, fused.DEFAULT_LAUNCH[3]]
    if fused.shared_kernel_available():
        launches += [SharedLaunch(*c) for c in [(8, 64, 64, 1, 1, 16), (5, 64, 64, 8, 2, 8)]]
    return launches


def label(launch) -> str:
    """Short name of a tiling: its class and field values."""
    values = ','.join(str(int(v)) for v in dataclasses.astuple(launch))
    return f'{type(launch).__name__}({values})'


def check_local(device, generator, results) -> None:
    for batch, height, width in SIZES:
        for kernel_size in (3, 5, 7):
            counts = [3, 24] if kernel_size == 3 else [6, 12, 24]
            if kernel_size > 3 and height * width > 500_000:
                counts = [6, 12]
            init, guidance, sparse = random_inputs(batch, height, width, kernel_size ** 2 - 1,
                                                   device, generator)
            affinity = cspn.normalize_affinity(guidance)
            for dtype in (torch.float32, torch.float16):
                for preserve in (True, False):
                    inputs = [t.to(dtype) for t in (init, affinity, sparse)]
                    mask = inputs[2] > 0 if preserve else None
                    refs = [cspn.cspn_propagate(inputs[0].double(), inputs[1].double(), mask,
                                                inputs[2].double(), c) for c in counts]
                    for launch in local_launches(kernel_size):
                        name = label(launch or fused.default_launch(kernel_size))
                        poison_allocator(init.shape, device)
                        outs = fused.cspn_propagate_at(inputs[0], inputs[1], mask, inputs[2],
                                                       counts, launch)
                        torch.cuda.synchronize()
                        for count, out, ref in zip(counts, outs, refs):
                            error = relative_error(out, ref)
                            ok = bool(torch.isfinite(out).all()) and error < TOLERANCE[dtype]
                            if preserve:
                                ok = ok and bool((out[mask] == inputs[2][mask].float()).all())
                            results.append(dict(kernel='local', k=kernel_size, steps=count,
                                                size=[batch, height, width], dtype=str(dtype),
                                                preserve=preserve, launch=name,
                                                rel_error=error, ok=ok))


def check_cspnpp_module(device, generator, results) -> None:
    """CSPN++ module on float32 CUDA (fused branches) against float64 (reference branches)."""
    config = ModelConfig(propagation='cspnpp')
    module = CSPNPlusPlusPropagation(config)
    for batch, height, width in ((1, 96, 160), (2, 45, 77)):
        channels = CSPNPlusPlusPropagation.guidance_channels(config)
        init, guidance, sparse = random_inputs(batch, height, width, channels, device, generator)
        reference, _ = module(init.double(), guidance.double(), sparse.double())
        out, _ = module(init, guidance, sparse)
        error = relative_error(out, reference)
        results.append(dict(kernel='cspnpp_module', size=[batch, height, width],
                            rel_error=error, ok=bool(torch.isfinite(out).all()) and error < 1e-5))


def check_nlspn(device, generator, results) -> None:
    for batch, height, width in SIZES:
        for neighbours in (8, 24) if height * width < 500_000 else (8,):
            config = ModelConfig(propagation='nlspn', nlspn_neighbors=neighbours)
            module = nlspn.NLSPNPropagation(config).to(device)
            init, guidance, sparse = random_inputs(batch, height, width, 3 * neighbours, device,
                                                   generator)
            offsets = 2.0 * guidance[:, :2 * neighbours].reshape(
                batch, 2, neighbours, height, width).transpose(1, 2)
            grid = module.sampling_grid(offsets)
            confidence = torch.rand(batch, 1, height, width, device=device, generator=generator)
            affinity = module.affinities(guidance[:, 2 * neighbours:], grid, confidence).detach()
            for dtype in (torch.float32, torch.float16):
                inputs = [t.to(dtype) for t in (init, affinity, grid, sparse)]
                mask = inputs[3] > 0
                ref = fused._nlspn_reference(*(t.double() for t in inputs[:3]), mask,
                                             inputs[3].double(), 24)
                torch_float32 = fused._nlspn_reference(*(t.float() for t in inputs[:3]), mask,
                                                       inputs[3].float(), 24)
                poison_allocator(init.shape, device)
                out = fused.nlspn_propagate(inputs[0], inputs[1], inputs[2], mask, inputs[3], 24)
                torch.cuda.synchronize()
                error = relative_error(out, ref)
                # Sample positions are float32 pixel coordinates in both float32 paths (an ulp
                # at x = 1000 is 6e-5 px): the fused error may be twice grid_sample's own.
                limit = max(1e-5, 2 * relative_error(torch_float32, ref))
                ok = bool(torch.isfinite(out).all()) and error < limit
                results.append(dict(kernel='nonlocal', neighbours=neighbours, steps=24,
                                    size=[batch, height, width], dtype=str(dtype),
                                    rel_error=error, limit=limit, ok=ok))


def check_graph_replay(device, generator, results) -> None:
    """The default 3x3 path captured in a CUDA graph (chained, programmatic launches) and replayed
    on new inputs copied in place gives what eager calls give, bit for bit."""
    batch, height, width = 1, 352, 1216
    static = list(random_inputs(batch, height, width, 8, device, generator))
    static[1] = cspn.normalize_affinity(static[1])
    graph = torch.cuda.CUDAGraph()
    fused.cspn_propagate(static[0], static[1], static[2] > 0, static[2], 24)  # compile first
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        out = fused.cspn_propagate(static[0], static[1], static[2] > 0, static[2], 24)
    errors = []
    for _ in range(3):
        init, guidance, sparse = random_inputs(batch, height, width, 8, device, generator)
        for target, source in zip(static, (init, cspn.normalize_affinity(guidance), sparse)):
            target.copy_(source)
        graph.replay()
        eager = fused.cspn_propagate(init, static[1], sparse > 0, sparse, 24)
        errors.append((out - eager).abs().max().item())
    results.append(dict(kernel='local_graph_replay', rel_error=max(errors),
                        ok=max(errors) == 0.0))


def check_compiled(device, generator, results) -> None:
    """The fused paths inside a torch.compile'd function (the node's `compile` mode) give what
    eager calls give: Inductor compiles around them instead of tracing into their launchers."""
    init, guidance, sparse = random_inputs(1, 96, 160, 8, device, generator)
    affinity = cspn.normalize_affinity(guidance)
    module = nlspn.NLSPNPropagation(ModelConfig(propagation='nlspn')).to(device)
    offsets = torch.randn(1, 8, 2, 96, 160, device=device, generator=generator)
    grid = module.sampling_grid(offsets)
    weights = module.affinities(torch.randn(1, 8, 96, 160, device=device, generator=generator),
                                grid, None).detach()

    def both(init, affinity, sparse):
        scaled = init * 1.5  # work for Inductor on both sides of the fused calls
        local = fused.cspn_propagate(scaled, affinity, sparse > 0, sparse, 24)
        nonlocal_ = fused.nlspn_propagate(scaled, weights, grid, sparse > 0, sparse, 6)
        return local + 1, nonlocal_ + 1
    eager = both(init, affinity, sparse)
    compiled = torch.compile(both, dynamic=False)(init, affinity, sparse)
    error = max(relative_error(c, e) for c, e in zip(compiled, eager))
    results.append(dict(kernel='compiled', rel_error=error, ok=error < 1e-6))


def check_direct_launch(device, generator, results) -> None:
    """The checks above relaunched the shared-memory kernel straight into its C launcher
    (`fused._direct_launcher`), not through Triton's runner."""
    names = sorted({f.__qualname__ for f in fused._SHARED_LAUNCHERS.values()})
    results.append(dict(kernel='direct_launch', launchers=names, rel_error=0.0,
                        ok=bool(names) and all(n.startswith('_direct_launcher') for n in names)))


def check_gradients(device, generator, results) -> None:
    batch, height, width = 1, 33, 47
    init, guidance, sparse = random_inputs(batch, height, width, 8, device, generator)
    mask = sparse > 0
    grads = []
    for use_fused in (True, False):
        leaf_init = init.clone().requires_grad_()
        leaf_guidance = guidance.clone().requires_grad_()
        affinity = cspn.normalize_affinity(leaf_guidance)
        run = fused.cspn_propagate if use_fused else cspn.cspn_propagate
        out = run(leaf_init, affinity, mask, sparse, 12)
        (out * torch.linspace(0, 1, out.numel(), device=device).view_as(out)).sum().backward()
        grads.append((leaf_init.grad, leaf_guidance.grad))
    error = max(relative_error(a, b) for a, b in zip(*grads))
    results.append(dict(kernel='local_grad', rel_error=error, ok=error < 1e-5))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--json', type=Path, help='write every check here')
    args = parser.parse_args()
    if not fused.available():
        print('fused kernels unavailable (no CUDA device or no Triton)')
        return 1
    device = torch.device('cuda')
    generator = torch.Generator(device=device).manual_seed(torch.seed() % 2 ** 31)
    results: list[dict] = []
    for check in (check_local, check_cspnpp_module, check_nlspn, check_graph_replay,
                  check_compiled, check_direct_launch, check_gradients):
        check(device, generator, results)
    failures = [r for r in results if not r['ok']]
    if args.json:
        args.json.write_text(json.dumps(dict(device=torch.cuda.get_device_name(),
                                             checks=results), indent=1))
    worst: dict[str, float] = {}
    for r in results:
        key = r['kernel'] + (' ' + r['dtype'] if 'dtype' in r else '')
        if r.get('k') == 3:
            key += ' ' + r['launch']
        worst[key] = max(worst.get(key, 0.0), r['rel_error'])
    print(f'| check | worst rel. error | ({torch.cuda.get_device_name()}) |\n|---|---|---|')
    for key, value in worst.items():
        print(f'| {key} | {value:.2e} | |')
    for r in failures:
        print('FAILED', r)
    print(f'{len(results) - len(failures)} passed, {len(failures)} failed')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
