"""ONNX export: onnxruntime (CPU) reproduces the torch network for every propagation scheme."""
import random

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from cspn_ros.config import ModelConfig
from cspn_ros.model.completer import DepthCompleter
from cspn_ros.export import to_onnx

DEPTH_RANGE = 20.0
#: Max abs error allowed, metres: float32 rounding over the unrolled steps, far below 1 mm.
TOLERANCE = 1e-5 * DEPTH_RANGE


@pytest.fixture(autouse=True)
def fresh_seed():
    seed = random.SystemRandom().randrange(2 ** 31)
    print(f'torch seed {seed}')
    torch.manual_seed(seed)


def random_frame(height, width):
    rgb = torch.rand(1, 3, height, width)
    keep = torch.rand(1, 1, height, width) < 0.1
    return rgb, torch.where(keep, 0.5 + DEPTH_RANGE * torch.rand(1, 1, height, width), 0.0)


def assert_onnx_matches_torch(completer, path, height, width):
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    rgb, sparse = random_frame(height, width)
    with torch.no_grad():
        expected = completer.model(rgb, sparse)
    depth, confidence = session.run(['depth', 'confidence'],
                                    {'rgb': rgb.numpy(), 'sparse': sparse.numpy()})
    assert depth.shape == confidence.shape == (1, 1, height, width)
    assert np.abs(depth - expected['depth'].numpy()).max() < TOLERANCE
    assert np.abs(confidence - expected['confidence'].numpy()).max() < 1e-5
    assert expected['depth'].max() > 1.0  # a real depth map was compared, not zeros


@pytest.mark.parametrize('propagation, extra', [
    ('cspn', {}),
    ('cspnpp', {'cspnpp_kernel_sizes': (3, 5), 'cspnpp_steps': (1, 3)}),
    ('nlspn', {}),
    ('cspn', {'initial_fill': 'morphological'}),
])
def test_fixed_size_export_matches_torch(tmp_path, propagation, extra):
    completer = DepthCompleter.from_config(ModelConfig(propagation=propagation, width=8, steps=3,
                                                       **extra))
    path = to_onnx(completer, tmp_path / f'{propagation}.onnx', 48, 64)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ['rgb', 'sparse']
    assert [o.name for o in graph.output] == ['depth', 'confidence', 'depth_init']
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 48, 64]
    assert_onnx_matches_torch(completer, path, 48, 64)


def test_dynamic_export_runs_at_other_sizes(tmp_path):
    config = ModelConfig(propagation='nlspn', initial_fill='kernel_regression', width=8, steps=2)
    completer = DepthCompleter.from_config(config)
    path = to_onnx(completer, tmp_path / 'dynamic.onnx', 48, 64, dynamic=True)
    for height, width in ((48, 64), (37, 53)):
        assert_onnx_matches_torch(completer, path, height, width)


def test_export_unrolls_the_current_steps(tmp_path):
    completer = DepthCompleter.from_config(ModelConfig(width=8, steps=5))
    completer.steps = 1
    path = to_onnx(completer, tmp_path / 'one_step.onnx', 32, 32)
    assert_onnx_matches_torch(completer, path, 32, 32)


def test_rejects_classical_and_old_opsets(tmp_path):
    with pytest.raises(ValueError, match='no network'):
        to_onnx(DepthCompleter.from_config('classical'), tmp_path / 'x.onnx', 32, 32)
    with pytest.raises(ValueError, match='GridSample'):
        to_onnx(DepthCompleter.from_config(ModelConfig(width=8, steps=1)), tmp_path / 'x.onnx',
                32, 32, opset=15)
