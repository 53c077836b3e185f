"""DepthCompleter inference modes: each mode computes what fp32 eager computes; clear errors.

CPU tests run everywhere; the CUDA tests (fp16 autocast, CUDA graphs) run where a GPU is
present (bench machines). torch.compile is tested with the 'aot_eager' backend: the default
inductor backend needs about a minute per input size to compile on the CPU (it is timed on the
GPU by bench/bench_model.py).
"""
import copy
import warnings

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from cspn_ros.config import ModelConfig
from cspn_ros.core.pipeline import CompletionPipeline
from cspn_ros.core.rig import RigCompleter
from cspn_ros.model.completer import DepthCompleter
from cspn_ros.model.inference import (FAST_CUDA_MODES, PLAIN_MODES, CapturedForward,
                                      CudaGraphRunner, choose_modes)

HEIGHT, WIDTH = 40, 56  # not multiples of 32: the network pads and crops
CONFIG = ModelConfig(width=8, steps=4, max_depth=60.0)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


@pytest.fixture(scope='module')
def reference():
    return DepthCompleter.from_config(CONFIG)


def twin(reference, device='cpu', **modes):
    """A completer with the reference's weights, on `device`, in the given modes."""
    return DepthCompleter(CONFIG, copy.deepcopy(reference.model), device, **modes)


def make_frame(rng, height=HEIGHT, width=WIDTH):
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    sparse = np.where(rng.random((height, width)) < 0.1, rng.uniform(0.5, 50, (height, width)),
                      0).astype(np.float32)
    return rgb, sparse


def assert_close(result, expected, sparse, relative):
    """Same depth within `relative` (median relative error), valid inputs kept exactly."""
    assert result.dtype == np.float32 and result.shape == expected.shape
    assert np.isfinite(result).all()
    valid = sparse > 0
    np.testing.assert_array_equal(result[valid], sparse[valid])
    error = np.abs(result.astype(np.float64) - expected) / np.maximum(expected, 1e-3)
    assert np.median(error) < relative and error.max() < 50 * relative


def test_channels_last_matches_fp32(reference):
    completer = twin(reference, channels_last=True)
    assert completer.model.unet.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    rgb, sparse = make_frame(np.random.default_rng())
    expected = reference.complete(rgb, sparse)
    result = completer.complete(rgb, sparse)
    assert_close(result.depth, expected.depth, sparse, 1e-5)
    np.testing.assert_allclose(result.confidence, expected.confidence, atol=1e-5)


def test_bf16_on_cpu_is_close_to_fp32(reference):
    completer = twin(reference, precision='bf16')
    assert completer.precision == 'bf16'
    rgb, sparse = make_frame(np.random.default_rng())
    assert_close(completer(rgb, sparse), reference(rgb, sparse), sparse, 0.05)


def test_fp16_on_cpu_runs_fp32_with_a_warning(reference):
    with pytest.warns(UserWarning, match="'fp16' is not supported on the CPU"):
        completer = twin(reference, precision='fp16')
    assert completer.precision == 'fp32'
    rgb, sparse = make_frame(np.random.default_rng())
    np.testing.assert_array_equal(completer(rgb, sparse), reference(rgb, sparse))
    with pytest.warns(UserWarning, match='fp16'):
        completer.precision = 'fp16'
    assert completer.precision == 'fp32'


def test_cuda_graphs_are_ignored_on_cpu_with_a_warning(reference):
    with pytest.warns(UserWarning, match='cuda_graphs needs a CUDA device'):
        completer = twin(reference, cuda_graphs=True)
    assert completer.cuda_graphs is False
    rgb, sparse = make_frame(np.random.default_rng())
    np.testing.assert_array_equal(completer(rgb, sparse), reference(rgb, sparse))


def test_compile_matches_eager_and_follows_steps_and_sizes(reference):
    completer = twin(reference, compile='aot_eager', channels_last=True)
    rng = np.random.default_rng()
    for height, width, steps in ((HEIGHT, WIDTH, 4), (HEIGHT, WIDTH, 2), (24, 72, 2)):
        rgb, sparse = make_frame(rng, height, width)
        completer.steps = reference.steps = steps
        try:
            assert_close(completer(rgb, sparse), reference(rgb, sparse), sparse, 1e-5)
        finally:
            reference.steps = CONFIG.steps


