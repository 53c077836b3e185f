"""Compressed inputs (image_transport `compressed` colour, `compressedDepth` ToF): the OpenCV
decoders against the images they were made from, bad payloads refused, the pipeline, bags that
record only the compressed topics (evaluate and training with default topic names), and the
completion node over DDS with compressed colour + raw cloud and compressedDepth ToF."""
from __future__ import annotations

import itertools
import json
import types

import cv2
import numpy as np
import pytest
from conftest import plane_depth, plane_frame, publish_until
from rcl_interfaces.msg import Log
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from cspn_ros.core.compressed import (DEPTH_HEADER_BYTES, compressed_depth_fields,
                                      compressed_image_fields, compressed_to_rgb, is_compressed)
from cspn_ros.core.conversions import (ConversionError, image_to_array, image_to_depth,
                                       image_to_rgb, stamp_to_ns)
from cspn_ros.core.pipeline import CompletionPipeline, InputError
from cspn_ros.core.topics import recorded_topic, transport_topic
from cspn_ros.data.bag_frames import BagFrames
from cspn_ros.data.bag_reader import BagTopics
from cspn_ros.data.synthetic_bag import write_synthetic_bag
from cspn_ros.model.completer import DepthCompleter
from cspn_ros.nodes.messages import compressed_image_msg

W, H = 48, 36
START_NS = 1_700_000_000 * 10**9


def _message(fields: dict) -> types.SimpleNamespace:
    """A duck-typed CompressedImage (format, data as bytes, as rosbags gives it)."""
    return types.SimpleNamespace(format=fields['format'], data=bytes(fields['data']))


