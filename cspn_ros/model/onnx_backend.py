"""ONNX Runtime backend of DepthCompleter: the network exported per input size, cached on disk.

The graph is the network before propagation (`CompletionNet.predict`: fill, UNet, heads, about
80 % of the CPU time); the completer computes the depth scale before it and runs the propagation
after it in torch (4x faster there than as unrolled ONNX steps, and the step count can change
without exporting again). One exported graph per (weights + config content hash, height, width,
EXPORT_FORMAT, onnx and onnxruntime versions), written under `cache_dir()` (CSPN_ROS_CACHE, else
$XDG_CACHE_HOME/cspn_ros, else ~/.cache/cspn_ros) as `onnx/<key>.onnx` next to a `<key>.sha256`
of its bytes. An entry is used only when its bytes match that digest and onnxruntime loads it;
anything else (truncated, edited, unreadable) is deleted and exported again. Files are written
to a temporary name and renamed, so a crash mid-export leaves no half entry.

Sessions: CPU execution provider, all graph optimisations, intra-op threads = the cores this
process may use (SESSION_DEFAULTS). The graph runs float32 only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

#: onnxruntime session settings (the ones measured in BENCHMARKS.md on the 2-core VM).
SESSION_DEFAULTS = {'graph_optimization_level': 'ORT_ENABLE_ALL', 'execution_mode':
                    'ORT_SEQUENTIAL'}
#: Session config entries: the intra-op threads sleep when a run ends instead of spinning, so
#: they leave the cores to the torch propagation that follows.
SESSION_CONFIG = {'session.intra_op.allow_spinning': '0'}


def available() -> bool:
    """True when onnxruntime and onnx import (the backend can run)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


#: Bumped whenever cspn_ros.export changes the graph it writes (op rewrites, inputs, outputs):
#: part of every cache key, so a graph cached by an older export is never reused.
EXPORT_FORMAT = 2


def cache_dir() -> Path:
    """The cache folder: $CSPN_ROS_CACHE, else $XDG_CACHE_HOME/cspn_ros, else ~/.cache/cspn_ros."""
    if os.environ.get('CSPN_ROS_CACHE'):
        return Path(os.environ['CSPN_ROS_CACHE'])
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'cspn_ros'


def model_digest(model: torch.nn.Module, config_json: str) -> str:
    """sha256 hex of the model's config (JSON text) and every state-dict tensor (name, dtype,
    shape, bytes): the content of the checkpoint, whatever file it came from."""
    digest = hashlib.sha256(config_json.encode())
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f'{name}:{array.dtype}:{array.shape}'.encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def default_threads() -> int:
    """Cores this process may run on (sched_getaffinity where available)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class OnnxRunner:
    """Runs an exported graph of a DepthCompleter's network through onnxruntime, one cached
    session per input size.

    export: callable(path, height, width) writing the ONNX graph (cspn_ros.export.to_onnx bound
    to the completer); digest: model_digest of its network;
    threads: onnxruntime intra-op threads (None = default_threads()).
    """

    def __init__(self, export: Callable[[Path, int, int], Path], digest: str,
                 threads: int | None = None, folder: Path | None = None) -> None:
        import onnx
        import onnxruntime
        self._export = export
        self._versions = (f'export{EXPORT_FORMAT}_onnx{onnx.__version__}'
                          f'_ort{onnxruntime.__version__}')
        self.digest = digest
        self.threads = threads or default_threads()
        self.folder = (folder or cache_dir()) / 'onnx'
        self._sessions = {}

    def path(self, height: int, width: int) -> Path:
        """Cache file of the graph for (height, width) px."""
        return self.folder / f'{self.digest[:24]}_{height}x{width}_predict_{self._versions}.onnx'

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's named float32 inputs ((1,C,H,W) `rgb` and `sparse` set the size) -> its
        named outputs."""
        key = tuple(inputs['sparse'].shape[-2:])
        session = self._sessions.get(key) or self._sessions.setdefault(key, self._session(*key))
        names = [output.name for output in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs)))

    def _session(self, height: int, width: int):
        """A session on the cached graph, exporting (again) when the entry is missing or bad."""
        path = self.path(height, width)
        if path.is_file():
            try:
                return self._load(path)
            except (OSError, ValueError, RuntimeError):  # onnxruntime raises RuntimeError kinds
                path.unlink(missing_ok=True)
        self._write(path, height, width)
        return self._load(path)

    def _load(self, path: Path):
        """An onnxruntime session on `path`; ValueError unless its bytes match the digest."""
        import onnxruntime
        data = path.read_bytes()
        expected = _digest_path(path).read_text().strip() if _digest_path(path).is_file() else ''
        if hashlib.sha256(data).hexdigest() != expected:
            raise ValueError(f'{path}: content does not match its recorded sha256')
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = getattr(
            onnxruntime.GraphOptimizationLevel, SESSION_DEFAULTS['graph_optimization_level'])
        options.execution_mode = getattr(onnxruntime.ExecutionMode,
                                         SESSION_DEFAULTS['execution_mode'])
        for key, value in SESSION_CONFIG.items():
            options.add_session_config_entry(key, value)
        return onnxruntime.InferenceSession(data, options, providers=['CPUExecutionProvider'])

    def _write(self, path: Path, height: int, width: int) -> None:
        """Export to a temporary file, then rename it and its digest into place."""
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(suffix='.onnx', dir=path.parent)
        os.close(handle)
        try:
            self._export(Path(temporary), height, width)
            digest = hashlib.sha256(Path(temporary).read_bytes()).hexdigest()
            _atomic_text(_digest_path(path), digest)
            os.replace(temporary, path)
        finally:
            Path(temporary).unlink(missing_ok=True)


def config_json(config) -> str:
    """Stable JSON text of a ModelConfig (dataclass) for hashing."""
    return json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)


def _digest_path(path: Path) -> Path:
    return path.with_suffix('.sha256')


def _atomic_text(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(handle, 'w') as file:
        file.write(text)
    os.replace(temporary, path)
