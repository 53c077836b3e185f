"""core.wire against rclpy's own serialisation: every message the node publishes, built by
`core.wire` and encoded, is received by a plain rclpy subscriber (rclpy's deserialisation) as
exactly the message the node built before (`nodes.messages`), field by field, and every input
decoded from serialized bytes converts to the same arrays as the rclpy message, as views of the
received bytes."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import plane_camera
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from cspn_ros.core.camera import PinholeCamera
from cspn_ros.core.colorize import colorize_depth
from cspn_ros.core.compressed import compressed_depth_fields, compressed_image_fields
from cspn_ros.core.conversions import (depth_fields, image_fields, image_to_depth, image_to_rgb,
                                       pointcloud2_field, pointcloud2_fields, pointcloud2_to_xyz)
from cspn_ros.core.wire import MESSAGES, WireError, decode, encode, type_name
from cspn_ros.nodes.messages import (camera_info_msg, compressed_image_msg, header_msg,
                                     image_msg, pointcloud2_msg)

W, H = 37, 23  # odd sizes: no accidental alignment
STAMP_NS = 1_700_000_123_456_789_012


def rclpy_fields(msg) -> dict:
    """Every field of an rclpy message as plain Python values (nested messages recursed)."""
    values = {}
    for name in msg.get_fields_and_field_types():
        value = getattr(msg, name)
        if hasattr(value, 'get_fields_and_field_types'):
            value = rclpy_fields(value)
        elif isinstance(value, (list, tuple)) and value and hasattr(
                value[0], 'get_fields_and_field_types'):
            value = [rclpy_fields(item) for item in value]
        elif not isinstance(value, (str, bytes, int, float, bool)):
            value = bytes(np.asarray(value).tobytes())  # arrays: compare their bytes
        values[name] = value
    return values


def output_cases() -> dict[str, tuple]:
    """name -> (new rosbags message, old rclpy message): every kind of message the node
    publishes (and the bag writer writes), built from the same fields both ways."""
    rng = np.random.default_rng(5)
    depth = (rng.random((H, W)) * 80).astype(np.float32)
    depth[rng.random((H, W)) < 0.3] = 0  # missing -> NaN in 32FC1, 0 in 16UC1
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    xyz = (rng.normal(size=(501, 3)) * 10).astype(np.float32)
    time_field = {'time': rng.random(501).astype(np.float32),
                  'ring': rng.integers(0, 64, 501).astype(np.uint16)}
    old_header, new_header = header_msg(STAMP_NS, 'camera_optical'), MESSAGES.header(
        STAMP_NS, 'camera_optical')
    cases = {}
    images = {'depth 32FC1': depth_fields(depth, '32FC1'),
              'depth 16UC1': depth_fields(depth, '16UC1'),
              'colorized bgr8': image_fields(colorize_depth(depth, 0.1, 100.0), 'bgr8'),
              'confidence 32FC1': image_fields(rng.random((H, W)).astype(np.float32), '32FC1'),
              'rgb8': image_fields(rgb, 'rgb8'), 'mono8': image_fields(rgb[..., 0], 'mono8'),
              'mono16': image_fields(rgb[..., 0].astype(np.uint16) * 257, 'mono16')}
    for name, fields in images.items():
        cases[name] = (MESSAGES.image(fields, new_header), image_msg(fields, old_header))
    for name, fields in {'cloud xyz': pointcloud2_fields(xyz),
                         'cloud xyz rgb': pointcloud2_fields(xyz, rgb.reshape(-1, 3)[:501]),
                         'cloud with time and ring': pointcloud2_fields(xyz, extra=time_field),
                         'cloud empty': pointcloud2_fields(np.zeros((0, 3), np.float32))
                         }.items():
        cases[name] = (MESSAGES.cloud(fields, new_header), pointcloud2_msg(fields, old_header))
    cameras = {'camera_info no distortion': plane_camera(W, H),
               'camera_info plumb_bob': PinholeCamera(
                   W, H, K=[[30.0, 0, 18], [0, 31.0, 11], [0, 0, 1]],
                   D=[0.01, -0.002, 0.0003, 0.0001, 0.0], distortion_model='plumb_bob'),
               'camera_info rational_polynomial scaled': PinholeCamera(
                   W, H, K=[[30.0, 0, 18], [0, 31.0, 11], [0, 0, 1]],
                   D=[0.01, -0.002, 0, 0, 0, 0.001, 0, 0], distortion_model='rational_polynomial'
               ).scaled(2 * W, 2 * H),
               'camera_info equidistant': PinholeCamera(
                   W, H, K=[[30.0, 0, 18], [0, 31.0, 11], [0, 0, 1]], D=[0.01, 0.001, 0, 0],
                   distortion_model='equidistant')}
    for name, camera in cameras.items():
        cases[name] = (MESSAGES.camera_info(camera, new_header),
                       camera_info_msg(camera, old_header))
    for name, fields in {'compressed jpeg': compressed_image_fields(rgb, 'jpeg'),
                         'compressedDepth 16UC1': compressed_depth_fields(depth, '16UC1')
                         }.items():
        cases[name] = (MESSAGES.compressed_image(fields, new_header),
                       compressed_image_msg(fields, old_header))
    return cases


OUTPUTS = output_cases()


@pytest.mark.parametrize('name', list(OUTPUTS))
def test_encoded_messages_are_what_rclpy_serialises(name):
    new, old = OUTPUTS[name]
    raw = encode(new)
    assert isinstance(raw, bytes)  # what Publisher.publish takes as serialized
    # same layout (rclpy's CDR leaves alignment padding bytes unset, so bytes may differ there)
    assert len(raw) == len(serialize_message(old))
    received = deserialize_message(raw, type(old))  # what a plain rclpy subscriber gets
    assert rclpy_fields(received) == rclpy_fields(old)
    assert received == old


def serialized(msg) -> bytes:
    return serialize_message(msg)


def input_cases() -> dict[str, tuple]:
    """name -> (rclpy message, conversion the pipeline applies to it)."""
    rng = np.random.default_rng(9)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    depth = (rng.random((H, W)) * 20).astype(np.float32)
    depth[rng.random((H, W)) < 0.2] = 0
    header = header_msg(STAMP_NS, 'sensor')
    big_endian_mm = image_msg(image_fields((depth * 1000).astype(np.uint16), '16UC1'), header)
    big_endian_mm.is_bigendian = 1
    big_endian_mm.data = bytes(np.frombuffer(bytes(big_endian_mm.data), '<u2').astype('>u2')
                               .tobytes())
    padded = image_fields(rgb, 'bgr8')
    padded_rows = np.zeros((H, W * 3 + 5), np.uint8)
    padded_rows[:, :W * 3] = padded['data'].reshape(H, W * 3)
    padded_msg = image_msg({**padded, 'step': W * 3 + 5, 'data': padded_rows.reshape(-1)},
                           header)
    xyz = (rng.normal(size=(400, 3)) * 10).astype(np.float64)
    xyz[::17] = np.nan  # dropped by the conversion
    structured = np.zeros(400, np.dtype([('x', '>f8'), ('y', '>f8'), ('z', '>f8'),
                                          ('time', '>f4'), ('pad', 'V4')]))
    for axis, name in enumerate('xyz'):
        structured[name] = xyz[:, axis]
    structured['time'] = rng.random(400)
    cloud = pointcloud2_msg({'height': 20, 'width': 20, 'is_bigendian': True,
                             'point_step': 32, 'row_step': 640, 'is_dense': False,
                             'fields': [{'name': n, 'offset': o, 'datatype': t, 'count': 1}
                                        for n, o, t in (('x', 0, 8), ('y', 8, 8), ('z', 16, 8),
                                                        ('time', 24, 7))],
                             'data': structured.view(np.uint8)}, header)
    camera = PinholeCamera(W, H, K=[[30.0, 0, 18], [0, 31.0, 11], [0, 0, 1]],
                           D=[0.01, -0.002, 0.0003, 0.0001, 0.0], distortion_model='plumb_bob')
    return {
        'rgb8': (image_msg(image_fields(rgb, 'rgb8'), header), image_to_rgb),
        'bgr8 padded rows': (padded_msg, image_to_rgb),
        'mono16': (image_msg(image_fields(depth.astype(np.uint16), 'mono16'), header),
                   image_to_rgb),
        '32FC1': (image_msg(depth_fields(depth), header), image_to_depth),
        '16UC1 big endian': (big_endian_mm, image_to_depth),
        'jpeg': (compressed_image_msg(compressed_image_fields(rgb, 'jpeg'), header),
                 image_to_rgb),
        'compressedDepth 32FC1': (compressed_image_msg(compressed_depth_fields(depth, '32FC1'),
                                                       header), image_to_depth),
        'cloud big endian float64 organized': (cloud, pointcloud2_to_xyz),
        'cloud time field': (cloud, lambda msg: pointcloud2_field(msg, 'time')),
        'camera_info': (camera_info_msg(camera, header),
                        lambda msg: np.concatenate([PinholeCamera.from_camera_info(msg).K.ravel(),
                                                    PinholeCamera.from_camera_info(msg).D])),
    }


INPUTS = input_cases()


@pytest.mark.parametrize('name', list(INPUTS))
def test_decoded_inputs_convert_like_rclpy_messages(name):
    old, convert = INPUTS[name]
    raw = serialized(old)
    new = decode(raw, type_name(type(old)))
    assert (new.header.stamp.sec, new.header.stamp.nanosec, new.header.frame_id) == (
        old.header.stamp.sec, old.header.stamp.nanosec, old.header.frame_id)
    expected, got = convert(old), convert(new)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    if hasattr(new, 'data'):  # the payload is a view of the received bytes, not a copy
        assert np.shares_memory(new.data, np.frombuffer(raw, np.uint8))
        assert not new.data.flags.writeable


def test_type_names_of_the_node_inputs():
    assert [type_name(t) for t in (Image, CompressedImage, CameraInfo, PointCloud2)] == [
        'sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage',
        'sensor_msgs/msg/CameraInfo', 'sensor_msgs/msg/PointCloud2']


def test_bytes_that_are_not_the_message_raise_wire_error():
    raw = serialized(INPUTS['rgb8'][0])
    with pytest.raises(WireError, match='sensor_msgs/msg/Image'):
        decode(raw[:len(raw) // 2], 'sensor_msgs/msg/Image')  # truncated
    with pytest.raises(WireError, match='CameraInfo'):
        decode(raw, 'sensor_msgs/msg/CameraInfo')  # another type's bytes
    with pytest.raises(WireError):
        decode(b'\x07\x07' + raw[2:], 'sensor_msgs/msg/Image')  # no CDR encapsulation
    with pytest.raises(WireError, match='no_such_msgs'):
        decode(raw, 'no_such_msgs/msg/Thing')
