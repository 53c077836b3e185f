"""synthetic_source_node: the embedded default sensor rig (camera + LiDAR + ToF + ground truth).

Frames come from `data.synthetic.SyntheticScene`; a producer thread renders them ahead (rendering
can take longer than a timer period) and the timer publishes the next one, stamped with the node
clock (sim time aware). Topics (relative): `image` (rgb8), `camera_info` ('camera_optical'),
`points` ('lidar'), `tof/depth` (32FC1 metres, NaN invalid) + `tof/camera_info` ('tof_optical'),
`ground_truth/depth` (32FC1, colour camera). The sensors' poses are the scene defaults
(`DEFAULT_LIDAR_*`, `DEFAULT_TOF_*` in data/synthetic.py), broadcast once on /tf_static
('camera_optical' <- 'lidar', 'camera_optical' <- 'tof_optical') where tf2_ros is installed, so
completion_node with extrinsic.from_tf finds them; without tf2_ros give completion_node the
same values as extrinsic.* parameters (the demo does).

With `cameras` N > 1 it publishes a ring of N colour cameras evenly spaced in yaw around the
LiDAR (nuScenes-like; `SyntheticScene.ring_extrinsics`): camera k on `camera<k>/image`,
`camera<k>/camera_info`, `camera<k>/ground_truth/depth` (frame 'camera<k>_optical'), one cloud
on `points`, no ToF; /tf_static holds 'lidar' -> 'camera<k>_optical'. `ring_poses()` gives the
poses completion_node takes as `camera<k>.extrinsic.*` parameters without tf.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Optional

import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from cspn_ros.core.conversions import depth_fields, image_fields, pointcloud2_fields
from cspn_ros.core.projection import quaternion_from_rotation
from cspn_ros.core.topics import FRAME_IDS, TOPICS
from cspn_ros.data.synthetic import SCENES, SyntheticScene
from cspn_ros.nodes.messages import (camera_info_msg, header_msg, image_msg, pointcloud2_msg,
                                     transform_stamped_msg)
from cspn_ros.nodes.spin import run

try:  # a real ROS 2 install has tf2_ros; the PyPI wheels used in .venv do not
    import tf2_ros
except ImportError:
    tf2_ros = None

#: Frames rendered ahead of the timer.
PREFETCH = 2


def _descriptor(description: str, low: Optional[float] = None, high: Optional[float] = None,
                integer: bool = False) -> ParameterDescriptor:
    if low is None:
        return ParameterDescriptor(description=description, read_only=True)
    if integer:
        return ParameterDescriptor(description=description, read_only=True, integer_range=[
            IntegerRange(from_value=int(low), to_value=int(high), step=1)])
    return ParameterDescriptor(description=description, read_only=True, floating_point_range=[
        FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)])


def ring_topic(camera: Optional[int], topic: str) -> str:
    """The topic of ring camera `camera` ('camera<k>/<topic>'); `topic` itself for None (no
    ring)."""
    return topic if camera is None else f'camera{camera}/{topic}'


def ring_frame(camera: int) -> str:
    """The optical frame id of ring camera `camera`."""
    return f'camera{camera}_optical'


def ring_poses(scene: SyntheticScene, cameras: int) -> dict[str, dict[str, list[float]]]:
    """completion_node parameters for a ring without tf: {'camera<k>.extrinsic.translation':
    [x, y, z], '...rotation': [qx, qy, qz, qw]}, each camera's pose in the LiDAR frame (the
    rig's base)."""
    poses = {}
    for k, T in enumerate(scene.ring_extrinsics(cameras)):
        poses[f'camera{k}.extrinsic.translation'] = [float(v) for v in T[:3, 3]]
        poses[f'camera{k}.extrinsic.rotation'] = [float(v) for v in
                                                  quaternion_from_rotation(T[:3, :3])]
    return poses


