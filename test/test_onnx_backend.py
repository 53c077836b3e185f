"""onnxruntime backend: parity with torch on the shipped model, the export cache, and 'auto'."""
import random

import numpy as np
import pytest
import torch

from cspn_ros.config import ModelConfig
from cspn_ros.data.synthetic import SyntheticScene
from cspn_ros.model import onnx_backend
from cspn_ros.model.completer import DepthCompleter, resolve_backend
from cspn_ros.model.network import CompletionNet

#: Max abs depth difference onnxruntime vs torch, metres: float32 rounding through the network and
#: 24 propagation steps (measured ~3e-5 m at 40 m), well below 1 mm.
DEPTH_TOLERANCE = 1e-3
CONFIDENCE_TOLERANCE = 1e-4
HEIGHT, WIDTH = 96, 128


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test exports into its own empty cache folder."""
    monkeypatch.setenv('CSPN_ROS_CACHE', str(tmp_path / 'cache'))


@pytest.fixture(scope='module')
def torch_completer():
    return DepthCompleter.from_checkpoint(None, device='cpu', backend='torch')


def random_frame(height=HEIGHT, width=WIDTH):
    seed = random.SystemRandom().randrange(2 ** 31)
    print(f'numpy seed {seed}')
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    sparse = np.where(rng.random((height, width)) < 0.05, 0.5 + 40 * rng.random((height, width)),
                      0).astype(np.float32)
    return rgb, sparse


def real_like_frame():
    """A rendered indoor scene (colour + ground-truth depth) with 3 % of its depth as input."""
    frame = SyntheticScene(seed=3, width=WIDTH, height=HEIGHT, scene='indoor').frame(2)
    keep = np.random.default_rng(1).random(frame.depth.shape) < 0.03
    return frame.rgb, np.where(keep, frame.depth, 0).astype(np.float32), frame.depth


def assert_parity(onnx_completer, torch_completer, rgb, sparse):
    expected = torch_completer.complete(rgb, sparse)
    got = onnx_completer.complete(rgb, sparse)
    for name in ('depth', 'depth_init'):
        assert np.abs(getattr(got, name) - getattr(expected, name)).max() < DEPTH_TOLERANCE, name
    assert np.abs(got.confidence - expected.confidence).max() < CONFIDENCE_TOLERANCE
    assert expected.depth.max() > 1.0  # a real depth map was compared, not zeros
    return got


def test_onnxruntime_matches_torch_on_random_and_real_like_frames(torch_completer):
    completer = DepthCompleter.from_checkpoint(None, device='cpu', backend='onnxruntime')
    assert completer.backend == 'onnxruntime'
    assert_parity(completer, torch_completer, *random_frame())
    rgb, sparse, truth = real_like_frame()
    got = assert_parity(completer, torch_completer, rgb, sparse)
    valid = truth > 0
    assert np.median(np.abs(got.depth[valid] - truth[valid])) < 0.5  # a plausible completion


def test_steps_change_reuses_the_graph(torch_completer):
    """The graph stops before propagation (torch runs it): new steps, same cached graph."""
    completer = DepthCompleter.from_checkpoint(None, device='cpu', backend='onnxruntime')
    completer.steps = torch_completer.steps = 3
    try:
        assert_parity(completer, torch_completer, *random_frame())
        completer.steps = torch_completer.steps = 9
        assert_parity(completer, torch_completer, *random_frame())
        assert [path.name for path in completer._onnx.folder.glob('*.onnx')] \
            == [completer._onnx.path(HEIGHT, WIDTH).name]
    finally:
        torch_completer.steps = 24


@pytest.mark.parametrize('config', [
    ModelConfig(initial_fill='blend', residual='log', affinity='convex', width=8, steps=12),
    ModelConfig(initial_fill='morphological', residual='log', max_log_residual=0.1, width=8),
    ModelConfig(propagation='nlspn', width=8, steps=6)])
def test_onnxruntime_matches_torch_across_the_model_family(config):
    """Random weights of other configs (a retrained default may be blend + convex)."""
    seed = random.SystemRandom().randrange(2 ** 31)
    print(f'torch seed {seed}')  # shown on failure: the weights can be made again
    torch.manual_seed(seed)
    model = CompletionNet(config).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    reference = DepthCompleter(config, model, backend='torch')
    completer = DepthCompleter(config, model, backend='onnxruntime')
    assert_parity(completer, reference, *random_frame())
    rgb, sparse, _ = real_like_frame()
    assert_parity(completer, reference, rgb, sparse)


def test_cache_is_reused_and_corrupt_entries_are_rebuilt(torch_completer):
    rgb, sparse = random_frame(64, 96)
    first = DepthCompleter.from_checkpoint(None, device='cpu', backend='onnxruntime')
    first.complete(rgb, sparse)
    path = first._onnx.path(64, 96)
    assert path.is_file() and onnx_backend.cache_dir() in path.parents
    stamp = path.stat().st_mtime_ns
    DepthCompleter.from_checkpoint(None, device='cpu', backend='onnxruntime').complete(rgb, sparse)
    assert path.stat().st_mtime_ns == stamp  # loaded, not exported again
    for damage in (lambda data: data[:len(data) // 2],  # truncated: onnxruntime cannot load it
                   lambda data: data[:-64] + bytes(64)):  # loads maybe, but not what was written
        path.write_bytes(damage(path.read_bytes()))
        completer = DepthCompleter.from_checkpoint(None, device='cpu', backend='onnxruntime')
        assert_parity(completer, torch_completer, rgb, sparse)
        assert path.stat().st_size > 1_000_000


def test_cache_key_follows_the_weights():
    completer = DepthCompleter.from_checkpoint(None, device='cpu', backend='onnxruntime')
    other = DepthCompleter.from_checkpoint(None, device='cpu', backend='onnxruntime')
    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)
    assert onnx_backend.model_digest(other.model, onnx_backend.config_json(other.config)) \
        != completer._onnx.digest


def test_cache_key_follows_the_export_format(monkeypatch):
    """A graph written by an older export (another EXPORT_FORMAT) is never reused."""
    before = DepthCompleter.from_checkpoint(None, device='cpu', backend='onnxruntime')
    monkeypatch.setattr(onnx_backend, 'EXPORT_FORMAT', onnx_backend.EXPORT_FORMAT + 1)
    after = DepthCompleter.from_checkpoint(None, device='cpu', backend='onnxruntime')
    assert after._onnx.path(64, 96) != before._onnx.path(64, 96)
    assert after._onnx.path(64, 96).parent == before._onnx.path(64, 96).parent


def test_auto_picks_onnxruntime_on_the_cpu_and_torch_where_it_cannot_run():
    assert DepthCompleter.from_checkpoint(None, device='cpu').backend == 'onnxruntime'
    cpu = torch.device('cpu')
    assert resolve_backend('auto', cpu, True, 'bf16', False, False) == 'torch'
    assert resolve_backend('auto', cpu, False, 'fp32', False, False) == 'torch'
    assert resolve_backend('auto', torch.device('cuda', 0), True, 'fp32', False, False) == 'torch'
    with pytest.raises(ValueError, match='fp32 only'):
        resolve_backend('onnxruntime', cpu, True, 'bf16', False, False)
    with pytest.raises(ValueError, match='backend must be one of'):
        resolve_backend('tensorrt', cpu, True, 'fp32', False, False)
    assert DepthCompleter.from_config('classical', backend='auto').backend == 'torch'


def test_auto_switches_to_torch_for_bf16_and_back(torch_completer):
    completer = DepthCompleter.from_checkpoint(None, device='cpu')
    completer.precision = 'bf16'
    assert completer.backend == 'torch'
    completer.precision = 'fp32'
    assert completer.backend == 'onnxruntime'
    assert_parity(completer, torch_completer, *random_frame())
    explicit = DepthCompleter.from_checkpoint(None, device='cpu', backend='onnxruntime')
    with pytest.raises(ValueError, match='fp32 only'):
        explicit.precision = 'bf16'
