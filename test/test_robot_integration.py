"""completion_node dropped into a robot (issue 15), as real processes over DDS: rectified vs raw
input on a distorted camera, depth/camera_info beside every depth image, a namespaced node
loading the shipped parameter file, diagnostics named by the node's fully qualified name, and
the extrinsic precedence where tf2_ros is not installed (this .venv).
"""
from __future__ import annotations

import itertools
import platform
import re
import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import call_service, publish_until
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import GetParameters
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from cspn_ros.core.camera import PinholeCamera
from cspn_ros.core.conversions import image_fields, image_to_array, pointcloud2_fields
from cspn_ros.core.projection import project_to_sparse_depth
from cspn_ros.nodes.messages import camera_info_msg, header_msg, image_msg, pointcloud2_msg

ROOT = Path(__file__).resolve().parents[1]
W, H = 64, 48
START_NS = 1_700_000_000 * 10**9


def distorted_camera(scale: int = 1) -> PinholeCamera:
    """A strongly barrel-distorted camera (plumb_bob) whose rectified projection P has a shorter
    focal length and an offset principal point, calibrated at scale x the image size."""
    w, h = W * scale, H * scale
    K = [[0.8 * w, 0, (w - 1) / 2], [0, 0.8 * w, (h - 1) / 2], [0, 0, 1]]
    P = [[0.6 * w, 0, 0.45 * w, 0], [0, 0.6 * w, 0.55 * h, 0], [0, 0, 1, 0]]
    return PinholeCamera(w, h, K=K, D=[-0.35, 0.12, 0.0, 0.0, 0.0], distortion_model='plumb_bob',
                         P=P)


def grid_points() -> np.ndarray:
    """(N,3) float32 points on a slanted plane 4-6 m ahead, wider than the field of view."""
    x, y = np.meshgrid(np.linspace(-4, 4, 41), np.linspace(-3, 3, 31))
    z = 5.0 + 0.2 * x
    return np.stack([x.ravel(), y.ravel(), z.ravel()], 1).astype(np.float32)


def publisher_of_frames(ros_node, info: CameraInfo, prefix: str = ''):
    """publish(i): image, camera_info and points (frame 'lidar', identity extrinsic) of frame i
    on `prefix`-ed topics."""
    publishers = {topic: ros_node.publisher(kind, prefix + topic) for topic, kind in
                  (('image', Image), ('camera_info', CameraInfo), ('points', PointCloud2))}
    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    cloud = pointcloud2_fields(grid_points())

    def publish(i: int) -> None:
        stamp = START_NS + i * 10**8
        camera_header = header_msg(stamp, 'camera_optical')
        info.header = camera_header
        publishers['image'].publish(image_msg(image_fields(rgb, 'rgb8'), camera_header))
        publishers['camera_info'].publish(info)
        publishers['points'].publish(pointcloud2_msg(cloud, header_msg(stamp, 'lidar')))
    return publish


