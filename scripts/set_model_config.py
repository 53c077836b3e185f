#!/usr/bin/env python3
"""Re-save a checkpoint with inference-time ModelConfig fields changed; the weights are unchanged.

    python3 scripts/set_model_config.py IN.safetensors OUT.safetensors NAME=VALUE [NAME=VALUE ...]
    e.g. max_log_residual=0.1 input_bound=0.25

How the packaged default was made from its training run (docs/real_data.md): the log-residual
bound (max_log_residual) and the bound of the output by the inputs around each pixel
(input_bound) were chosen on the real-data suite; the trained bound is kept in the
checkpoint's metadata (trained_max_log_residual).
"""
import dataclasses
import sys

from cspn_ros.config import parse_setting
from cspn_ros.model.checkpoint import load_checkpoint, save_checkpoint

#: Fields that change what the weights compute at inference, not what they mean.
SETTABLE = ('max_log_residual', 'input_bound', 'steps', 'max_depth')


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, target = argv[0], argv[1]
    try:
        changes = dict(map(parse_setting, argv[2:]))
    except ValueError as error:
        print(f'{error}\n{__doc__}', file=sys.stderr)
        return 2
    unknown = sorted(set(changes) - set(SETTABLE))
    if unknown:
        print(f'cannot set {unknown}: settable fields are {list(SETTABLE)}', file=sys.stderr)
        return 2
    state_dict, config, meta = load_checkpoint(source)
    config = dataclasses.replace(config, **changes)
    save_checkpoint(target, state_dict, config, {**meta, 'trained_max_log_residual':
                                                 meta.get('trained_max_log_residual', 1.0)})
    print(f'wrote {target} with {changes}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main(sys.argv[1:]))
