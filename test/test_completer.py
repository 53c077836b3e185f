"""DepthCompleter contract: dtypes, shapes, missing-value handling, validation, devices, steps."""
import numpy as np
import pytest
import torch

from cspn_ros.config import ModelConfig
from cspn_ros.model.checkpoint import CheckpointError
from cspn_ros.model.completer import (DEFAULT_CHECKPOINT, Completion, DepthCompleter,
                                      resolve_device)
from cspn_ros.model.fill import classical_fill

HEIGHT, WIDTH = 48, 64


@pytest.fixture(scope='module')
def completer():
    torch.manual_seed(0)
    return DepthCompleter.from_config(ModelConfig(width=8, steps=4, max_depth=50.0))


def make_frame(rng, density=0.1):
    rgb = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    sparse = np.where(rng.random((HEIGHT, WIDTH)) < density, rng.uniform(0.5, 40, (HEIGHT, WIDTH)),
                      0).astype(np.float32)
    return rgb, sparse


def test_outputs_contract(completer):
    rgb, sparse = make_frame(np.random.default_rng())
    result = completer.complete(rgb, sparse)
    assert isinstance(result, Completion)
    for field in (result.depth, result.confidence, result.depth_init):
        assert isinstance(field, np.ndarray)
        assert field.shape == (HEIGHT, WIDTH) and field.dtype == np.float32
        assert np.isfinite(field).all()
    assert 0 <= result.confidence.min() and result.confidence.max() <= 1
    assert 0 <= result.depth.min() and result.depth.max() <= 50.0
    valid = sparse > 0
    assert np.array_equal(result.depth[valid], sparse[valid])
    np.testing.assert_array_equal(completer(rgb, sparse), result.depth)
    assert completer.model.training is False
    assert completer.device == torch.device('cpu')


def test_non_finite_and_negative_depths_are_missing(completer):
    rng = np.random.default_rng()
    rgb, sparse = make_frame(rng)
    noisy = sparse.copy()
    holes = sparse == 0
    noisy[holes] = rng.choice(np.array([np.nan, np.inf, -np.inf, -2.0], np.float32),
                              holes.sum())
    np.testing.assert_array_equal(completer(rgb, noisy), completer(rgb, sparse))


def test_any_layout_of_rgb(completer):
    rgb, sparse = make_frame(np.random.default_rng())
    bgr_view = rgb[..., ::-1]  # negative strides
    np.testing.assert_array_equal(completer(bgr_view, sparse),
                                  completer(np.ascontiguousarray(bgr_view), sparse))


@pytest.mark.parametrize('rgb_shape, rgb_dtype, sparse_shape, sparse_dtype, words', [
    ((HEIGHT, WIDTH, 3), np.uint8, (HEIGHT, WIDTH + 1), np.float32, 'sparse is'),
    ((HEIGHT, WIDTH, 3), np.float32, (HEIGHT, WIDTH), np.float32, 'rgb must be uint8'),
    ((HEIGHT, WIDTH, 3), np.uint8, (HEIGHT, WIDTH), np.float64, 'sparse must be float32'),
    ((HEIGHT, WIDTH), np.uint8, (HEIGHT, WIDTH), np.float32, 'rgb must have shape'),
    ((HEIGHT, WIDTH, 4), np.uint8, (HEIGHT, WIDTH), np.float32, 'rgb must have shape'),
    ((HEIGHT, WIDTH, 3), np.uint8, (HEIGHT, WIDTH, 1), np.float32, 'sparse must have shape'),
])
def test_input_validation(completer, rgb_shape, rgb_dtype, sparse_shape, sparse_dtype, words):
    with pytest.raises(ValueError, match=words):
        completer(np.zeros(rgb_shape, rgb_dtype), np.zeros(sparse_shape, sparse_dtype))


def test_non_array_inputs_are_rejected(completer):
    with pytest.raises(ValueError, match='numpy.ndarray'):
        completer([[0]], np.zeros((1, 1), np.float32))
    with pytest.raises(ValueError, match='torch.Tensor'):
        completer.complete_tensor(np.zeros((2, 2, 3), np.uint8), torch.zeros(2, 2))


def test_complete_tensor_matches_numpy_path(completer):
    rgb, sparse = make_frame(np.random.default_rng())
    sparse[0, 0] = np.nan
    depth_t, confidence_t = completer.complete_tensor(torch.from_numpy(rgb),
                                                      torch.from_numpy(sparse))
    result = completer.complete(rgb, sparse)
    for tensor in (depth_t, confidence_t):
        assert tensor.shape == (HEIGHT, WIDTH) and tensor.dtype == torch.float32
        assert tensor.device == completer.device
    np.testing.assert_array_equal(depth_t.numpy(), result.depth)
    np.testing.assert_array_equal(confidence_t.numpy(), result.confidence)
    with pytest.raises(ValueError, match='expected cpu'):
        completer.complete_tensor(torch.from_numpy(rgb), torch.from_numpy(sparse).to('meta'))


def test_steps_change_at_run_time(completer):
    rgb, sparse = make_frame(np.random.default_rng())
    try:
        completer.steps = 0
        result = completer.complete(rgb, sparse)
        holes = sparse == 0
        np.testing.assert_array_equal(result.depth[holes], result.depth_init[holes])
        completer.steps = 12
        assert completer.model.propagation.steps == 12
        assert not np.array_equal(completer(rgb, sparse)[holes], result.depth_init[holes])
        with pytest.raises(ValueError, match='steps'):
            completer.steps = 300
    finally:
        completer.steps = 4


def test_reduced_precision_runs(completer):
    rgb, sparse = make_frame(np.random.default_rng())
    reference = completer(rgb, sparse)
    try:
        completer.precision = 'bf16'
        result = completer.complete(rgb, sparse)
    finally:
        completer.precision = 'fp32'
    assert result.depth.dtype == np.float32 and np.isfinite(result.depth).all()
    valid = sparse > 0
    assert np.array_equal(result.depth[valid], sparse[valid])
    assert np.median(np.abs(result.depth - reference) / np.maximum(reference, 1e-3)) < 0.1
    with pytest.raises(ValueError, match='precision'):
        DepthCompleter.from_config(ModelConfig(width=8), precision='int8')


def test_classical_completer_runs_without_a_network():
    completer = DepthCompleter.from_config('classical')
    assert completer.model is None and completer.steps == 0
    rgb, sparse = make_frame(np.random.default_rng(), density=0.05)
    expected = classical_fill(sparse, completer.config.max_depth)
    result = completer.complete(rgb, sparse)
    np.testing.assert_array_equal(result.depth, expected)
    np.testing.assert_array_equal(result.confidence, (expected > 0).astype(np.float32))
    depth_t, confidence_t = completer.complete_tensor(torch.from_numpy(rgb),
                                                      torch.from_numpy(sparse))
    np.testing.assert_array_equal(depth_t.numpy(), expected)
    with pytest.raises(ValueError, match='classical'):
        completer.steps = 3


def test_devices():
    assert resolve_device('cpu') == torch.device('cpu')
    expected = 'cuda' if torch.cuda.is_available() else 'cpu'
    assert resolve_device('auto').type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='CUDA is not available'):
            DepthCompleter.from_config('classical', device='cuda')


def test_missing_default_weights_are_reported():
    if DEFAULT_CHECKPOINT.is_file():
        pytest.skip('default weights are shipped')
    with pytest.raises(CheckpointError, match='default weights'):
        DepthCompleter.from_checkpoint()
