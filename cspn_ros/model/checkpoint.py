"""Checkpoints: weights + plain model config + format/package version + metadata.

`.safetensors`: tensors, with the config, versions and meta as JSON strings in the file metadata.
`.pt` / `.pth`: torch.save of {'state_dict', 'config' (dict), 'version', 'package_version',
'meta'}, loadable with torch.load(weights_only=True). Both load without the training code.

Integrity: `save_checkpoint` stores a SHA-256 of the content (`content_hash`: every tensor's
name, dtype, shape and bytes, and the config) that `load_checkpoint` recomputes, so a file
changed after it was written (flipped bytes, a truncated copy) is refused. Files written before
the hash existed load with a warning. Non-finite (NaN / inf) weights are always refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from cspn_ros import __version__
from cspn_ros.config import FORMAT_VERSION, ModelConfig

_SAFETENSORS_SUFFIXES = ('.safetensors',)
_TORCH_SUFFIXES = ('.pt', '.pth')
_DDP_PREFIX = 'module.'
#: Metadata key (safetensors) / dict key (.pt) of the content hash.
HASH_KEY = 'content_sha256'
LOGGER = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f'checkpoint {str(path)!r}: {reason}')
        self.path = str(path)
        self.reason = reason


def save_checkpoint(path: str | Path, state_dict: Mapping[str, torch.Tensor],
                    config: ModelConfig, meta: Mapping[str, Any] | None = None) -> Path:
    """Write weights + config (+ JSON-able meta) to a .safetensors or .pt/.pth file; returns path.

    DDP 'module.' prefixes are stripped; tensors are saved from the CPU.
    """
    path = Path(path)
    meta = dict(meta or {})
    try:
        meta_json = json.dumps(meta)
    except TypeError as error:
        raise ValueError(f'checkpoint meta must be JSON-serialisable: {error}') from None
    tensors = {key: value.detach().cpu().contiguous()
               for key, value in strip_ddp_prefix(state_dict).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    content_hash = checkpoint_hash(tensors, config.to_dict())
    if path.suffix in _SAFETENSORS_SUFFIXES:
        from safetensors.torch import save_file
        save_file(tensors, str(path), metadata={
            'format_version': str(FORMAT_VERSION), 'package_version': __version__,
            'config': json.dumps(config.to_dict()), 'meta': meta_json, HASH_KEY: content_hash})
    elif path.suffix in _TORCH_SUFFIXES:
        torch.save({'state_dict': tensors, 'config': config.to_dict(), 'version': FORMAT_VERSION,
                    'package_version': __version__, 'meta': meta, HASH_KEY: content_hash}, path)
    else:
        raise ValueError(f'checkpoint {str(path)!r}: unknown suffix {path.suffix!r}; use one of '
                         f'{_SAFETENSORS_SUFFIXES + _TORCH_SUFFIXES}')
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig, dict]:
    """(state_dict on the CPU without DDP prefixes, ModelConfig, meta) from a checkpoint file.

    Raises CheckpointError for a missing, corrupt or foreign file, content that does not match
    its hash, non-finite weights, an invalid config, or a FORMAT_VERSION newer than this
    package reads. A file without a hash (written before hashes) loads with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, 'file not found')
    if path.suffix in _SAFETENSORS_SUFFIXES:
        state_dict, header = _read_safetensors(path)
    elif path.suffix in _TORCH_SUFFIXES:
        state_dict, header = _read_torch(path)
    else:
        raise CheckpointError(path, f'unknown suffix {path.suffix!r}; expected one of '
                                    f'{_SAFETENSORS_SUFFIXES + _TORCH_SUFFIXES}')
    version, config_dict, meta, stored_hash = header
    if stored_hash is None:
        LOGGER.warning('checkpoint %s has no content hash (written by an older cspn_ros): its '
                       'integrity is not verified; re-save it with save_checkpoint', path)
    elif checkpoint_hash(state_dict, config_dict) != stored_hash:
        raise CheckpointError(path, 'content does not match its hash: the file was changed or '
                                    'damaged after it was written (corrupt copy?)')
    not_finite = [key for key, value in state_dict.items()
                  if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if not_finite:
        raise CheckpointError(path, f'{len(not_finite)} weight tensor(s) hold NaN or inf values '
                                    f'(e.g. {not_finite[0]!r}): the weights are unusable')
    if version > FORMAT_VERSION:
        raise CheckpointError(path, f'format version {version} is newer than the version '
                                    f'{FORMAT_VERSION} this cspn_ros {__version__} reads; '
                                    'upgrade cspn_ros')
    try:
        config = ModelConfig.from_dict(config_dict)
    except (TypeError, ValueError) as error:
        raise CheckpointError(path, f'invalid model config: {error}') from None
    return strip_ddp_prefix(state_dict), config, dict(meta)


def checkpoint_hash(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of the tensors (sorted names, dtype, shape, bytes) and the config."""
    digest = hashlib.sha256(json.dumps(dict(config), sort_keys=True).encode())
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f'{key}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def strip_ddp_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the 'module.' prefix DistributedDataParallel adds to every key."""
    return {key[len(_DDP_PREFIX):] if key.startswith(_DDP_PREFIX) else key: value
            for key, value in state_dict.items()}


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                 path: str | Path) -> None:
    """Strict load_state_dict; CheckpointError lists missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [f'{key} {tuple(state_dict[key].shape)} != {tuple(value.shape)}'
                  for key, value in expected.items()
                  if key in state_dict and state_dict[key].shape != value.shape]
    for label, keys in (('missing keys', missing), ('unexpected keys', unexpected),
                        ('shape mismatch (checkpoint != model)', mismatched)):
        if keys:
            shown = ', '.join(keys[:5]) + (f' (+{len(keys) - 5} more)' if len(keys) > 5 else '')
            problems.append(f'{label}: {shown}')
    if problems:
        raise CheckpointError(path, 'weights do not match the architecture of its config: '
                                    + '; '.join(problems))
    model.load_state_dict(state_dict, strict=True)


def _read_safetensors(path: Path
                      ) -> tuple[dict[str, torch.Tensor], tuple[int, dict, dict, Optional[str]]]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework='pt', device='cpu') as handle:
            metadata = handle.metadata() or {}
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(path, f'corrupt or not a safetensors file ({error})') from None
    if 'config' not in metadata or 'format_version' not in metadata:
        raise CheckpointError(path, 'not a cspn_ros checkpoint (no config/format_version in '
                                    'the safetensors metadata)')
    try:
        header = (int(metadata['format_version']), json.loads(metadata['config']),
                  json.loads(metadata.get('meta', '{}')), metadata.get(HASH_KEY))
    except ValueError as error:
        raise CheckpointError(path, f'unreadable checkpoint metadata ({error})') from None
    return state_dict, header


def _read_torch(path: Path
                ) -> tuple[dict[str, torch.Tensor], tuple[int, dict, dict, Optional[str]]]:
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # torch raises many types (pickle, zip, EOF) for bad files
        raise CheckpointError(path, f'corrupt or not a torch checkpoint ({error})') from None
    if not isinstance(data, dict) or not {'state_dict', 'config', 'version'} <= set(data):
        raise CheckpointError(path, "not a cspn_ros checkpoint (expected a dict with "
                                    "'state_dict', 'config' and 'version')")
    if not isinstance(data['config'], dict) or not isinstance(data['version'], int):
        raise CheckpointError(path, 'not a cspn_ros checkpoint (config is not a dict or '
                                    'version is not an int)')
    return data['state_dict'], (data['version'], data['config'], data.get('meta') or {},
                                data.get(HASH_KEY))
