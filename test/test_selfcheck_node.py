"""The live self-check over DDS: a completion node with an untrained (random weights) model and
`fallback: classical`, fed by the synthetic source, switches to the classical fill within a few
frames, says so on /diagnostics (WARN, rolling errors) and warns once in its log."""
import numpy as np
from conftest import diagnostic_level, diagnostic_values
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image

from cspn_ros.core.conversions import image_to_array, stamp_to_ns
from cspn_ros.core.diagnostics import WARN
from cspn_ros.core.selfcheck import HeldOutPoints
from cspn_ros.data.synthetic import DEFAULT_LIDAR_ROTATION, DEFAULT_LIDAR_TRANSLATION
from cspn_ros.model.completer import DepthCompleter

W, H = 96, 72
SHARE = 0.05


def test_an_untrained_model_is_replaced_by_the_classical_fill(start_node, ros_node):
    rosout = ros_node.rosout()
    diagnostics = ros_node.inbox(DiagnosticArray, '/diagnostics')
    depth = ros_node.inbox(Image, 'depth')
    sparse = ros_node.inbox(Image, 'depth/sparse')
    start_node('synthetic_source_node', rate=4.0, width=W, height=H, lidar_beams=32,
               publish_tof=False)
    node = start_node('completion_node', model_config='{"width": 8, "steps": 2}',
                      fallback='classical', publish_sparse=True, max_depth=100.0, **{
                          'self_check.holdout_share': SHARE, 'self_check.classical_every': 1,
                          'self_check.min_frames': 3, 'extrinsic.from_tf': False,
                          'extrinsic.translation': list(DEFAULT_LIDAR_TRANSLATION),
                          'extrinsic.rotation': list(DEFAULT_LIDAR_ROTATION)})

    def falling_back(msg) -> bool:
        values = diagnostic_values(msg)
        return values.get('self-check publishing') == 'classical fill'

    warned = diagnostics.wait_for(falling_back, timeout=120.0)
    assert warned is not None, node.log()
    assert diagnostic_level(warned) >= WARN and 'classical fill' in warned.status[0].message
    values = diagnostic_values(warned)
    assert int(values['self-check frames in window']) <= 6  # within a few frames
    model_rmse = float(values['self-check model RMSE (m)'])
    classical_rmse = float(values['self-check classical RMSE (m)'])
    assert np.isfinite(classical_rmse) and model_rmse > classical_rmse
    assert float(values['self-check model MAE (m)']) > float(values['self-check classical MAE (m)'])

    # A frame captured after the switch was reported (each frame's output is decided by the
    # scores of earlier frames): its depth is the classical fill of the model's input, i.e. of
    # the projected points (depth/sparse) without the held-out share.
    after = max(stamp_to_ns(warned.header.stamp),
                stamp_to_ns(depth.messages[-1].header.stamp) if depth.messages else 0)
    published = depth.wait_for(lambda m: stamp_to_ns(m.header.stamp) > after, timeout=60.0)
    assert published is not None, node.log()
    stamp = stamp_to_ns(published.header.stamp)
    projected = sparse.wait_for(lambda m: stamp_to_ns(m.header.stamp) == stamp, timeout=30.0)
    assert projected is not None, node.log()
    model_input, held_out = HeldOutPoints(SHARE).split(
        np.nan_to_num(image_to_array(projected)).astype(np.float32), stamp)
    assert np.count_nonzero(held_out) > 0
    fill = DepthCompleter.from_config('classical').complete(
        np.zeros((H, W, 3), np.uint8), model_input).depth
    np.testing.assert_array_equal(np.nan_to_num(image_to_array(published)), fill)

    warnings = [m.msg for m in rosout.messages if 'worse than the classical fill' in m.msg]
    assert len(warnings) == 1, warnings
