"""completion_node under bad input: a clear throttled log line, nothing wrong published, and the
next good frame still completes. One node process per depth source runs every case in turn."""
from __future__ import annotations

import itertools

import numpy as np
from conftest import plane_camera, plane_depth, plane_frame, publish_until
from rcl_interfaces.msg import Log
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from cspn_ros.core.conversions import depth_fields, pointcloud2_fields, stamp_to_ns
from cspn_ros.nodes.messages import camera_info_msg, image_msg, pointcloud2_msg

W, H = 48, 36
START_NS = 1_700_000_000 * 10**9
INPUT_TYPES = {'image': Image, 'camera_info': CameraInfo, 'points': PointCloud2,
               'tof/depth': Image}
#: bad frames sent after the first error of a case: more than one throttle window would log
REPEATS = 6


class Feeder:
    """Publishes plane-scene frames with ever-growing stamps, optionally spoiled."""

    def __init__(self, ros_node, topics):
        self.publishers = {t: ros_node.publisher(INPUT_TYPES[t], t) for t in topics}
        self.counter = itertools.count()
        self.bad_stamps: set[int] = set()
        self.good_stamps: set[int] = set()

    def publish(self, spoil=None, topics=None) -> None:
        stamp = START_NS + next(self.counter) * 10**8
        msgs = plane_frame(stamp, W, H)
        if spoil is not None:
            spoil(msgs)
        (self.bad_stamps if spoil else self.good_stamps).add(stamp)
        for topic in topics or self.publishers:
            self.publishers[topic].publish(msgs[topic])


def run_cases(node, ros_node, feeder, cases):
    """For each (name, spoil, topics, level, text): publish spoiled frames until the log says
    text, a few more, then good frames until one is completed. Returns {text: spoiled frames}."""
    rosout, depth = ros_node.rosout(), ros_node.inbox(Image, 'depth')
    sent = {}
    for name, spoil, topics, level, text in cases:
        before = len(feeder.bad_stamps)
        logged = publish_until(lambda i: feeder.publish(spoil, topics), rosout,
                               lambda m: m.level == level and text in m.msg, timeout=20)
        assert logged is not None, f'{name}: no log line with {text!r}\n{node.log()}'
        for _ in range(REPEATS):
            feeder.publish(spoil, topics)
        sent[text] = len(feeder.bad_stamps) - before
        recovered = publish_until(lambda i: feeder.publish(), depth,
                                  lambda m: stamp_to_ns(m.header.stamp) in feeder.good_stamps
                                  and stamp_to_ns(m.header.stamp) > max(feeder.bad_stamps))
        assert recovered is not None, f'{name}: no good frame afterwards\n{node.log()}'
        assert np.isfinite(np.frombuffer(recovered.data, np.float32)).any()
    assert not [m for m in depth.messages if stamp_to_ns(m.header.stamp) in feeder.bad_stamps]
    return sent


def check_stderr(node, sent):
    """Clean Ctrl-C exit; each problem is on stderr, throttled (fewer lines than frames)."""
    assert node.stop() == 0
    log = node.log()
    assert 'Traceback' not in log
    for text, frames in sent.items():
        assert 1 <= log.count(text) < frames, (text, log.count(text), frames)


def test_lidar_bad_inputs(start_node, ros_node):
    node = start_node('completion_node', checkpoint='classical', input_timeout=1.0)
    feeder = Feeder(ros_node, ('image', 'camera_info', 'points'))
    def cloud(xyz):
        return lambda msgs: msgs.update(points=pointcloud2_msg(pointcloud2_fields(xyz),
                                                                msgs['points'].header))

    def depth_as_image(msgs):
        msgs['image'] = image_msg(depth_fields(plane_depth(W, H)), msgs['image'].header)

    def square_info(msgs):
        msgs['camera_info'] = camera_info_msg(plane_camera(W, W), msgs['camera_info'].header)

    def points_in_the_future(msgs):
        msgs['points'].header.stamp.sec += 10

    error, warning = Log.ERROR, Log.WARN
    all_topics = None
    sent = run_cases(node, ros_node, feeder, [
        ('wrong encoding', depth_as_image, all_topics, error, 'not a colour or mono image'),
        ('size mismatch', square_info, all_topics, error, 'does not have the aspect ratio'),
        ('empty cloud', cloud(np.zeros((0, 3), np.float32)), all_topics, error,
         'point cloud is empty'),
        ('all-NaN cloud', cloud(np.full((50, 3), np.nan, np.float32)), all_topics, error,
         'no finite points'),
        ('cloud outside the view', cloud(np.array([[0, 0, -4.0]], np.float32)), all_topics,
         error, 'project into the image'),
        ('missing camera_info', None, ('image', 'points'), warning,
         'nothing received on /camera_info'),
        ('stamps out of sync', points_in_the_future, all_topics, error,
         'further apart than slop'),
    ])
    del sent['nothing received on /camera_info'], sent['further apart than slop']  # 1 Hz checks
    check_stderr(node, sent)


def test_tof_bad_inputs(start_node, ros_node):
    node = start_node('completion_node', depth_source='tof', checkpoint='classical',
                      **{'tof.registered': True})
    feeder = Feeder(ros_node, ('image', 'camera_info', 'tof/depth'))

    def tof(depth):
        return lambda msgs: msgs.update(
            {'tof/depth': image_msg(depth_fields(depth), msgs['tof/depth'].header)})

    inf_and_nan = np.full((H, W), np.inf, np.float32)
    inf_and_nan[::2] = np.nan
    sent = run_cases(node, ros_node, feeder, [
        ('all-NaN/inf depth', tof(inf_and_nan), None, Log.ERROR, 'no valid pixel'),
        ('wrong size', tof(plane_depth(W // 2, H // 2)), None, Log.ERROR,
         'registered ToF depth is'),
    ])
    check_stderr(node, sent)

    # partly NaN/inf depth is a good frame: invalid pixels are holes, not values
    node = start_node('completion_node', depth_source='tof', checkpoint='classical',
                      **{'tof.registered': True})
    holes = plane_depth(W, H)
    holes[10:20, 10:20], holes[0, :] = np.nan, np.inf
    depth = publish_until(lambda i: feeder.publish(tof(holes)), ros_node.inbox(Image, 'depth'))
    assert depth is not None, node.log()
    values = np.frombuffer(depth.data, np.float32).reshape(H, W)
    assert np.all(np.isfinite(values[2:-2, 2:-2]))
    np.testing.assert_allclose(values[25:, 25:], plane_depth(W, H)[25:, 25:], rtol=1e-5)
