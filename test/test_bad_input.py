"""completion_node under bad input: a clear throttled log line, nothing wrong published, and the
next good frame still completes. One node process per depth source runs every case in turn,
among them the inputs that once gave a full, finite depth image from a handful of input pixels
(issue 12): implausible or non-finite CameraInfos, a CameraInfo far larger than its image,
integer-typed or wrongly byte-ordered clouds, a single-point cloud."""
from __future__ import annotations

import itertools

import numpy as np
from conftest import plane_camera, plane_depth, plane_frame, publish_until
from rcl_interfaces.msg import Log
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from cspn_ros.core.conversions import depth_fields, image_fields, pointcloud2_fields, stamp_to_ns
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
    """Clean Ctrl-C exit (the worker stops before the context: every log line still reaches
    /rosout); each problem is on stderr, throttled (fewer lines than frames)."""
    assert node.stop() == 0
    log = node.log()
    assert 'Traceback' not in log and 'Failed to publish log message' not in log, log
    for text, frames in sent.items():
        assert 1 <= log.count(text) < frames, (text, log.count(text), frames)


def info(**changes):
    """A spoil that sets CameraInfo fields."""
    def spoil(msgs):
        for name, value in changes.items():
            setattr(msgs['camera_info'], name, value)
    return spoil


def intrinsics(f=None, cx=None):
    """K (9,) of plane_camera(W, H) with the focal lengths f and/or cx replaced."""
    K = plane_camera(W, H).K.copy()
    K[0, 0], K[1, 1] = (K[0, 0], K[1, 1]) if f is None else (f, f)
    K[0, 2] = K[0, 2] if cx is None else cx
    return K.reshape(-1)


