"""Shared test helpers for ROS integration tests.

- `ros_domain`: a ROS_DOMAIN_ID of its own for each test (also exported to subprocesses), with
  discovery limited to this machine.
- `start_node`: starts `cspn_ros.nodes.<name>` as a real subprocess (`demo.NodeProcess`) and
  always stops it (SIGINT, then kill) after the test; its stderr is kept for assertions.
- `ros_node`: an in-process rclpy node spinning in its own thread; `Inbox.wait_for` blocks on a
  condition with a timeout (no sleeps as synchronisation).
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np
import pytest

from cspn_ros.demo import BackgroundNode, NodeProcess

#: ROS_DOMAIN_IDs 1..101 are safe for the default port mapping; the pid spreads parallel runs.
_DOMAIN_IDS = 101
_domain_counter = itertools.count()


@pytest.fixture
def ros_domain(monkeypatch) -> int:
    """A ROS_DOMAIN_ID unique to this test (pid + counter), set in os.environ."""
    domain_id = 1 + (os.getpid() * 7 + next(_domain_counter)) % _DOMAIN_IDS
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain_id))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    monkeypatch.setenv('RCUTILS_LOGGING_BUFFERED_STREAM', '0')
    return domain_id


@pytest.fixture
def start_node(ros_domain, tmp_path):
    """start_node(name, ros_args=(), **parameters) -> NodeProcess; every process is stopped at
    teardown."""
    processes: list[NodeProcess] = []

    def start(name: str, ros_args: Sequence[str] = (), **parameters: Any) -> NodeProcess:
        processes.append(NodeProcess(name, parameters, tmp_path, ros_args=ros_args))
        return processes[-1]

    yield start
    for process in processes:
        process.stop()


class Inbox:
    """Messages received on one topic, with a blocking wait."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self._condition = threading.Condition()

    def add(self, msg: Any) -> None:
        with self._condition:
            self.messages.append(msg)
            self._condition.notify_all()

    def wait_for(self, predicate: Callable[[Any], bool] = lambda msg: True,
                 timeout: float = 10.0) -> Any:
        """The first message (old or new) satisfying predicate; None after timeout seconds."""
        found: list[Any] = []

        def ready() -> bool:
            found[:] = [m for m in self.messages if predicate(m)][:1]
            return bool(found)

        with self._condition:
            self._condition.wait_for(ready, timeout)
        return found[0] if found else None


class RosTestNode(BackgroundNode):
    """An rclpy node in its own context, spun by a background thread, with inboxes."""

    def __init__(self, domain_id: int) -> None:
        super().__init__(f'test_node_{os.getpid()}', domain_id)

    def inbox(self, msg_type: Any, topic: str, qos: Any = 10) -> Inbox:
        """Subscribe topic; received messages collect in the returned Inbox."""
        inbox = Inbox()
        self.node.create_subscription(msg_type, topic, inbox.add, qos)
        return inbox

    def publisher(self, msg_type: Any, topic: str, qos: Any = 10) -> Any:
        return self.node.create_publisher(msg_type, topic, qos)

    def rosout(self) -> Inbox:
        """Inbox of every log record published on /rosout."""
        from rcl_interfaces.msg import Log
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
        return self.inbox(Log, '/rosout', qos)


@pytest.fixture
def ros_node(ros_domain):
    """A RosTestNode in this test's ROS domain."""
    node = RosTestNode(ros_domain)
    yield node
    node.close()


def publish_until(publish: Callable[[int], None], inbox: Inbox,
                  predicate: Callable[[Any], bool] = lambda msg: True, timeout: float = 20.0,
                  period: float = 0.1) -> Any:
    """Call publish(i) for i = 0, 1, ... every `period` s until inbox holds a message satisfying
    predicate (returned) or timeout (None). Publishing repeatedly covers the discovery delay of
    freshly started processes."""
    deadline = time.monotonic() + timeout
    for i in itertools.count():
        publish(i)
        found = inbox.wait_for(predicate, period)
        if found is not None or time.monotonic() > deadline:
            return found


def cspn_loop_reference(init, guidance, sparse, steps, kernel_size, preserve):
    """CSPN as a per-pixel loop in float64, the tests' oracle: '8sum' affinities (raw guidance is
    normalised; an already normalised affinity passes unchanged up to rounding), centre weight
    1 - sum(a) on the initial depth, replicate borders, sparse replacement before and after
    every step."""
    init, guidance, sparse = (np.asarray(t, dtype=np.float64) for t in (init, guidance, sparse))
    batch, _, height, width = init.shape
    radius = kernel_size // 2
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
               if (dy, dx) != (0, 0)]
    depth = init.copy()
    if preserve:
        depth = np.where(sparse > 0, sparse, depth)
    start = depth.copy()
    for _ in range(steps):
        new = np.empty_like(depth)
        for b in range(batch):
            for y in range(height):
                for x in range(width):
                    raw = guidance[b, :, y, x]
                    weights = raw / max(np.abs(raw).sum(), 1e-6)
                    total = 0.0
                    for c, (dy, dx) in enumerate(offsets):
                        ny = min(max(y + dy, 0), height - 1)
                        nx = min(max(x + dx, 0), width - 1)
                        total += weights[c] * depth[b, 0, ny, nx]
                    new[b, 0, y, x] = total + (1.0 - weights.sum()) * start[b, 0, y, x]
        depth = new
        if preserve:
            depth = np.where(sparse > 0, sparse, depth)
    return depth