@pytest.mark.parametrize('rectified, info_scale', [(False, 1), (True, 2)])
def test_rectified_or_raw_input_and_depth_camera_info(start_node, ros_node, rectified,
                                                       info_scale):
    """The sparse input lands where the camera model of the chosen geometry puts it (raw: K + D;
    rectified: P), and depth/camera_info describes the published depth image, scaled to it."""
    camera = distorted_camera(info_scale)
    info = camera_info_msg(camera, header_msg(0, 'camera_optical'))
    node = start_node('completion_node', checkpoint='classical', publish_sparse=True,
                      rectified=rectified, **{'extrinsic.from_tf': False})
    inboxes = {'depth': ros_node.inbox(Image, 'depth'),
               'depth/sparse': ros_node.inbox(Image, 'depth/sparse'),
               'depth/camera_info': ros_node.inbox(CameraInfo, 'depth/camera_info')}

    def with_companions(depth) -> bool:
        return all(inboxes[t].wait_for(lambda m: m.header == depth.header, 0)
                   for t in ('depth/sparse', 'depth/camera_info'))

    depth = publish_until(publisher_of_frames(ros_node, info), inboxes['depth'],
                          with_companions, timeout=60)
    assert depth is not None, node.log()
    sparse_msg, depth_info = (inboxes[t].wait_for(lambda m: m.header == depth.header, 0)
                              for t in ('depth/sparse', 'depth/camera_info'))

    expected = {flag: project_to_sparse_depth(
        grid_points(), np.eye(4), PinholeCamera.from_camera_info(info, rectified=flag).scaled(
            W, H), min_depth=0.1, max_depth=100.0) for flag in (False, True)}
    assert (expected[True] > 0).sum() > 50
    assert not np.array_equal(expected[True] > 0, expected[False] > 0)
    sparse = image_to_array(sparse_msg)
    np.testing.assert_array_equal(np.isfinite(sparse), expected[rectified] > 0)
    np.testing.assert_allclose(sparse[np.isfinite(sparse)],
                               expected[rectified][expected[rectified] > 0], rtol=1e-6)

    assert depth_info.header == depth.header
    assert (depth_info.width, depth_info.height) == (depth.width, depth.height) == (W, H)
    scaled = camera.scaled(W, H)
    np.testing.assert_allclose(np.reshape(depth_info.k, (3, 3)), scaled.K, atol=1e-9)
    np.testing.assert_allclose(np.reshape(depth_info.p, (3, 4)), scaled.P, atol=1e-9)
    np.testing.assert_allclose(depth_info.d, camera.D)
    assert depth_info.distortion_model == 'plumb_bob'


def shipped_parameters_with(tmp_path: Path, **changes: str) -> Path:
    """config/completion.yaml as shipped (its `/**` key untouched) with the value of each
    `name: value` line in changes replaced; the copy's path."""
    text = (ROOT / 'config' / 'completion.yaml').read_text()
    for name, value in changes.items():
        text, count = re.subn(rf'^(\s+{re.escape(name)}:) [^#\n]*?(\s*(#.*)?)$',
                              rf'\g<1> {value}\g<2>', text, flags=re.MULTILINE)
        assert count == 1, name
    path = tmp_path / 'completion.yaml'
    path.write_text(text)
    return path


def test_namespaced_node_loads_the_shipped_file_and_names_its_diagnostics(start_node, ros_node,
                                                                          tmp_path):
    params_file = shipped_parameters_with(tmp_path, checkpoint='classical', max_depth='42.0')
    node = start_node('completion_node', ros_args=['-r', '__ns:=/robot',
                                                   '--params-file', str(params_file)])
    response = call_service(ros_node, GetParameters, '/robot/completion_node/get_parameters',
                            GetParameters.Request(names=['max_depth', 'checkpoint']), timeout=60)
    assert [v.double_value for v in response.values[:1]] == [42.0], node.log()
    assert response.values[1].string_value == 'classical'

    # Inputs and outputs live in the namespace; the depth flows from the parameter extrinsic,
    # since tf2_ros is not installed here (the node says so at start).
    depth_inbox = ros_node.inbox(Image, '/robot/depth')
    info = camera_info_msg(distorted_camera(), header_msg(0, 'camera_optical'))
    depth = publish_until(publisher_of_frames(ros_node, info, prefix='/robot/'), depth_inbox,
                          timeout=60)
    assert depth is not None, node.log()
    assert 'tf2_ros is not installed (pip-only install): using the extrinsic.* parameters' in (
        node.log())

    diagnostics = ros_node.inbox(DiagnosticArray, '/diagnostics')
    status_of = itertools.chain.from_iterable
    found = diagnostics.wait_for(lambda m: any(
        s.name == '/robot/completion_node: depth completion' for s in m.status), timeout=30)
    assert found is not None, [s.name for s in status_of(m.status for m in diagnostics.messages)]
    assert found.status[0].hardware_id == f'{socket.gethostname()}/cpu {platform.machine()}'
