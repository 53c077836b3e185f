"""Depth data already in the camera frame (its frame_id is the image's) needs no tf and no
extrinsic: tf is not asked, bags without that transform evaluate and train, and the live node
projects such a cloud as it is."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import plane_camera, plane_frame, plane_points, publish_until
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from cspn_ros.core.conversions import image_to_array, pointcloud2_fields
from cspn_ros.core.extrinsic import TfExtrinsic, same_frame
from cspn_ros.core.pipeline import InputError
from cspn_ros.core.projection import project_to_sparse_depth
from cspn_ros.data.synthetic_bag import write_synthetic_bag
from cspn_ros.nodes.messages import header_msg, pointcloud2_msg

W, H = 48, 36
START_NS = 1_700_000_000 * 10**9


def test_tf_is_not_asked_for_a_frame_into_itself():
    asked = []

    def lookup(target, source):
        asked.append((target, source))
        raise LookupError(f'frame {source} does not exist')

    extrinsic = TfExtrinsic(lookup, log=lambda text: None)
    np.testing.assert_array_equal(extrinsic.for_frames('camera_optical', 'camera_optical'),
                                  np.eye(4))
    np.testing.assert_array_equal(extrinsic.for_frames('/camera_optical', 'camera_optical'),
                                  np.eye(4))
    assert asked == []
    with pytest.raises(InputError, match='no tf camera_optical <- lidar'):
        extrinsic.for_frames('camera_optical', 'lidar')
    assert asked == [('camera_optical', 'lidar')]
    assert not same_frame('', '') and not same_frame('camera', 'lidar')


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    """The same scene recorded with its cloud in the LiDAR frame (+ /tf_static) and in the
    camera frame (no LiDAR transform at all)."""
    root = tmp_path_factory.mktemp('same_frame')
    scene = dict(num_frames=4, width=80, height=60, lidar_beams=16, depth_source='lidar',
                 seed=int(np.random.default_rng().integers(99)))
    return (write_synthetic_bag(root / 'lidar_frame', 'sqlite3', **scene),
            write_synthetic_bag(root / 'camera_frame', 'sqlite3', cloud_in_camera_frame=True,
                                **scene))


def test_evaluate_and_training_take_a_cloud_in_the_camera_frame_without_tf(bags, tmp_path):
    from cspn_ros.nodes.evaluate import main as evaluate_main
    from cspn_ros.nodes.training_node import main as training_main
    summaries = []
    for bag in bags:
        out = tmp_path / bag.name
        assert evaluate_main(['--bag', str(bag), '--checkpoint', 'classical', '--gt-topic',
                              '/ground_truth/depth', '--out', str(out)]) == 0
        summaries.append(json.loads((out / 'summary.json').read_text())['model'])
    assert summaries[1]['frames'] == 4
    for key in ('rmse', 'mae', 'd125'):  # the same points, moved by the recorded extrinsic
        assert summaries[1][key] == pytest.approx(summaries[0][key], rel=1e-4, abs=1e-6)
    assert training_main(['--bag', str(bags[1]), '--out', str(tmp_path / 'train'),
                          '--supervision', 'lidar-holdout', '--config',
                          json.dumps({'width': 8, 'steps': 2}), '--crop', '48x64',
                          '--batch-size', '2', '--epochs', '1', '--device', 'cpu',
                          '--no-progress', '--val-fraction', '0.25']) == 0
    assert (tmp_path / 'train' / 'last.safetensors').is_file()


def test_node_projects_a_cloud_in_the_camera_frame_without_tf(start_node, ros_node):
    node = start_node('completion_node', checkpoint='classical', publish_sparse=True)
    publishers = {topic: ros_node.publisher(kind, topic) for topic, kind in
                  (('image', Image), ('camera_info', CameraInfo), ('points', PointCloud2))}
    sparse_inbox = ros_node.inbox(Image, 'depth/sparse')
    points = plane_points(W, H)  # p_cam = p_sensor: already in the camera optical frame

    def publish(i: int) -> None:
        stamp = START_NS + i * 10**8
        msgs = plane_frame(stamp, W, H)
        msgs['points'] = pointcloud2_msg(pointcloud2_fields(points),
                                         header_msg(stamp, msgs['image'].header.frame_id))
        for topic, publisher in publishers.items():
            publisher.publish(msgs[topic])

    sparse = publish_until(publish, sparse_inbox, timeout=40)
    assert sparse is not None, node.log()
    expected = project_to_sparse_depth(points, np.eye(4), plane_camera(W, H), 0.1, 100.0)
    np.testing.assert_allclose(np.nan_to_num(image_to_array(sparse)), expected, rtol=1e-6)
    assert node.stop() == 0 and 'Traceback' not in node.log()
