"""Multi-process DistributedDataParallel training on the CPU (gloo), launched by torchrun."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cspn_ros.data.synthetic_bag import write_synthetic_bag
from cspn_ros.model.checkpoint import load_checkpoint
from cspn_ros.model.completer import DepthCompleter

TORCHRUN = Path(sys.executable).with_name('torchrun')
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not TORCHRUN.is_file(),
                                reason=f'torchrun is not installed next to {sys.executable}')

PROCESSES, BATCH = 2, 2
FRAMES, VAL_FRAMES = 9, 3  # --val-fraction 0.25 holds out ceil(9 / 4) = 3 frames


def _torchrun(bag, out, *extra):
    command = [str(TORCHRUN), '--standalone', '--nproc_per_node', str(PROCESSES), '-m',
               'cspn_ros.nodes.training_node', '--bag', str(bag), '--out', str(out),
               '--supervision', 'dense', '--config', json.dumps({'width': 8, 'steps': 2}),
               '--crop', '32x48', '--batch-size', str(BATCH), '--device', 'cpu',
               '--no-progress', '--val-fraction', '0.25', *extra]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_torchrun_trains_on_disjoint_shares_and_only_rank_zero_writes(tmp_path):
    seed = int(np.random.default_rng().integers(1000))
    bag = write_synthetic_bag(tmp_path / 'bag', 'mcap', num_frames=FRAMES, depth_source='lidar',
                              seed=seed, width=64, height=48, lidar_beams=16)
    out = tmp_path / 'run'
    result = _torchrun(bag, out, '--epochs', '1')
    assert result.returncode == 0, result.stdout + result.stderr
    # Each process trains on its own share of the training frames (DistributedSampler): steps =
    # ceil(samples / (processes x batch)) = 2; were every process to see every frame it would be
    # ceil(6 / 2) = 3, and the summed sample count 12.
    train_frames = FRAMES - VAL_FRAMES
    steps = -(-train_frames // (PROCESSES * BATCH))
    _, config, meta = load_checkpoint(out / 'last.safetensors')
    assert (meta['step'], meta['epoch']) == (steps, 1) and config.width == 8
    # Rank 0 alone reports, validates and writes: one summary, one event file, one checkpoint set.
    assert result.stdout.count('trained to step') == 1
    assert f'trained to step {steps} (epoch 1)' in result.stdout
    assert f'samples trained: {train_frames};' in result.stdout
    assert result.stdout.count('validation:') == 1 and f'frames={VAL_FRAMES}' in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ['best.safetensors', 'last.safetensors',
                                                     'last_state.pt', 'tb']
    assert len(list((out / 'tb').iterdir())) == 1
    completer = DepthCompleter.from_checkpoint(out / 'best.safetensors')
    rng = np.random.default_rng()
    sparse = np.where(rng.random((32, 48)) < 0.1, rng.uniform(1, 20, (32, 48)), 0)
    depth = completer(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8),
                      sparse.astype(np.float32))
    assert depth.shape == (32, 48) and np.all(np.isfinite(depth))
    # Every process resumes from rank 0's files and the step count goes on.
    result = _torchrun(bag, out, '--epochs', '2', '--resume')
    assert result.returncode == 0, result.stdout + result.stderr
    _, _, meta = load_checkpoint(out / 'last.safetensors')
    assert (meta['step'], meta['epoch']) == (2 * steps, 2)
    assert len(list((out / 'tb').iterdir())) == 2  # one event file per run, both from rank 0
