"""scripts/set_model_config.py: inference-time config fields of a checkpoint, weights kept."""
import subprocess
import sys
from pathlib import Path

import torch

from cspn_ros.config import ModelConfig
from cspn_ros.model.checkpoint import load_checkpoint, save_checkpoint
from cspn_ros.model.network import CompletionNet

SCRIPT = Path(__file__).resolve().parents[1] / 'scripts' / 'set_model_config.py'


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True)


def test_fields_change_and_weights_stay(tmp_path):
    config = ModelConfig(width=8, steps=2, initial_fill='morphological', residual='log')
    state = CompletionNet(config).state_dict()
    source, target = tmp_path / 'in.safetensors', tmp_path / 'out.safetensors'
    save_checkpoint(source, state, config, {'step': 7})
    result = run(source, target, 'max_log_residual=0.1', 'input_bound=0.5')
    assert result.returncode == 0, result.stderr
    weights, changed, meta = load_checkpoint(target)
    assert (changed.max_log_residual, changed.input_bound) == (0.1, 0.5)
    assert changed.initial_fill == 'morphological' and meta['step'] == 7
    assert meta['trained_max_log_residual'] == 1.0
    assert all(torch.equal(weights[name], value) for name, value in state.items())
    assert run(source, target, 'width=16').returncode == 2  # changes what the weights mean
    assert run(source, target, 'input_bound=-1').returncode != 0
