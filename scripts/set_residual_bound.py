#!/usr/bin/env python3
"""Re-save a checkpoint with another bound on its log residual (ModelConfig.max_log_residual).

    python3 scripts/set_residual_bound.py IN.safetensors OUT.safetensors BOUND

The weights are unchanged; the initial depth head's correction of its fill is scaled to
exp(+-BOUND). How the packaged default was made from its training run (docs/real_data.md: the
bound was chosen on the real-data suite, since the trained bound of 1.0 let the head's synthetic
habits through on real frames).
"""
import dataclasses
import sys

from cspn_ros.model.checkpoint import load_checkpoint, save_checkpoint


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, target, bound = argv[0], argv[1], float(argv[2])
    state_dict, config, meta = load_checkpoint(source)
    config = dataclasses.replace(config, max_log_residual=bound)
    save_checkpoint(target, state_dict, config, {**meta, 'trained_max_log_residual':
                                                 meta.get('trained_max_log_residual', 1.0)})
    print(f'wrote {target} with max_log_residual {bound}')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
