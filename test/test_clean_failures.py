"""completion_node fails cleanly (issue 12): start-up problems end in one FATAL line and exit 1
without a cleanup traceback (bad parameters, unreadable model configs, corrupt checkpoints,
oversized warm-up), and a model whose output is mostly non-finite fails its frames (counted,
logged, diagnostic ERROR) instead of publishing them. Real processes over DDS."""
from __future__ import annotations

import json

import numpy as np
from conftest import diagnostic_level, diagnostic_values, plane_frame, publish_until
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Log
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from cspn_ros.config import FORMAT_VERSION, ModelConfig
from cspn_ros.core.diagnostics import ERROR
from cspn_ros.demo import NodeProcess
from cspn_ros.model.checkpoint import save_checkpoint
from cspn_ros.model.network import CompletionNet

SMALL = ModelConfig(width=8, steps=2)


def small_weights(value=None):
    """State dict of a small CompletionNet, its float tensors filled with value (if given)."""
    state = CompletionNet(SMALL).state_dict()
    if value is not None:
        for tensor in state.values():
            if tensor.is_floating_point():
                tensor.fill_(value)
    return state


def flip_bytes(path, count=2000, seed=0):
    """Flip `count` bytes inside the tensor data of a .safetensors file."""
    raw = bytearray(path.read_bytes())
    data_start = 8 + int.from_bytes(raw[:8], 'little')
    rng = np.random.default_rng(seed)
    for position in rng.choice(np.arange(data_start, len(raw)), count, replace=False):
        raw[position] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_start_up_problems_end_in_one_fatal_line(ros_domain, tmp_path):
    """One process per failure path: parameter declaration (ranges), configure after the model
    loaded (min_depth; a bad extrinsic fails at the same point), the model config file, the
    checkpoint (non-finite weights are refused by the same loader: test_checkpoint.py) and
    the warm-up size."""
    flipped = save_checkpoint(tmp_path / 'flipped.safetensors', small_weights(), SMALL)
    flip_bytes(flipped)
    classical = {'checkpoint': 'classical'}
    cases = {
        'slop out of range': {'slop': -1.0},
        'min_depth (200.0) must be below max_depth': {**classical, 'min_depth': 200.0},
        'does not hold a mapping of model config keys': {'model_config': '/etc/passwd'},
        'content does not match its hash': {'checkpoint': str(flipped)},
        'warmup_size is 5000x10, larger than max_image_size': {**classical,
                                                               'warmup_size': [5000, 10]},
    }
    processes = {}
    try:
        for i, (text, parameters) in enumerate(cases.items()):  # started together: faster
            workdir = tmp_path / f'case{i}'
            workdir.mkdir()
            processes[text] = NodeProcess('completion_node', parameters, workdir)
        for text, process in processes.items():
            process.process.wait(timeout=120)
            log = process.log()
            assert process.process.returncode == 1, (text, log)
            fatal = [line for line in log.splitlines() if '[FATAL]' in line]
            assert len(fatal) == 1 and text in fatal[0], (text, log)
            assert 'Traceback' not in log, (text, log)
    finally:
        for process in processes.values():
            process.stop()


def test_mostly_non_finite_model_output_is_a_failed_frame_not_an_image(start_node, ros_node,
                                                                         tmp_path):
    # An older checkpoint (no content hash: it loads, with a warning) with finite weights so
    # large that the network returns NaN everywhere but at the kept input pixels.
    from safetensors.torch import save_file
    path = tmp_path / 'overflowing.safetensors'
    save_file(small_weights(1e38), str(path), metadata={
        'format_version': str(FORMAT_VERSION), 'config': json.dumps(SMALL.to_dict())})
    node = start_node('completion_node', checkpoint=str(path), input_timeout=1.0, device='cpu')
    publishers = {topic: ros_node.publisher(kind, topic) for topic, kind in
                  (('image', Image), ('camera_info', CameraInfo), ('points', PointCloud2))}
    depth, rosout = ros_node.inbox(Image, 'depth'), ros_node.rosout()
    diagnostics = ros_node.inbox(DiagnosticArray, '/diagnostics')

    def publish(i):
        for topic, msg in plane_frame(1_700_000_000 * 10**9 + i * 10**8).items():
            if topic in publishers:
                publishers[topic].publish(msg)

    logged = publish_until(publish, rosout, lambda m: m.level == Log.ERROR
                           and 'frame failed: the model returned' in m.msg
                           and 'non-finite depth' in m.msg, timeout=60)
    assert logged is not None, node.log()
    status = publish_until(publish, diagnostics, lambda m: diagnostic_level(m) == ERROR
                           and int(diagnostic_values(m)['failed']) > 0, timeout=30)
    assert status is not None, node.log()
    assert 'non-finite depth' in diagnostic_values(status)['last error']
    assert int(diagnostic_values(status)['published']) == 0 and not depth.messages
    assert node.stop() == 0
    assert 'has no content hash' in node.log() and 'Traceback' not in node.log()