def _smooth_rgb(rng, height=H, width=W) -> np.ndarray:
    """A smooth random colour image (JPEG keeps it within a few levels)."""
    small = rng.integers(0, 256, (height // 6 + 1, width // 6 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def test_png_colour_decodes_exactly_and_jpeg_closely():
    rng = np.random.default_rng()
    rgb = _smooth_rgb(rng)
    png = _message(compressed_image_fields(rgb, 'png'))
    assert is_compressed(png) and png.format == 'rgb8; png compressed bgr8'
    np.testing.assert_array_equal(image_to_rgb(png), rgb)  # RGB order survives the BGR file
    jpeg = image_to_rgb(_message(compressed_image_fields(rgb, 'jpeg', quality=95)))
    assert jpeg.shape == rgb.shape and jpeg.dtype == np.uint8
    error = np.abs(jpeg.astype(int) - rgb).mean()  # chroma subsampling costs a few levels
    assert error < 8.0 and error < np.abs(jpeg[..., ::-1].astype(int) - rgb).mean() / 3
    # an old-style publisher's format ('jpeg') and a mono JPEG (replicated to 3 channels)
    grey = rgb[..., 1]
    ok, data = cv2.imencode('.jpg', grey, [cv2.IMWRITE_JPEG_QUALITY, 100])
    mono = image_to_rgb(types.SimpleNamespace(format='jpeg', data=data.tobytes()))
    assert mono.shape == rgb.shape and np.abs(mono[..., 0].astype(int) - grey).mean() < 2.0
    assert np.array_equal(mono[..., 0], mono[..., 2])


def test_compressed_depth_16uc1_is_exact_millimetres():
    rng = np.random.default_rng()
    depth = rng.integers(1, 60000, (H, W)).astype(np.float32) / 1000
    depth[rng.random((H, W)) < 0.2] = 0
    msg = _message(compressed_depth_fields(depth, '16UC1'))
    assert msg.format == '16UC1; compressedDepth png'
    decoded = image_to_depth(msg)
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, depth, atol=1e-6)  # same millimetres, 0 stays 0


def test_compressed_depth_32fc1_is_within_one_quantisation_step():
    rng = np.random.default_rng()
    depth = rng.uniform(0.3, 12.0, (H, W)).astype(np.float32)
    depth[0, :5] = np.nan
    max_depth, quantization = 10.0, 100.0
    decoded = image_to_depth(_message(compressed_depth_fields(depth, '32FC1', max_depth,
                                                              quantization)))
    inside = np.isfinite(depth) & (depth < max_depth)
    assert np.all(decoded[~inside] == 0)  # NaN and beyond max_depth: invalid, as in ROS
    # one step of the quantised inverse depth is depth^2 / A metres, A = q (q + 1)
    step = depth[inside].astype(np.float64) ** 2 / (quantization * (quantization + 1))
    error = np.abs(decoded[inside] - depth[inside])
    assert np.all(error <= step * 1.01 + 1e-6) and error.max() > 0


@pytest.mark.parametrize('case', ['truncated jpeg', 'truncated png', 'empty', 'not an image',
                                  'corrupt png', 'depth header only', 'depth truncated png',
                                  'rvl', 'depth as colour', 'colour as depth'])
def test_bad_payloads_raise_a_clear_conversion_error(case):
    rng = np.random.default_rng()
    rgb = _smooth_rgb(rng)
    jpeg = compressed_image_fields(rgb, 'jpeg')
    png = compressed_image_fields(rgb, 'png')
    depth = compressed_depth_fields(plane_depth(W, H), '16UC1')
    corrupt = png['data'].copy()
    corrupt[len(corrupt) // 2] ^= 0xFF  # PNG's CRC catches it
    messages = {
        'truncated jpeg': ({**jpeg, 'data': jpeg['data'][:len(jpeg['data']) * 2 // 3]},
                           image_to_rgb, 'no end marker'),
        'truncated png': ({**png, 'data': png['data'][:-30]}, image_to_rgb, 'no IEND'),
        'empty': ({**jpeg, 'data': np.zeros(0, np.uint8)}, image_to_rgb, 'neither JPEG nor PNG'),
        'not an image': ({**jpeg, 'data': rng.integers(0, 256, 500, dtype=np.uint8)},
                         image_to_rgb, 'neither JPEG nor PNG'),
        'corrupt png': ({**png, 'data': corrupt}, image_to_rgb, 'cannot decode'),
        'depth header only': ({**depth, 'data': depth['data'][:DEPTH_HEADER_BYTES]},
                              image_to_depth, 'not even its 12-byte header'),
        'depth truncated png': ({**depth, 'data': depth['data'][:-20]}, image_to_depth,
                                'no IEND'),
        'rvl': ({**depth, 'format': '16UC1; compressedDepth rvl'}, image_to_depth,
                "codec 'rvl' is not supported"),
        'depth as colour': (depth, image_to_rgb, 'is a compressedDepth depth image'),
        'colour as depth': (png, image_to_depth, 'is not compressedDepth'),
    }
    fields, convert, text = messages[case]
    with pytest.raises(ConversionError, match=text):
        convert(_message(fields))


def test_transport_topics_follow_image_transport_naming():
    assert transport_topic('/cam/image_raw', 'compressed') == '/cam/image_raw/compressed'
    assert transport_topic('tof/depth', 'compressedDepth') == 'tof/depth/compressedDepth'
    assert transport_topic('image', 'raw') == 'image'
    with pytest.raises(ValueError, match='theora'):
        transport_topic('image', 'theora')
    assert recorded_topic('/image', {'/image', '/image/compressed'}) == '/image'
    assert recorded_topic('/image', {'/image/compressed'}) == '/image/compressed'
    assert recorded_topic('/image', {'/points'}) is None


def test_pipeline_gives_the_same_frame_from_png_and_raw_colour_and_refuses_a_bad_one():
    raw = plane_frame(START_NS, W, H, seed=int(np.random.default_rng().integers(1000)))
    rgb = image_to_array(raw['image'])
    png = compressed_image_msg(compressed_image_fields(rgb, 'png'), raw['image'].header)
    pipeline = CompletionPipeline(DepthCompleter.from_config('classical', device='cpu'))
    expected = pipeline.process(raw['image'], raw['camera_info'], raw['points'])
    result = pipeline.process(png, raw['camera_info'], raw['points'])
    np.testing.assert_array_equal(result.rgb, rgb)
    np.testing.assert_array_equal(result.sparse, expected.sparse)
    np.testing.assert_array_equal(result.dense, expected.dense)
    png.data = png.data[:-40]
    with pytest.raises(InputError, match=r'image: compressed image .*no IEND chunk \(truncated\)'):
        pipeline.process(png, raw['camera_info'], raw['points'])


@pytest.fixture(scope='module')
def compressed_bag(tmp_path_factory):
    """A bag with colour only on /image/compressed (jpeg) and ToF only on
    /tof/depth/compressedDepth (16UC1), next to its raw twin (same scene and seed)."""
    root = tmp_path_factory.mktemp('compressed')
    scene = dict(num_frames=4, width=80, height=60, lidar_beams=16, tof_width=40, tof_height=30,
                 scene='indoor', seed=int(np.random.default_rng().integers(99)),
                 tof_encoding='16UC1')
    return (write_synthetic_bag(root / 'compressed', 'sqlite3', colour_codec='jpeg',
                                tof_compressed=True, **scene),
            write_synthetic_bag(root / 'raw', 'sqlite3', **scene))


def test_bag_with_only_compressed_topics_is_read_with_the_default_topic_names(compressed_bag):
    compressed, raw = compressed_bag
    frames = {path: {source: BagFrames([path], BagTopics(), source) for source in ('lidar', 'tof')}
              for path in (compressed, raw)}
    for source in ('lidar', 'tof'):
        assert len(frames[compressed][source]) == len(frames[raw][source]) == 4
        messages = frames[compressed][source].read(0)
        assert is_compressed(messages['/image'])
        twin = frames[raw][source].read(0)
        jpeg_rgb, rgb = image_to_rgb(messages['/image']), image_to_rgb(twin['/image'])
        assert jpeg_rgb.shape == rgb.shape and np.abs(jpeg_rgb.astype(int) - rgb).mean() < 8
    tof = frames[compressed]['tof'].read(2)['/tof/depth']
    np.testing.assert_array_equal(image_to_depth(tof),
                                  image_to_depth(frames[raw]['tof'].read(2)['/tof/depth']))


def test_evaluate_and_training_run_on_a_compressed_bag(compressed_bag, tmp_path):
    from cspn_ros.model.checkpoint import load_checkpoint
    from cspn_ros.nodes.evaluate import main as evaluate_main
    from cspn_ros.nodes.training_node import main as training_main
    compressed, raw = compressed_bag
    summaries = {}
    for name, bag in (('compressed', compressed), ('raw', raw)):
        out = tmp_path / name
        assert evaluate_main(['--bag', str(bag), '--checkpoint', 'classical', '--depth-source',
                              'tof', '--gt-topic', '/ground_truth/depth', '--out',
                              str(out)]) == 0
        summaries[name] = json.loads((out / 'summary.json').read_text())['model']
    # the classical fill uses depth only: the compressedDepth (lossless 16UC1) frames score alike
    assert summaries['compressed']['frames'] == 4
    assert summaries['compressed']['rmse'] == pytest.approx(summaries['raw']['rmse'], rel=1e-6)
    out = tmp_path / 'train'
    assert training_main(['--bag', str(compressed), '--out', str(out), '--supervision', 'dense',
                          '--config', json.dumps({'width': 8, 'steps': 2}), '--crop', '48x64',
                          '--batch-size', '2', '--epochs', '1', '--device', 'cpu',
                          '--depth-source', 'both', '--no-progress', '--val-fraction', '0.25',
                          '--gt-topic', '/ground_truth/depth']) == 0
    _, _, meta = load_checkpoint(out / 'last.safetensors')
    assert meta['step'] == 3  # 3 LiDAR + 3 ToF training samples, batch 2


class Feeder:
    """Publishes plane-scene frames, colour as PNG on image/compressed (or ToF as 16UC1
    compressedDepth on tof/depth/compressedDepth), optionally spoiled."""

    def __init__(self, ros_node, source: str) -> None:
        self.source = source
        types_by_topic = ({'image/compressed': CompressedImage, 'camera_info': CameraInfo,
                           'points': PointCloud2} if source == 'lidar' else
                          {'image': Image, 'camera_info': CameraInfo,
                           'tof/depth/compressedDepth': CompressedImage,
                           'tof/camera_info': CameraInfo})
        self.publishers = {t: ros_node.publisher(kind, t) for t, kind in types_by_topic.items()}
        self.counter = itertools.count()
        self.rgb: dict[int, np.ndarray] = {}
        self.bad_stamps: set[int] = set()

    def publish(self, spoil: bool = False) -> None:
        stamp = START_NS + next(self.counter) * 10**8
        msgs = plane_frame(stamp, W, H, seed=stamp % 1000)
        self.rgb[stamp] = image_to_array(msgs['image'])
        if self.source == 'lidar':
            msgs['image/compressed'] = compressed_image_msg(
                compressed_image_fields(self.rgb[stamp], 'png'), msgs['image'].header)
            compressed = msgs['image/compressed']
        else:
            msgs['tof/depth/compressedDepth'] = compressed_image_msg(
                compressed_depth_fields(image_to_depth(msgs['tof/depth']), '16UC1'),
                msgs['tof/depth'].header)
            compressed = msgs['tof/depth/compressedDepth']
        if spoil:  # cut inside the PNG: truncated payload
            compressed.data = compressed.data[:len(compressed.data) // 2]
            self.bad_stamps.add(stamp)
        for topic, publisher in self.publishers.items():
            publisher.publish(msgs[topic])


def _cloud_colours(cloud) -> np.ndarray:
    """(N,3) uint8 of a depth/points cloud (x, y, z, packed rgb float32)."""
    packed = np.frombuffer(bytes(cloud.data), np.float32).reshape(-1, 4)[:, 3].view(np.uint32)
    return np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], 1).astype(np.uint8)


@pytest.mark.parametrize('source', ['lidar', 'tof'])
def test_node_completes_compressed_inputs_and_skips_truncated_ones(source, start_node, ros_node):
    parameters = ({'image_transport': 'compressed', 'publish_points': True, 'points_stride': 1}
                  if source == 'lidar' else {'depth_source': 'tof',
                                             'tof.image_transport': 'compressedDepth',
                                             'self_check.holdout_share': 0.0})  # every pixel in
    node = start_node('completion_node', checkpoint='classical', **parameters)
    feeder = Feeder(ros_node, source)
    depth_inbox, rosout = ros_node.inbox(Image, 'depth'), ros_node.rosout()
    points_inbox = ros_node.inbox(PointCloud2, 'depth/points')
    depth = publish_until(lambda i: feeder.publish(), depth_inbox, timeout=40)
    assert depth is not None, node.log()
    # the plane's depth (LiDAR filled by the classical fill / ToF decoded from millimetres)
    dense = image_to_array(depth)
    if source == 'tof':
        np.testing.assert_allclose(dense, plane_depth(W, H), atol=6e-4)
    else:
        assert np.abs(dense - plane_depth(W, H)).mean() < 0.15  # the classical fill's error
        cloud = publish_until(lambda i: feeder.publish(), points_inbox, timeout=20)
        assert cloud is not None, node.log()
        np.testing.assert_array_equal(  # the PNG's colours, pixel for pixel
            _cloud_colours(cloud), feeder.rgb[stamp_to_ns(cloud.header.stamp)].reshape(-1, 3))
    # truncated payloads: a throttled error naming it, no output for those frames
    logged = publish_until(lambda i: feeder.publish(spoil=True), rosout,
                           lambda m: m.level == Log.ERROR and 'no IEND' in m.msg, timeout=20)
    assert logged is not None, node.log()
    for _ in range(6):  # more bad frames than one throttle window logs
        feeder.publish(spoil=True)
    bad = max(feeder.bad_stamps)
    recovered = publish_until(lambda i: feeder.publish(), depth_inbox,
                              lambda m: stamp_to_ns(m.header.stamp) > bad)
    assert recovered is not None, node.log()
    assert not [m for m in depth_inbox.messages
                if stamp_to_ns(m.header.stamp) in feeder.bad_stamps]
    assert node.stop() == 0
    log = node.log()
    assert 'Traceback' not in log and 1 <= log.count('no IEND') < len(feeder.bad_stamps)


def test_size_is_read_from_the_header_and_an_oversized_image_is_refused_undecoded():
    from cspn_ros.core.conversions import image_size
    rng = np.random.default_rng()
    width, height = int(rng.integers(20, 90)), int(rng.integers(20, 90))
    rgb = _smooth_rgb(rng, height, width)
    depth = rng.uniform(0.5, 5, (height, width)).astype(np.float32)
    for fields in (compressed_image_fields(rgb, 'jpeg'), compressed_image_fields(rgb, 'png'),
                   compressed_depth_fields(depth, '16UC1'),
                   compressed_depth_fields(depth, '32FC1')):
        assert image_size(_message(fields)) == (width, height)
    with pytest.raises(ConversionError, match='no JPEG or PNG header'):
        image_size(types.SimpleNamespace(format='jpeg', data=b'\xff\xd8\xff'))
    raw = plane_frame(START_NS, W, H)
    png = compressed_image_msg(compressed_image_fields(image_to_array(raw['image']), 'png'),
                               raw['image'].header)
    pipeline = CompletionPipeline(None, max_image_size=(W - 1, H))
    with pytest.raises(InputError, match=f'image is {W}x{H}, larger than max_image_size'):
        pipeline.prepare(png, raw['camera_info'], raw['points'])
