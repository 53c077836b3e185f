"""Checkpoints: safetensors and .pt round trips, DDP prefixes, and every error case."""
import json

import pytest
import torch
from safetensors.torch import save_file

from cspn_ros import __version__
from cspn_ros.config import FORMAT_VERSION, ModelConfig
from cspn_ros.model.checkpoint import (CheckpointError, load_checkpoint, load_weights,
                                       save_checkpoint)
from cspn_ros.model.completer import DepthCompleter
from cspn_ros.model.network import CompletionNet

CONFIG = ModelConfig(width=8, steps=5, kernel_size=5, max_depth=80.0)


@pytest.fixture(scope='module')
def trained_state():
    """A state dict with random (non-default) values everywhere, BatchNorm buffers included."""
    torch.manual_seed(0)
    state = CompletionNet(CONFIG).state_dict()
    return {key: (torch.randn_like(value) if value.is_floating_point()
                  else torch.randint_like(value, 0, 100)) for key, value in state.items()}


def assert_same_state(loaded, expected):
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key


@pytest.mark.parametrize('suffix', ['.safetensors', '.pt', '.pth'])
def test_round_trip(tmp_path, trained_state, suffix):
    meta = {'epoch': 3, 'dataset': 'synthetic', 'rmse': 0.25, 'size': [352, 1216]}
    path = save_checkpoint(tmp_path / f'model{suffix}', trained_state, CONFIG, meta)
    state, config, loaded_meta = load_checkpoint(path)
    assert config == CONFIG
    assert loaded_meta == meta
    assert_same_state(state, trained_state)
    completer = DepthCompleter.from_checkpoint(path)
    assert completer.config == CONFIG and completer.meta == meta
    assert_same_state(completer.model.state_dict(), trained_state)


def test_torch_file_loads_with_weights_only(tmp_path, trained_state):
    path = save_checkpoint(tmp_path / 'model.pt', trained_state, CONFIG, {'note': 'x'})
    data = torch.load(path, weights_only=True)
    assert data['config'] == CONFIG.to_dict()
    assert data['version'] == FORMAT_VERSION and data['package_version'] == __version__
    assert data['meta'] == {'note': 'x'}


def test_safetensors_metadata(tmp_path, trained_state):
    from safetensors import safe_open
    path = save_checkpoint(tmp_path / 'model.safetensors', trained_state, CONFIG)
    with safe_open(str(path), framework='pt') as handle:
        metadata = handle.metadata()
    assert json.loads(metadata['config']) == CONFIG.to_dict()
    assert int(metadata['format_version']) == FORMAT_VERSION
    assert metadata['package_version'] == __version__


@pytest.mark.parametrize('suffix', ['.safetensors', '.pt'])
def test_ddp_prefixes_are_stripped(tmp_path, trained_state, suffix):
    wrapped = {f'module.{key}': value for key, value in trained_state.items()}
    path = save_checkpoint(tmp_path / f'model{suffix}', wrapped, CONFIG)
    assert_same_state(load_checkpoint(path)[0], trained_state)
    # A file written by other code with the prefixes still in it.
    raw = tmp_path / f'raw{suffix}'
    if suffix == '.pt':
        torch.save({'state_dict': wrapped, 'config': CONFIG.to_dict(),
                    'version': FORMAT_VERSION}, raw)
    else:
        save_file(wrapped, str(raw), metadata={'config': json.dumps(CONFIG.to_dict()),
                                               'format_version': str(FORMAT_VERSION)})
    assert_same_state(load_checkpoint(raw)[0], trained_state)


def expect_error(path, *words):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message, message
    assert isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
    expect_error(tmp_path / 'nothing.safetensors', 'not found')


@pytest.mark.parametrize('suffix', ['.safetensors', '.pt'])
def test_truncated_and_garbage_files(tmp_path, trained_state, suffix):
    path = save_checkpoint(tmp_path / f'model{suffix}', trained_state, CONFIG)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    expect_error(path, 'corrupt')
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    expect_error(path, 'corrupt')
    path.write_bytes(b'')
    expect_error(path, 'corrupt')


def test_files_that_are_not_checkpoints(tmp_path, trained_state):
    plain_safetensors = tmp_path / 'plain.safetensors'
    save_file({'weight': torch.ones(3)}, str(plain_safetensors))
    expect_error(plain_safetensors, 'not a cspn_ros checkpoint')
    plain_state = tmp_path / 'plain.pt'
    torch.save(trained_state, plain_state)
    expect_error(plain_state, 'not a cspn_ros checkpoint')
    tensor_only = tmp_path / 'tensor.pt'
    torch.save(torch.zeros(2), tensor_only)
    expect_error(tensor_only, 'not a cspn_ros checkpoint')
    other_suffix = tmp_path / 'model.ckpt'
    other_suffix.write_bytes(b'\0' * 16)
    expect_error(other_suffix, 'suffix')


@pytest.mark.parametrize('config_dict, words', [
    ({**CONFIG.to_dict(), 'width': 12}, ('invalid model config', 'width')),
    ({**CONFIG.to_dict(), 'propagation': 'magic'}, ('invalid model config', 'propagation')),
    ({**CONFIG.to_dict(), 'colour': 'blue'}, ('invalid model config', 'colour')),
])
def test_invalid_config(tmp_path, trained_state, config_dict, words):
    path = tmp_path / 'bad.pt'
    torch.save({'state_dict': trained_state, 'config': config_dict,
                'version': FORMAT_VERSION}, path)
    expect_error(path, *words)