class SyntheticSourceNode(Node):
    """Publishes SyntheticScene frames at `rate` Hz (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('synthetic_source_node', **kwargs)
        declare = self.declare_parameter
        rate = declare('rate', 10.0, _descriptor('frames per second', 0.1, 100.0)).value
        width = declare('width', 320, _descriptor('colour image width (px)', 16, 4096, True)).value
        height = declare('height', 240, _descriptor('colour image height (px)', 16, 4096,
                                                    True)).value
        beams = declare('lidar_beams', 64, _descriptor('LiDAR beams: 16, 32 or 64', 16, 64,
                                                       True)).value
        scene = declare('scene', 'outdoor', _descriptor('outdoor (1-60 m) or indoor (0.5-8 m)')
                        ).value
        seed = declare('seed', 0, _descriptor('scene layout and noise seed', 0, 2**31 - 1,
                                              True)).value
        self.num_frames = declare('num_frames', 0, _descriptor(
            'frames to publish, then idle (0 = forever)', 0, 2**31 - 1, True)).value
        self.publish_lidar = declare('publish_lidar', True, _descriptor('publish points')).value
        self.publish_tof = declare('publish_tof', True, _descriptor(
            'publish tof/depth and tof/camera_info')).value
        self.cameras = declare('cameras', 1, _descriptor(
            'colour cameras: 1, or a ring of N around the LiDAR (no ToF)', 1, 12, True)).value
        if self.cameras > 1:
            self.publish_tof = False
        if beams not in (16, 32, 64):
            raise ValueError(f'lidar_beams must be 16, 32 or 64, got {beams}')
        if scene not in SCENES:
            raise ValueError(f'scene must be one of {SCENES}, got {scene!r}')
        self.scene = SyntheticScene(seed=seed, width=width, height=height, lidar_beams=beams,
                                    scene=scene, rate_hz=rate, tof_width=max(16, width // 2),
                                    tof_height=max(16, height // 2))

        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
        self.ring = self.scene.ring_extrinsics(self.cameras) if self.cameras > 1 else []
        topics = {ring_topic(k if self.ring else None, TOPICS[key]): msg_type
                  for k in range(self.cameras)
                  for key, msg_type in (('image', Image), ('camera_info', CameraInfo),
                                        ('ground_truth', Image))}
        if self.publish_lidar:
            topics[TOPICS['points']] = PointCloud2
        if self.publish_tof:
            topics.update({TOPICS['tof_depth']: Image, TOPICS['tof_camera_info']: CameraInfo})
        self.publishers_by_topic = {topic: self.create_publisher(msg_type, topic, qos)
                                    for topic, msg_type in topics.items()}

        header = header_msg(self.get_clock().now().nanoseconds, FRAME_IDS['camera'])
        self.static_transforms = [transform_stamped_msg(T, header, child) for child, T in
                                  self.scene.sensor_extrinsics(self.publish_lidar,
                                                               self.publish_tof).items()]
        if self.ring:
            header = header_msg(header.stamp.sec * 10**9 + header.stamp.nanosec,
                                FRAME_IDS['lidar'])
            self.static_transforms = [transform_stamped_msg(T, header, ring_frame(k))
                                      for k, T in enumerate(self.ring)]
        if tf2_ros is not None:
            self._static_broadcaster = tf2_ros.StaticTransformBroadcaster(self)
            self._static_broadcaster.sendTransform(self.static_transforms)
        else:
            self.get_logger().info('tf2_ros is not installed: the rig is not on /tf_static '
                                   '(give completion_node the extrinsic.* parameters)')

        self.frames_published = 0
        self.ticks_missed = 0
        self._ready: queue.Queue = queue.Queue(maxsize=PREFETCH)
        self._stop = threading.Event()
        self._producer = threading.Thread(target=self._render, name='synthetic_render',
                                          daemon=True)
        self._producer.start()
        self._timer = self.create_timer(1.0 / rate, self._publish_next)
        self.get_logger().info(f'publishing a {scene} scene at {rate:g} Hz, {width}x{height}, '
                               f'{beams}-beam LiDAR: {", ".join(topics)}')

    def _render(self) -> None:
        """Producer thread: build the messages of frame 0, 1, ... into the prefetch queue."""
        index = 0
        while not self._stop.is_set() and (self.num_frames == 0 or index < self.num_frames):
            messages = self._messages(self.scene.frame(index))
            while not self._stop.is_set():
                try:
                    self._ready.put(messages, timeout=0.1)
                    break
                except queue.Full:
                    continue
            index += 1

    def _messages(self, frame: Any) -> dict[str, tuple[Any, str]]:
        """topic -> (message without stamp, frame id) for one SyntheticFrame."""
        blank = header_msg(0, '')
        camera, lidar, tof = FRAME_IDS['camera'], FRAME_IDS['lidar'], FRAME_IDS['tof']
        messages = {}
        for k in range(self.cameras):
            rgb, depth = (frame.rgb, frame.depth) if k == 0 else self.scene.view(
                frame.index, np.linalg.inv(self.ring[0]) @ self.ring[k])
            frame_id, ring = (ring_frame(k), k) if self.ring else (camera, None)
            for key, msg in (('image', image_msg(image_fields(rgb, 'rgb8'), blank)),
                             ('camera_info', camera_info_msg(frame.camera, blank)),
                             ('ground_truth', image_msg(depth_fields(depth), blank))):
                messages[ring_topic(ring, TOPICS[key])] = (msg, frame_id)
        if self.publish_lidar:
            messages[TOPICS['points']] = (pointcloud2_msg(pointcloud2_fields(frame.lidar_points),
                                                          blank), lidar)
        if self.publish_tof:
            messages[TOPICS['tof_depth']] = (image_msg(depth_fields(frame.tof_depth), blank), tof)
            messages[TOPICS['tof_camera_info']] = (camera_info_msg(frame.tof_camera, blank), tof)
        return messages

    def _publish_next(self) -> None:
        """Timer: publish the next rendered frame, all topics with one stamp (clock now)."""
        if self.num_frames and self.frames_published >= self.num_frames:
            self._timer.cancel()
            self.get_logger().info(f'published {self.frames_published} frames; idle')
            return
        try:
            messages = self._ready.get_nowait()
        except queue.Empty:
            if self.frames_published:  # the first frame is still rendering: not a miss
                self.ticks_missed += 1
                self.get_logger().warning('rendering is slower than the rate: tick skipped',
                                          throttle_duration_sec=5.0)
            return
        stamp_ns = self.get_clock().now().nanoseconds
        for topic, (msg, frame_id) in messages.items():
            msg.header = header_msg(stamp_ns, frame_id)
            self.publishers_by_topic[topic].publish(msg)
        self.frames_published += 1

    def destroy_node(self) -> None:
        """Stop the producer thread, then the node; also for a node whose construction was
        interrupted (Ctrl-C at start-up) before its thread started."""
        stop, producer = getattr(self, '_stop', None), getattr(self, '_producer', None)
        if stop is not None:
            stop.set()
        if producer is not None and producer.ident is not None:
            producer.join(timeout=10.0)
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of `synthetic_source_node`."""
    return run(SyntheticSourceNode, 'synthetic_source_node', args)


if __name__ == '__main__':
    raise SystemExit(main())
