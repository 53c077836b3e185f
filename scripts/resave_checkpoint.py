#!/usr/bin/env python3
"""Re-save a checkpoint through the project's writer (`save_checkpoint`), so that it carries the
content hash that loading verifies; weights, config and meta are kept bit for bit.

    python3 scripts/resave_checkpoint.py cspn_ros/weights/default.safetensors   # in place
    python3 scripts/resave_checkpoint.py old.pt new.safetensors
"""
import argparse
import sys

import torch

from cspn_ros.model.checkpoint import load_checkpoint, save_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('checkpoint', help='.safetensors or .pt checkpoint to read')
    parser.add_argument('out', nargs='?', help='where to write it (default: in place)')
    args = parser.parse_args()
    state_dict, config, meta = load_checkpoint(args.checkpoint)
    out = save_checkpoint(args.out or args.checkpoint, state_dict, config, meta)
    saved, saved_config, saved_meta = load_checkpoint(out)  # verifies the new hash
    assert saved_config == config and saved_meta == meta and saved.keys() == state_dict.keys()
    assert all(torch.equal(saved[key], state_dict[key]) for key in state_dict)
    print(f'{out}: {len(saved)} tensors, content hash verified')
    return 0


if __name__ == '__main__':
    sys.exit(main())