@pytest.mark.parametrize('suffix', ['.safetensors', '.pt'])
def test_newer_format_version(tmp_path, trained_state, suffix):
    path = tmp_path / f'future{suffix}'
    newer = FORMAT_VERSION + 1
    if suffix == '.pt':
        torch.save({'state_dict': trained_state, 'config': CONFIG.to_dict(),
                    'version': newer}, path)
    else:
        save_file(trained_state, str(path), metadata={'config': json.dumps(CONFIG.to_dict()),
                                                      'format_version': str(newer)})
    expect_error(path, f'format version {newer}', 'newer')


def test_weights_that_do_not_match_the_architecture(tmp_path, trained_state):
    key = 'guidance_head.1.weight'
    cases = {
        'missing keys': {k: v for k, v in trained_state.items() if k != key},
        'unexpected keys': {**trained_state, 'extra.weight': torch.zeros(1)},
        'shape mismatch': {**trained_state, key: torch.zeros(3, 3)},
    }
    for words, state in cases.items():
        path = save_checkpoint(tmp_path / 'model.safetensors', state, CONFIG)
        with pytest.raises(CheckpointError) as info:
            DepthCompleter.from_checkpoint(path)
        assert words in str(info.value) and str(path) in str(info.value)
        assert key in str(info.value) or 'extra.weight' in str(info.value)
    # Weights of another architecture under this config (kernel 5 -> kernel 3 guidance head).
    path = save_checkpoint(tmp_path / 'other.pt', trained_state,
                           ModelConfig(width=8, kernel_size=3))
    with pytest.raises(CheckpointError, match='shape mismatch'):
        DepthCompleter.from_checkpoint(path)


def test_load_weights_accepts_a_matching_state(trained_state):
    model = CompletionNet(CONFIG)
    load_weights(model, trained_state, 'memory')
    assert_same_state(model.state_dict(), trained_state)


def test_meta_must_be_json(tmp_path, trained_state):
    with pytest.raises(ValueError, match='JSON'):
        save_checkpoint(tmp_path / 'model.safetensors', trained_state, CONFIG,
                        {'when': object()})


@pytest.mark.parametrize('suffix', ['.safetensors', '.pt'])
def test_changed_content_is_refused_by_its_hash(tmp_path, trained_state, suffix):
    path = save_checkpoint(tmp_path / f'model{suffix}', trained_state, CONFIG)
    assert_same_state(load_checkpoint(path)[0], trained_state)  # the hash verifies
    key = sorted(trained_state)[0]
    changed = {**trained_state, key: trained_state[key] + 1e-3}
    if suffix == '.pt':  # the same file with one tensor changed and the old hash kept
        data = torch.load(path, weights_only=True)
        torch.save({**data, 'state_dict': changed}, path)
    else:
        from safetensors import safe_open
        with safe_open(str(path), framework='pt') as handle:
            metadata = handle.metadata()
        save_file(changed, str(path), metadata=metadata)
    expect_error(path, 'does not match its hash')


def test_hash_covers_the_config(tmp_path, trained_state):
    from safetensors import safe_open
    path = save_checkpoint(tmp_path / 'model.safetensors', trained_state, CONFIG)
    with safe_open(str(path), framework='pt') as handle:
        metadata = handle.metadata()
    metadata['config'] = json.dumps({**CONFIG.to_dict(), 'steps': 6})
    save_file(trained_state, str(path), metadata=metadata)
    expect_error(path, 'does not match its hash')


def test_non_finite_weights_are_always_refused(tmp_path, trained_state):
    key = sorted(k for k, v in trained_state.items() if v.is_floating_point())[3]
    for value in (float('nan'), float('inf')):
        broken = {**trained_state, key: trained_state[key].clone()}
        broken[key].view(-1)[0] = value
        path = save_checkpoint(tmp_path / 'broken.safetensors', broken, CONFIG)  # hash valid
        expect_error(path, 'NaN or inf', key)
        save_file(broken, str(path), metadata={'config': json.dumps(CONFIG.to_dict()),
                                               'format_version': str(FORMAT_VERSION)})
        expect_error(path, 'NaN or inf', key)  # an older file without a hash too


def test_older_file_without_hash_loads_with_a_warning(tmp_path, trained_state, caplog):
    path = tmp_path / 'old.safetensors'
    save_file(trained_state, str(path), metadata={'config': json.dumps(CONFIG.to_dict()),
                                                  'format_version': str(FORMAT_VERSION)})
    with caplog.at_level('WARNING'):
        assert_same_state(load_checkpoint(path)[0], trained_state)
    assert 'has no content hash' in caplog.text


def test_packaged_default_carries_a_verified_hash():
    from safetensors import safe_open
    from cspn_ros.model.checkpoint import HASH_KEY, checkpoint_hash
    from cspn_ros.model.completer import DEFAULT_CHECKPOINT
    with safe_open(str(DEFAULT_CHECKPOINT), framework='pt') as handle:
        stored = handle.metadata()[HASH_KEY]
        state = {key: handle.get_tensor(key) for key in handle.keys()}
        config = json.loads(handle.metadata()['config'])
    assert checkpoint_hash(state, config) == stored