def test_warmup_compiles_before_the_first_frame(reference):
    completer = twin(reference, compile='aot_eager')
    before = counters['stats']['unique_graphs']
    completer.warmup(HEIGHT, WIDTH, iterations=1)
    compiled = counters['stats']['unique_graphs']
    assert compiled > before
    rgb, sparse = make_frame(np.random.default_rng())
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # e.g. a recompilation-limit warning
        completer(rgb, sparse)
    assert counters['stats']['unique_graphs'] == compiled


def test_auto_modes_are_the_fast_ones_on_cuda_only():
    """choose_modes: unset modes take the device's fastest safe value; set ones are kept."""
    assert choose_modes('cuda', True, True) == FAST_CUDA_MODES
    assert FAST_CUDA_MODES['precision'] in ('fp16', 'bf16') and all(
        FAST_CUDA_MODES[name] is True for name in ('channels_last', 'compile', 'cuda_graphs'))
    assert choose_modes('cuda', True, False) == {**FAST_CUDA_MODES, 'compile': False}  # no Triton
    assert choose_modes('cpu', True, True) == PLAIN_MODES
    assert choose_modes('cuda', False, True) == PLAIN_MODES  # the classical baseline
    opted_out = choose_modes('cuda', True, True, precision='fp32', compile=False,
                             cuda_graphs=False, channels_last=False)
    assert opted_out == PLAIN_MODES
    assert choose_modes('cuda', True, True, precision='bf16', compile='aot_eager') == {
        **FAST_CUDA_MODES, 'precision': 'bf16', 'compile': 'aot_eager'}
    assert choose_modes('cpu', True, True, precision='bf16', channels_last=True) == {
        **PLAIN_MODES, 'precision': 'bf16', 'channels_last': True}


def test_defaults_on_the_cpu_are_fp32_eager_onnxruntime():
    completer = DepthCompleter.from_checkpoint(None, device='cpu')
    assert (completer.precision, completer.backend) == ('fp32', 'onnxruntime')
    assert not (completer.channels_last or completer.compile or completer.cuda_graphs)
    completer.precision = 'bf16'
    completer.precision = 'auto'  # at run time too: back to the device's fast precision
    assert (completer.precision, completer.backend) == ('fp32', 'onnxruntime')


@CUDA
def test_defaults_on_cuda_are_the_fast_modes():
    completer = DepthCompleter.from_checkpoint(None, device='cuda')
    assert completer.precision == FAST_CUDA_MODES['precision'] and completer.backend == 'torch'
    assert completer.channels_last and completer.cuda_graphs
    plain = DepthCompleter.from_checkpoint(None, device='cuda', **PLAIN_MODES)
    assert plain.precision == 'fp32' and not (plain.channels_last or plain.compile
                                              or plain.cuda_graphs)


@pytest.mark.parametrize('modes, words', [
    (dict(precision='int8'), 'precision must be one of'),
    (dict(channels_last='yes'), 'channels_last must be True or False'),
    (dict(cuda_graphs=1), 'cuda_graphs must be True or False'),
    (dict(compile='no_such_backend'), "compile backend 'no_such_backend'"),
])
def test_invalid_modes_are_rejected(modes, words):
    with pytest.raises(ValueError, match=words):
        DepthCompleter.from_config(CONFIG, **modes)


@pytest.mark.parametrize('modes', [dict(precision='bf16'), dict(precision='fp16'),
                                   dict(channels_last=True), dict(compile=True),
                                   dict(cuda_graphs=True)])
def test_classical_baseline_takes_no_modes(modes):
    with pytest.raises(ValueError, match='classical'):
        DepthCompleter.from_config('classical', **modes)
    completer = DepthCompleter.from_config('classical')
    with pytest.raises(ValueError, match='classical'):
        completer.precision = 'bf16'


def eager_capture(forward, inputs) -> CapturedForward:
    """A CPU recording with a CUDA graph's buffer contract: static input and output buffers,
    replay() runs forward on the static inputs and writes into the static outputs."""
    static = tuple(t.clone() for t in inputs)
    outputs = {name: value.clone() for name, value in forward(*static).items()}

    def replay() -> None:
        for name, value in forward(*static).items():
            outputs[name].copy_(value)
    return CapturedForward(static, outputs, replay)


def _batch(rng, size):
    frames = [make_frame(rng) for _ in range(size)]
    return (torch.from_numpy(np.stack([rgb for rgb, _ in frames])),
            torch.from_numpy(np.stack([sparse for _, sparse in frames])))


