"""Time of one optimizer step of the shipped training recipe, without data loading.

`Trainer._train_step` (forward under AMP, frame-RMSE + confidence loss, backward, clipping,
AdamW, schedule) of the shipped model config on batches of random samples: batch 8, 256x320
crops (scripts/train_default.sh), RGB in [0, 255], 5% of the pixels with a depth of 1-20 m,
dense targets of 1-20 m. Median over `--steps` steps after `--warmup`: CUDA events around each
step on a GPU, the wall clock on the CPU. An epoch of N samples needs at least
N / batch x this on one device: the part of an epoch that data loading cannot hide.

    source bench/gpu_env.sh; python3 bench/bench_train_step.py --json $OUT/train_step.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cspn_ros.config import ModelConfig  # noqa: E402
from cspn_ros.train.batching import collate_samples  # noqa: E402
from cspn_ros.train.trainer import Trainer, TrainOptions  # noqa: E402

SHIPPED = ModelConfig(width=16, steps=24, initial_fill='morphological')


def random_samples(count: int, height: int, width: int, rng: np.random.Generator) -> list[dict]:
    """Sample dicts as the bag datasets yield them (data/augment.py's keys)."""
    samples = []
    for _ in range(count):
        sparse = np.where(rng.random((height, width)) < 0.05,
                          rng.uniform(1, 20, (height, width)), 0).astype(np.float32)
        samples.append({'rgb': rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                        'sparse': sparse,
                        'target': rng.uniform(1, 20, (height, width)).astype(np.float32),
                        'K': np.array([[300, 0, width / 2], [0, 300, height / 2], [0, 0, 1]],
                                      np.float32)})
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--crop', default='256x320', help='HxW')
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--json', type=Path)
    args = parser.parse_args()
    height, width = (int(v) for v in args.crop.split('x'))
    samples = random_samples(args.batch * 4, height, width, np.random.default_rng(0))
    batches = [collate_samples(samples[i:i + args.batch])[0]
               for i in range(0, len(samples), args.batch)]
    options = TrainOptions(epochs=1, batch_size=args.batch, depth_loss='frame_rmse',
                           device=args.device, progress=False)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(SHIPPED, options, samples, None, out)
        device = trainer.device
        batches = [{k: v.to(device) for k, v in batch.items()} for batch in batches]
        cuda = device.type == 'cuda'
        times = []
        for step in range(args.warmup + args.steps):
            batch = batches[step % len(batches)]
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                trainer._train_step(batch)
                end.record()
                end.synchronize()
                elapsed = start.elapsed_time(end)
            else:
                begin = time.perf_counter()
                trainer._train_step(batch)
                elapsed = (time.perf_counter() - begin) * 1e3
            if step >= args.warmup:
                times.append(elapsed)
        trainer.close()
    result = {'device': torch.cuda.get_device_name(device) if cuda else platform.processor()
              or 'cpu', 'batch': args.batch, 'crop': [height, width], 'amp': cuda,
              'steps': args.steps, 'step_ms_median': statistics.median(times),
              'step_ms_min': min(times), 'samples_per_s': args.batch * 1e3
              / statistics.median(times)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print('| device | batch | crop | step (ms, median) | samples/s |\n|---|---|---|---|---|')
    print(f"| {result['device']} | {args.batch} | {height}x{width} | "
          f"{result['step_ms_median']:.1f} | {result['samples_per_s']:.0f} |")


if __name__ == '__main__':
    main()