def plane_depth(width: int, height: int) -> np.ndarray:
    """(H,W) float32 metres of a slanted plane: 4 m at the left edge to ~6 m at the right."""
    return np.tile(4.0 + 2.0 * np.arange(width, dtype=np.float32) / width, (height, 1))


def plane_camera(width: int, height: int) -> 'PinholeCamera':
    """An undistorted pinhole camera, fx = fy = width * 0.8, centred principal point."""
    from cspn_ros.core.camera import PinholeCamera
    f = 0.8 * width
    return PinholeCamera(width, height, K=[[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2],
                                           [0, 0, 1]], D=np.zeros(5))


def plane_points(width: int, height: int, row_step: int = 4, col_step: int = 2,
                 translation=(0.0, 0.0, 0.0)) -> np.ndarray:
    """(N,3) float32 LiDAR points on `plane_depth` through pixel centres of every row_step-th
    row and col_step-th column, in a sensor frame with p_cam = p_sensor + translation."""
    camera = plane_camera(width, height)
    depth = np.zeros((height, width), np.float32)
    depth[::row_step, ::col_step] = plane_depth(width, height)[::row_step, ::col_step]
    points, _ = camera.backproject(depth)
    return (points - np.asarray(translation, np.float32)).astype(np.float32)


def plane_frame(stamp_ns: int, width: int = 64, height: int = 48, tof_scale: int = 1,
                translation=(0.0, 0.0, 0.0), seed: int = 0) -> dict[str, Any]:
    """rclpy messages of one frame of the plane scene, keyed by completion_node topic:
    image (rgb8, 'camera_optical'), camera_info, points ('lidar'), tof/depth (32FC1 of the
    plane, width/tof_scale wide, 'tof_optical') and tof/camera_info."""
    from cspn_ros.core.conversions import depth_fields, image_fields, pointcloud2_fields
    from cspn_ros.nodes.messages import camera_info_msg, header_msg, image_msg, pointcloud2_msg
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    camera_header = header_msg(stamp_ns, 'camera_optical')
    tof_header = header_msg(stamp_ns, 'tof_optical')
    tof_w, tof_h = width // tof_scale, height // tof_scale
    return {
        'image': image_msg(image_fields(rgb, 'rgb8'), camera_header),
        'camera_info': camera_info_msg(plane_camera(width, height), camera_header),
        'points': pointcloud2_msg(pointcloud2_fields(
            plane_points(width, height, translation=translation)), header_msg(stamp_ns, 'lidar')),
        'tof/depth': image_msg(depth_fields(plane_depth(tof_w, tof_h)), tof_header),
        'tof/camera_info': camera_info_msg(plane_camera(tof_w, tof_h), tof_header),
    }


def call_service(ros_node: RosTestNode, srv_type: Any, name: str, request: Any,
                 timeout: float = 20.0) -> Any:
    """Call service `name` from ros_node (waiting for it to appear); the response, or fail."""
    client = ros_node.node.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=timeout), f'service {name} did not appear'
    done = threading.Event()
    future = client.call_async(request)
    future.add_done_callback(lambda _: done.set())
    assert done.wait(timeout), f'no response from {name} within {timeout} s'
    return future.result()


def diagnostic_values(msg: Any) -> dict[str, str]:
    """key -> value of the first status of a diagnostic_msgs/DiagnosticArray."""
    return {kv.key: kv.value for kv in msg.status[0].values}


def diagnostic_level(msg: Any) -> int:
    """Level (0 OK, 1 WARN, 2 ERROR) of the first status of a DiagnosticArray."""
    return msg.status[0].level[0] if isinstance(msg.status[0].level, bytes) else int(
        msg.status[0].level)


class PlaneFramePublisher:
    """Publishes plane-scene frames on image, camera_info and points with increasing stamps;
    `sent` lists the stamps (ns) in order. Call it (any argument is ignored) to send one."""

    def __init__(self, ros_node: Any, width: int, height: int) -> None:
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        self.width, self.height = width, height
        self.publishers = {topic: ros_node.publisher(kind, topic) for topic, kind in
                           (('image', Image), ('camera_info', CameraInfo),
                            ('points', PointCloud2))}
        self._stamps = itertools.count(1_700_000_000 * 10**9, 10**8)
        self.sent: list[int] = []

    def __call__(self, _: Any = None) -> None:
        self.sent.append(next(self._stamps))
        for topic, msg in plane_frame(self.sent[-1], self.width, self.height).items():
            if topic in self.publishers:
                self.publishers[topic].publish(msg)