def test_graph_runner_keeps_one_graph_per_batch_size_and_replays_it(reference):
    """Full and partial batches of a rig alternating: each size is captured once, then only
    replayed; every result equals the eager forward and survives later replays."""
    runner = CudaGraphRunner(capture=eager_capture)
    rng = np.random.default_rng()
    results = []
    with torch.inference_mode():
        for size in (3, 2, 3, 1, 2, 3, 1):
            rgb, sparse = _batch(rng, size)
            results.append((runner(reference._forward, rgb, sparse, key=('fp32', 4)),
                            reference._forward(rgb, sparse)))
    assert runner.captures == len(runner) == 3
    for got, want in results:  # earlier results were not overwritten by later replays
        for name in want:
            torch.testing.assert_close(got[name], want[name])


def test_graph_runner_drops_the_least_recently_used_graph_beyond_its_bound(reference):
    runner = CudaGraphRunner(max_graphs=2, capture=eager_capture)
    rng = np.random.default_rng()
    batches = {size: _batch(rng, size) for size in (1, 2, 3)}
    with torch.inference_mode():
        def run(size, key=('fp32', 4)):
            return runner(reference._forward, *batches[size], key=key)
        run(1), run(2), run(1)
        assert runner.captures == 2
        run(3)  # full: drops size 2, the least recently used
        run(1)
        assert runner.captures == 3 and len(runner) == 2
        run(2)
        assert runner.captures == 4
        run(2, key=('fp32', 1))  # other steps: another graph
        assert runner.captures == 5 and len(runner) == 2
        runner.clear()
        assert len(runner) == 0
        torch.testing.assert_close(run(3)['depth'], reference._forward(*batches[3])['depth'])
    assert runner.captures == 6
    with pytest.raises(ValueError, match='max_graphs'):
        CudaGraphRunner(max_graphs=0)


@CUDA
@pytest.mark.parametrize('modes', [dict(precision='fp16'), dict(precision='bf16'),
                                   dict(precision='fp16', channels_last=True)])
def test_reduced_precision_on_cuda_is_close_to_fp32(reference, modes):
    expected_completer = twin(reference, 'cuda')
    completer = twin(reference, 'cuda', **modes)
    rgb, sparse = make_frame(np.random.default_rng())
    assert_close(completer(rgb, sparse), expected_completer(rgb, sparse), sparse, 0.05)


@CUDA
def test_cuda_graphs_replay_the_forward_and_recapture_on_change(reference):
    eager = twin(reference, 'cuda', precision='fp16')
    graphed = twin(reference, 'cuda', precision='fp16', cuda_graphs=True)
    rng = np.random.default_rng()
    rgb, sparse = make_frame(rng)
    first = graphed.complete_tensor(torch.from_numpy(rgb).cuda(), torch.from_numpy(sparse).cuda())
    rgb2, sparse2 = make_frame(rng)
    second = graphed(rgb2, sparse2)  # a replay must not overwrite the first result
    assert graphed._graphs.captures == 1
    eager_first = eager.complete_tensor(torch.from_numpy(rgb).cuda(),
                                        torch.from_numpy(sparse).cuda())
    for got, want in zip(first, eager_first):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(second, eager(rgb2, sparse2), rtol=1e-3, atol=1e-3)
    graphed.steps = eager.steps = 1
    np.testing.assert_allclose(graphed(rgb2, sparse2), eager(rgb2, sparse2), rtol=1e-3, atol=1e-3)
    rgb3, sparse3 = make_frame(rng, 24, 72)
    np.testing.assert_allclose(graphed(rgb3, sparse3), eager(rgb3, sparse3), rtol=1e-3, atol=1e-3)
    assert graphed._graphs.captures == 3


@CUDA
def test_rig_warm_up_captures_every_batch_size_so_partial_sweeps_only_replay(reference):
    from conftest import plane_frame
    graphed = twin(reference, 'cuda', cuda_graphs=True)
    pipelines = {name: CompletionPipeline(graphed) for name in ('a', 'b', 'c')}
    rig = RigCompleter(pipelines)
    msgs = plane_frame(1_700_000_000 * 10**9, WIDTH, HEIGHT)
    frame = (msgs['image'], msgs['camera_info'], msgs['points'])
    rig.warm_up(HEIGHT, WIDTH)
    captured = graphed._graphs.captures
    assert captured == 3  # batches of 3, 2 and one frame
    for cameras in (('a', 'b', 'c'), ('a', 'c'), ('b',), ('a', 'b', 'c'), ('b', 'c')):
        results = rig.complete({name: frame for name in cameras})
        assert all(not isinstance(result, Exception) for result in results.values()), results
    assert graphed._graphs.captures == captured
    rig.free_device_memory()
    assert len(graphed._graphs) == 0
