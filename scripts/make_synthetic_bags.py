#!/usr/bin/env python3
"""Write a varied set of synthetic rosbag2 files (training or held-out evaluation data).

Each bag is one SyntheticScene (its own seed, indoor or outdoor, 16/32/64 LiDAR beams) with ground
truth, /odom and /tf_static. Indoor bags record the LiDAR and the ToF camera; outdoor bags only the
LiDAR (the ToF's 8 m range sees almost none of a street, so its frames would ask a model to invent
depth it cannot observe). Bags are written in parallel.

    python3 scripts/make_synthetic_bags.py --out bags/train --bags 16 --frames 40 --first-seed 0
    python3 scripts/make_synthetic_bags.py --out bags/heldout --bags 4 --first-seed 1000
"""
import argparse
import itertools
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cspn_ros.data.synthetic_bag import write_synthetic_bag

SCENES = ('outdoor', 'indoor')
DEPTH_SOURCES = {'outdoor': 'lidar', 'indoor': 'both'}
BEAMS = (64, 32, 16)


def bag_recipes(count: int, first_seed: int, frames: int, storage: str, width: int, height: int):
    """(path name, write_synthetic_bag kwargs) for `count` bags cycling scenes and beam counts."""
    variants = itertools.cycle(itertools.product(SCENES, BEAMS))
    for index, (scene, beams) in zip(range(count), variants):
        seed = first_seed + index
        yield (f'{scene}_{beams}b_seed{seed}',
               dict(storage=storage, num_frames=frames, seed=seed, scene=scene,
                    depth_source=DEPTH_SOURCES[scene],
                    lidar_beams=beams, width=width, height=height))


def write_one(out: Path, name: str, kwargs: dict) -> str:
    """Write one bag; an existing bag of that name is kept (bags are deterministic per recipe)."""
    if not (out / name).exists():
        write_synthetic_bag(out / name, **kwargs)
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, type=Path)
    parser.add_argument('--bags', type=int, default=8)
    parser.add_argument('--frames', type=int, default=40)
    parser.add_argument('--first-seed', type=int, default=0)
    parser.add_argument('--storage', choices=('sqlite3', 'mcap'), default='mcap')
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--jobs', type=int, default=8)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    recipes = list(bag_recipes(args.bags, args.first_seed, args.frames, args.storage,
                               args.width, args.height))
    with ProcessPoolExecutor(args.jobs) as pool:
        for name in pool.map(write_one, [args.out] * len(recipes), *zip(*recipes)):
            print('wrote', args.out / name, flush=True)


if __name__ == '__main__':
    main()