def test_lidar_bad_inputs(start_node, ros_node):
    node = start_node('completion_node', checkpoint='classical', input_timeout=1.0)
    feeder = Feeder(ros_node, ('image', 'camera_info', 'points'))
    depth = ros_node.inbox(Image, 'depth')
    def cloud(xyz):
        return lambda msgs: msgs.update(points=pointcloud2_msg(pointcloud2_fields(xyz),
                                                                msgs['points'].header))

    def depth_as_image(msgs):
        msgs['image'] = image_msg(depth_fields(plane_depth(W, H)), msgs['image'].header)

    def square_info(msgs):
        msgs['camera_info'] = camera_info_msg(plane_camera(W, W), msgs['camera_info'].header)

    def points_in_the_future(msgs):
        msgs['points'].header.stamp.sec += 10

    def points_declared(datatype=None, bigendian=None):
        def spoil(msgs):
            for field in msgs['points'].fields:
                field.datatype = field.datatype if datatype is None else datatype
            msgs['points'].is_bigendian = msgs['points'].is_bigendian or bool(bigendian)
        return spoil

    def wide_image(msgs):
        msgs['image'] = image_msg(image_fields(np.zeros((3, 4100, 3), np.uint8), 'rgb8'),
                                  msgs['image'].header)

    nan = float('nan')
    error, warning = Log.ERROR, Log.WARN
    all_topics = None
    sent = run_cases(node, ros_node, feeder, [
        ('CameraInfo far larger than its image (first, so it cannot set the warm-up size)',
         info(width=8000, height=6000), all_topics, error,
         'camera_info is 8000x6000, larger than max_image_size'),
        ('fx = fy = 1e-300', info(k=intrinsics(1e-300)), all_topics, error,
         'camera_info: implausible intrinsics: fx=1e-300'),
        ('NaN cx', info(k=intrinsics(cx=nan)), all_topics, error, 'camera_info: K has non-finite'),
        ('NaN in D', info(d=[0.1, nan, 0.0, 0.0, 0.0]), all_topics, error,
         'camera_info: D has non-finite'),
        ('plumb_bob k1 = -1e6', info(d=[-1e6, 0.0, 0.0, 0.0, 0.0]), all_topics, error,
         'implausible plumb_bob distortion'),
        ('rational_polynomial with a thin-prism coefficient',
         info(distortion_model='rational_polynomial', d=[0.0] * 8 + [0.01] + [0.0] * 5),
         all_topics, error, 'unsupported non-zero coefficient(s): s1=0.01'),
        ('x/y/z declared INT8 over float bytes', points_declared(datatype=1), all_topics, error,
         "field 'x' is declared int8"),
        ('little-endian cloud flagged big-endian', points_declared(bigendian=True), all_topics,
         error, 'does not match its declared byte order'),
        ('a legal single-point cloud', cloud(np.array([[0.0, 0.0, 5.0]], np.float32)),
         all_topics, error, 'only 1 valid input pixel'),
        ('image wider than max_image_size', wide_image, all_topics, error,
         'image is 4100x3, larger than max_image_size'),
        ('wrong encoding', depth_as_image, all_topics, error, 'not a colour or mono image'),
        ('size mismatch', square_info, all_topics, error, 'does not have the aspect ratio'),
        ('empty cloud', cloud(np.zeros((0, 3), np.float32)), all_topics, error,
         'point cloud is empty'),
        ('all-NaN cloud', cloud(np.full((50, 3), np.nan, np.float32)), all_topics, error,
         'no finite points'),
        ('cloud outside the view', cloud(np.array([[0, 0, -4.0]], np.float32)), all_topics,
         error, 'project into the image'),
        ('missing camera_info (its publisher is there)', None, ('image', 'points'), warning,
         'nothing received on /camera_info for 1 s; /camera_info has 1 publisher but nothing '
         'arrived'),
        ('stamps out of sync', points_in_the_future, all_topics, error,
         'further apart than slop'),
    ])
    del sent['further apart than slop']  # 1 Hz checks
    del sent['nothing received on /camera_info for 1 s; /camera_info has 1 publisher but '
             'nothing arrived']
    # D padded with zeros, as some drivers send it (9 for plumb_bob, 14 for rational_polynomial)
    for model, padded in (('plumb_bob', [0.01, 0.0, 0.0, 0.0, 0.0] + [0.0] * 4),
                          ('rational_polynomial', [0.01] + [0.0] * 13)):
        completed = publish_until(lambda i: feeder.publish(info(distortion_model=model,
                                                                d=padded)), depth,
                                  lambda m: stamp_to_ns(m.header.stamp) == max(feeder.bad_stamps))
        assert completed is not None, f'{model} with {len(padded)} coefficients\n{node.log()}'
    log = node.log()
    assert 'model warmed up at 48x36' in log and 'warm-up at 8000' not in log, log
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
        ('NaN cx (not the good ToF depth to blame)', info(k=intrinsics(cx=float('nan'))), None,
         Log.ERROR, 'camera_info: K has non-finite'),
        ('all-NaN/inf depth', tof(inf_and_nan), None, Log.ERROR, 'no valid pixel'),
        ('wrong size', tof(plane_depth(W // 2, H // 2)), None, Log.ERROR,
         'registered ToF depth is'),
    ])
    check_stderr(node, sent)

    # partly NaN/inf depth is a good frame: invalid pixels are holes, not values
    node = start_node('completion_node', depth_source='tof', checkpoint='classical',
                      **{'tof.registered': True, 'self_check.holdout_share': 0.0})
    holes = plane_depth(W, H)
    holes[10:20, 10:20], holes[0, :] = np.nan, np.inf
    depth = publish_until(lambda i: feeder.publish(tof(holes)), ros_node.inbox(Image, 'depth'))
    assert depth is not None, node.log()
    values = np.frombuffer(depth.data, np.float32).reshape(H, W)
    assert np.all(np.isfinite(values[2:-2, 2:-2]))
    np.testing.assert_allclose(values[25:, 25:], plane_depth(W, H)[25:, 25:], rtol=1e-5)
