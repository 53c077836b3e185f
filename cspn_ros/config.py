"""One configuration object for the model family; checkpoints carry it as plain data.

`ModelConfig` describes the network only (what the weights mean). Run-time choices that do not
change the weights (device, precision, confidence threshold) live with `DepthCompleter`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Union

#: Bumped when the meaning of a config field or the checkpoint layout changes.
FORMAT_VERSION = 1

PROPAGATIONS = ('cspn', 'cspnpp', 'nlspn', 'classical')
INITIAL_FILLS = ('none', 'kernel_regression', 'morphological', 'blend')
ENCODERS = ('resnet18', 'resnet34')
TASKS = ('completion', 'refinement')
NORMALISATIONS = ('median', 'fixed')
RESIDUALS = ('additive', 'log')
AFFINITIES = ('signed', 'convex')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model: encoder, heads, propagation scheme and initial fill.

    propagation: 'cspn' (Cheng et al. 2018), 'cspnpp' (2020), 'nlspn' (Park et al. 2020), or
        'classical' for the no-weights morphological baseline (IP-Basic style).
    initial_fill: 'none' (the network's initial-depth head sees the sparse map directly),
        'kernel_regression' (learned anisotropic kernels interpolate the points first) or
        'morphological' (a weight-free nearest-depth fill reaching every pixel; the initial
        depth head predicts a residual over it), or 'blend' (two weight-free fills, the
        nearest surface and the local geometric mean (model/morphological_fill.py), blended per
        pixel by the network in log depth; needs residual 'log').
    encoder: ResNet-style encoder depth; width: channels of its first stage (ResNet uses 64;
        16, the default, is the shipped model: 1.5 M parameters).
    steps: propagation iterations (CSPN/NLSPN); kernel_size: CSPN kernel (odd).
    cspnpp_kernel_sizes / cspnpp_steps: the branches CSPN++ combines per pixel.
    nlspn_neighbors: non-local neighbours per pixel for NLSPN.
    preserve_sparse: replace valid sparse inputs after every step (the paper's embedding).
    task: 'completion' (sparse -> dense) or 'refinement' (refine a given dense depth).
    depth_normalization: 'median' divides depths by the median valid input depth of each frame
        (range-agnostic, so indoor ToF and outdoor LiDAR share one model); 'fixed' by depth_scale.
    depth_scale: metres, used with 'fixed'. max_depth: metres, outputs are clamped to it.
    residual: how the initial depth head corrects its base (the fill, or the input with
        'refinement'): 'additive' (normalised depth added to the base) or 'log' (the base times
        exp(max_log_residual * tanh(head)): a bounded, range-free correction, so an unfamiliar
        scene degrades towards the fill instead of away from it; the network then also sees
        depths as log(depth / scale)).
    max_log_residual: bound of the 'log' residual (1.0: the initial depth stays within
        0.37x-2.7x of the base).
    affinity: CSPN affinity normalisation: 'signed' (the paper's '8sum', weights of either
        sign) or 'convex' (a softmax over the neighbours and the pixel itself: every step is a
        convex combination, so propagation never leaves the range of its inputs).
    input_bound: when > 0, `DepthCompleter` clamps every output depth to the measurements
        around it (model/input_bound.py): to the row or column pair of inputs enclosing the
        pixel when that pair is close, else to row / column neighbours as near as the nearest
        input, else to [min, max] of the inputs in the smallest window holding one, at least
        input_bound x the frame's mean input spacing (sqrt(H W / inputs) pixels) wide; only
        at pixels with an input below (or inputs left and right) within one spacing: below
        the lowest measurements, e.g. the ground under a LiDAR's lowest ring, the network's
        depth stays. The output never leaves the depths measured around it; applied after the
        network (on a GPU inside its CUDA graph; not in the ONNX export; in training losses
        only with TrainOptions.bounded_loss); 0 = off.
    """

    propagation: str = 'cspn'
    initial_fill: str = 'none'
    encoder: str = 'resnet18'
    width: int = 16
    steps: int = 24
    kernel_size: int = 3
    cspnpp_kernel_sizes: tuple[int, ...] = (3, 5, 7)
    cspnpp_steps: tuple[int, ...] = (6, 12, 24)
    nlspn_neighbors: int = 8
    preserve_sparse: bool = True
    task: str = 'completion'
    depth_normalization: str = 'median'
    depth_scale: float = 10.0
    max_depth: float = 120.0
    residual: str = 'additive'
    max_log_residual: float = 1.0
    affinity: str = 'signed'
    input_bound: float = 0.0

    def __post_init__(self) -> None:
        _check_choice('propagation', self.propagation, PROPAGATIONS)
        _check_choice('initial_fill', self.initial_fill, INITIAL_FILLS)
        _check_choice('encoder', self.encoder, ENCODERS)
        _check_choice('task', self.task, TASKS)
        _check_choice('depth_normalization', self.depth_normalization, NORMALISATIONS)
        _check_choice('residual', self.residual, RESIDUALS)
        _check_choice('affinity', self.affinity, AFFINITIES)
        if self.initial_fill == 'blend' and self.residual != 'log':
            raise ValueError("initial_fill 'blend' needs residual 'log'")
        if self.residual == 'log' and self.initial_fill == 'none' and self.task != 'refinement':
            raise ValueError("residual 'log' needs a base: initial_fill 'morphological' or "
                             "'kernel_regression', or task 'refinement'")
        if not 0 < self.max_log_residual <= 5:
            raise ValueError(f'max_log_residual must be in (0, 5], got {self.max_log_residual}')
        if self.width < 8 or self.width % 8:
            raise ValueError(f'width must be a multiple of 8 and >= 8, got {self.width}')
        if not 0 <= self.steps <= 256:
            raise ValueError(f'steps must be in [0, 256], got {self.steps}')
        for k in (self.kernel_size, *self.cspnpp_kernel_sizes):
            if k < 3 or k % 2 == 0:
                raise ValueError(f'kernel sizes must be odd and >= 3, got {k}')
        if len(self.cspnpp_kernel_sizes) == 0 or len(self.cspnpp_steps) == 0:
            raise ValueError('cspnpp_kernel_sizes and cspnpp_steps must not be empty')
        if not 1 <= self.nlspn_neighbors <= 24:
            raise ValueError(f'nlspn_neighbors must be in [1, 24], got {self.nlspn_neighbors}')
        if not 0 <= self.input_bound <= 8:
            raise ValueError(f'input_bound must be in [0, 8] input spacings, got '
                             f'{self.input_bound}')
        if self.depth_scale <= 0 or self.max_depth <= 0:
            raise ValueError('depth_scale and max_depth must be positive metres')

    @property
    def has_weights(self) -> bool:
        """False for the classical baseline, which needs no checkpoint."""
        return self.propagation != 'classical'

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> 'ModelConfig':
        """Build from a mapping; unknown keys are an error that lists the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f'unknown model config keys {unknown}; valid keys: {sorted(names)}')
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**fixed)

    @classmethod
    def load(cls, source: Union['ModelConfig', Mapping[str, Any], str, Path, None]) -> 'ModelConfig':
        """Accept a ModelConfig, a dict, a YAML/JSON file path, a propagation name, or None.

        A YAML file may hold the fields at top level or under a `model:` key.
        """
        if source is None:
            return cls()
        if isinstance(source, ModelConfig):
            return source
        if isinstance(source, Mapping):
            return cls.from_dict(source)
        text = str(source)
        if text in PROPAGATIONS:
            return cls(propagation=text)
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f'model config {text!r} is neither a file nor one of '
                                    f'{PROPAGATIONS}')
        import yaml
        try:
            content = path.read_text()
            data = (json.loads(content) if path.suffix == '.json'
                    else yaml.safe_load(content) or {})
        except (ValueError, yaml.YAMLError) as error:  # UnicodeDecodeError is a ValueError
            raise ValueError(f'model config file {text!r} is not readable JSON/YAML: '
                             f'{error}') from None
        if not isinstance(data, Mapping):
            raise ValueError(f'model config file {text!r} does not hold a mapping of model '
                             f'config keys (it holds a {type(data).__name__}); valid keys: '
                             f'{sorted(f.name for f in dataclasses.fields(cls))}')
        if isinstance(data.get('model'), Mapping):
            data = data['model']
        return cls.from_dict(data)


def parse_setting(text: str) -> tuple[str, Any]:
    """'NAME=VALUE' -> (NAME, VALUE parsed as YAML: 'false' -> False, '0.5' -> 0.5): a setting
    given on a command line (benchmarks, scripts, training options). ValueError without a NAME
    or '='."""
    import yaml
    name, separator, value = text.partition('=')
    if not separator or not name.strip():
        raise ValueError(f'expected NAME=VALUE, got {text!r}')
    return name.strip(), yaml.safe_load(value)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f'{name} must be one of {choices}, got {value!r}')
