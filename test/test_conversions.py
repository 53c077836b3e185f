"""Image / PointCloud2 conversions against hand-built wire bytes (all encodings, both byte
orders, padded rows, every data container type) and against real sensor_msgs classes."""
import array
import struct
from types import SimpleNamespace

import numpy as np
import pytest

from cspn_ros.core.conversions import (IMAGE_ENCODINGS, ConversionError, depth_fields,
                                       depth_to_32fc1, image_fields, image_to_array,
                                       image_to_depth, image_to_rgb, message_bytes, pack_rgb,
                                       pointcloud2_fields, pointcloud2_to_xyz, stamp_to_ns)

CONTAINERS = {
    'bytes': bytes,
    'bytearray': bytearray,
    'array': lambda raw: array.array('B', raw),
    'memoryview': lambda raw: memoryview(bytearray(raw)),
    'list': list,
    'numpy': lambda raw: np.frombuffer(raw, np.uint8).copy(),
}


def random_image(rng, encoding, height=5, width=7):
    dtype, channels = IMAGE_ENCODINGS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype.kind == 'f':
        return rng.normal(0, 10, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def wire_message(array_, encoding, bigendian=False, padding=0, container=bytes, rng=None):
    """Image message whose bytes are built independently: per-row packing + random padding."""
    dtype = IMAGE_ENCODINGS[encoding][0].newbyteorder('>' if bigendian else '<')
    height, width = array_.shape[:2]
    rows = array_.astype(dtype).reshape(height, -1).view(np.uint8)
    pad = (rng or np.random.default_rng()).integers(0, 256, (height, padding), dtype=np.uint8)
    raw = np.hstack([rows, pad]).tobytes()
    return SimpleNamespace(height=height, width=width, encoding=encoding,
                           is_bigendian=int(bigendian), step=rows.shape[1] + padding,
                           data=container(raw))


@pytest.mark.parametrize('encoding', sorted(IMAGE_ENCODINGS))
@pytest.mark.parametrize('bigendian', [False, True])
@pytest.mark.parametrize('padding', [0, 3, 8])
def test_image_to_array_matches_wire_bytes(encoding, bigendian, padding):
    rng = np.random.default_rng()
    expected = random_image(rng, encoding)
    msg = wire_message(expected, encoding, bigendian, padding, bytes, rng)
    result = image_to_array(msg)
    np.testing.assert_array_equal(result, expected)
    assert result.dtype == expected.dtype and result.dtype.isnative
    itemsize = expected.dtype.itemsize
    zero_copy_expected = (not bigendian or itemsize == 1) and msg.step % itemsize == 0
    assert np.shares_memory(result, message_bytes(msg.data)) == zero_copy_expected


@pytest.mark.parametrize('container', sorted(CONTAINERS))
def test_every_data_container_is_read_and_buffers_are_not_copied(container):
    rng = np.random.default_rng()
    expected = random_image(rng, '32FC1')
    msg = wire_message(expected, '32FC1', padding=4, container=CONTAINERS[container], rng=rng)
    result = image_to_array(msg)
    np.testing.assert_array_equal(result, expected)
    if container != 'list':
        assert np.shares_memory(result, np.frombuffer(msg.data, np.uint8))


@pytest.mark.parametrize('encoding', sorted(IMAGE_ENCODINGS))
def test_image_fields_round_trip_without_copy(encoding):
    expected = random_image(np.random.default_rng(), encoding, 4, 6)
    fields = image_fields(expected, encoding)
    assert np.shares_memory(fields['data'], expected)
    assert fields['data'].dtype == np.uint8 and fields['data'].ndim == 1
    assert fields['step'] == expected[0].nbytes and fields['is_bigendian'] == (
        np.dtype('=u2').str[0] == '>')
    np.testing.assert_array_equal(image_to_array(SimpleNamespace(**fields)), expected)


def test_image_fields_copies_non_contiguous_and_rejects_wrong_layouts():
    base = random_image(np.random.default_rng(), 'rgb8', 6, 8)
    flipped = base[:, ::-1]
    np.testing.assert_array_equal(image_to_array(SimpleNamespace(**image_fields(flipped,
                                                                                'rgb8'))),
                                  flipped)
    with pytest.raises(ConversionError, match='rgb8 needs'):
        image_fields(base[..., :2], 'rgb8')
    with pytest.raises(ConversionError, match='32FC1 needs'):
        image_fields(base[..., 0], '32FC1')
    with pytest.raises(ConversionError, match='unsupported image encoding'):
        image_fields(base, 'yuv422')


def test_image_to_rgb_for_every_colour_encoding():
    rng = np.random.default_rng()
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (5, 7, 1), dtype=np.uint8)
    sources = {'rgb8': rgb, 'bgr8': rgb[..., ::-1], 'rgba8': np.concatenate([rgb, alpha], 2),
               'bgra8': np.concatenate([rgb[..., ::-1], alpha], 2)}
    for encoding, source in sources.items():
        result = image_to_rgb(wire_message(source, encoding, padding=2, rng=rng))
        np.testing.assert_array_equal(result, rgb)
        assert result.shape == (5, 7, 3) and result.dtype == np.uint8
    mono = rgb[..., 0]
    np.testing.assert_array_equal(image_to_rgb(wire_message(mono, 'mono8')),
                                  np.stack([mono] * 3, 2))
    mono16 = rng.integers(0, 65536, (5, 7)).astype(np.uint16)
    np.testing.assert_array_equal(image_to_rgb(wire_message(mono16, 'mono16', bigendian=True)),
                                  np.stack([mono16 // 256] * 3, 2).astype(np.uint8))
    with pytest.raises(ConversionError, match='not a colour'):
        image_to_rgb(wire_message(mono16.astype(np.float32), '32FC1'))


def test_image_to_depth_maps_wire_conventions_to_zero_missing():
    rng = np.random.default_rng()
    metres = rng.uniform(0.2, 50, (6, 9)).astype(np.float32)
    wire = metres.copy()
    wire[0, :4] = [np.nan, np.inf, -1.0, 0.0]
    expected = metres.copy()
    expected[0, :4] = 0
    for bigendian in (False, True):
        result = image_to_depth(wire_message(wire, '32FC1', bigendian, 4, rng=rng))
        np.testing.assert_array_equal(result, expected)
        assert result.dtype == np.float32 and result.flags.writeable
    millimetres = rng.integers(0, 65536, (6, 9)).astype(np.uint16)
    millimetres[1, 1] = 0
    for encoding in ('16UC1', 'mono16'):
        result = image_to_depth(wire_message(millimetres, encoding, True, 2, rng=rng))
        np.testing.assert_allclose(result, millimetres.astype(np.float64) / 1000, rtol=1e-6)
        assert result[1, 1] == 0
    with pytest.raises(ConversionError, match='not a depth encoding'):
        image_to_depth(wire_message(millimetres.astype(np.uint8), 'mono8'))


def test_depth_fields_round_trip_and_wire_invalid_values():
    rng = np.random.default_rng()
    depth = rng.uniform(0.1, 60, (7, 5)).astype(np.float32)
    depth[0, 0] = 0
    depth[2, 3] = 70.0  # beyond the 16UC1 range
    fields32 = depth_fields(depth)
    wire32 = image_to_array(SimpleNamespace(**fields32))
    assert np.isnan(wire32[0, 0]) and np.isnan(wire32).sum() == 1
    np.testing.assert_array_equal(image_to_depth(SimpleNamespace(**fields32)), depth)
    fields16 = depth_fields(depth, '16UC1')
    wire16 = image_to_array(SimpleNamespace(**fields16))
    assert wire16.dtype == np.uint16 and wire16[0, 0] == 0 and wire16[2, 3] == 0
    back = image_to_depth(SimpleNamespace(**fields16))
    inside = (depth > 0) & (depth < 65.5)
    assert np.abs(back[inside] - depth[inside]).max() <= 0.0005 + 1e-6
    with pytest.raises(ConversionError, match='32FC1 or 16UC1'):
        depth_fields(depth, 'mono8')


def test_32fc1_values_are_alike_from_numpy_and_torch():
    # The device path makes the 32FC1 plane with torch on the GPU, the host path with numpy.
    import torch
    rng = np.random.default_rng()
    depth = rng.uniform(-1, 60, (9, 11)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.3] = 0
    depth.flat[rng.choice(depth.size, 3, replace=False)] = [np.nan, np.inf, -np.inf]
    values = depth_to_32fc1(depth)
    keep = np.isfinite(depth) & (depth > 0)
    assert values.dtype == np.float32 and np.array_equal(np.isnan(values), ~keep)
    np.testing.assert_array_equal(values[keep], depth[keep])
    np.testing.assert_array_equal(depth_to_32fc1(torch.from_numpy(depth)).numpy(), values)


def test_inconsistent_images_raise_clear_errors():
    good = wire_message(np.zeros((4, 5), np.float32), '32FC1')
    with pytest.raises(ConversionError, match="unsupported image encoding 'yuv422'"):
        image_to_array(SimpleNamespace(**{**vars(good), 'encoding': 'yuv422'}))
    with pytest.raises(ConversionError, match='expected height 4 x step 20 = 80'):
        image_to_array(SimpleNamespace(**{**vars(good), 'data': good.data[:-1]}))
    with pytest.raises(ConversionError, match='step 16 is smaller than width 5'):
        image_to_array(SimpleNamespace(**{**vars(good), 'step': 16, 'data': bytes(64)}))
    assert issubclass(ConversionError, ValueError)


def test_stamp_to_ns():
    assert stamp_to_ns(SimpleNamespace(sec=1_700_000_000, nanosec=123_456_789)) == \
        1_700_000_000_123_456_789


def cloud_message(points, extra, bigendian=False, height=1, row_padding=0, container=bytes):
    """PointCloud2 with float64 x/y/z, a float32 intensity, a uint16 ring and 6 pad bytes per
    point, packed with struct (an independent reference for the layout)."""
    order = '>' if bigendian else '<'
    point_format = order + 'f d H d d 6x'  # intensity@0 x@4 ring@12 y@14 z@22, step 36
    point_step = struct.calcsize(point_format)
    width = len(points) // height
    rows = []
    for r in range(height):
        row = b''.join(struct.pack(point_format, e[0], p[0], int(e[1]), p[1], p[2])
                       for p, e in zip(points[r * width:(r + 1) * width],
                                       extra[r * width:(r + 1) * width]))
        rows.append(row + bytes(row_padding))
    fields = [SimpleNamespace(name='intensity', offset=0, datatype=7, count=1),
              SimpleNamespace(name='x', offset=4, datatype=8, count=1),
              SimpleNamespace(name='ring', offset=12, datatype=4, count=1),
              SimpleNamespace(name='y', offset=14, datatype=8, count=1),
              SimpleNamespace(name='z', offset=22, datatype=8, count=1)]
    return SimpleNamespace(height=height, width=width, fields=fields, is_bigendian=bigendian,
                           point_step=point_step, row_step=width * point_step + row_padding,
                           data=container(b''.join(rows)), is_dense=False)


@pytest.mark.parametrize('bigendian', [False, True])
@pytest.mark.parametrize('height,row_padding', [(1, 0), (4, 0), (4, 5)])
def test_pointcloud2_with_float64_fields_padding_and_organized_rows(bigendian, height,
                                                                   row_padding):
    rng = np.random.default_rng()
    points = rng.normal(0, 20, (height * 9, 3))
    points[3, 1] = np.nan
    points[10 % len(points), 2] = np.inf
    extra = np.stack([rng.uniform(0, 1, len(points)), rng.integers(0, 64, len(points))], 1)
    msg = cloud_message(points, extra, bigendian, height, row_padding,
                        container=lambda raw: np.frombuffer(raw, np.uint8))
    result = pointcloud2_to_xyz(msg)
    finite = np.isfinite(points).all(1)
    assert result.dtype == np.float32 and result.shape == (finite.sum(), 3)
    np.testing.assert_array_equal(result, points[finite].astype(np.float32))


def test_organized_cloud_keeps_row_major_order():
    """An organized cloud is (height, width): point (r, c) is at r * row_step + c * step."""
    height, width = 3, 5
    grid = np.arange(height * width * 3, dtype=np.float32).reshape(height, width, 3)
    msg = SimpleNamespace(height=height, width=width, is_bigendian=False, point_step=12,
                          row_step=width * 12, data=grid.tobytes(),
                          fields=[SimpleNamespace(name=n, offset=4 * i, datatype=7, count=1)
                                  for i, n in enumerate('xyz')])
    np.testing.assert_array_equal(pointcloud2_to_xyz(msg), grid.reshape(-1, 3))


@pytest.mark.parametrize('height,width', [(1, 0), (0, 0), (0, 7), (4, 0)])
def test_empty_pointcloud2_gives_no_points(height, width):
    """width or height 0 (a driver's empty scan): (0, 3) float32, no numpy strides error."""
    msg = cloud_message(np.ones((4, 3)), np.ones((4, 2)))
    empty = SimpleNamespace(**{**vars(msg), 'height': height, 'width': width,
                               'row_step': width * msg.point_step, 'data': b''})
    result = pointcloud2_to_xyz(empty)
    assert result.dtype == np.float32 and result.shape == (0, 3)


def test_pointcloud2_errors():
    msg = cloud_message(np.ones((4, 3)), np.ones((4, 2)))
    with pytest.raises(ConversionError, match=r"lacks field\(s\) \['z'\]"):
        pointcloud2_to_xyz(SimpleNamespace(**{**vars(msg), 'fields': msg.fields[:4]}))
    with pytest.raises(ConversionError, match='expected height 1 x row_step 144'):
        pointcloud2_to_xyz(SimpleNamespace(**{**vars(msg), 'data': msg.data + b'\0'}))
    with pytest.raises(ConversionError, match='row_step 100 is smaller'):
        pointcloud2_to_xyz(SimpleNamespace(**{**vars(msg), 'row_step': 100}))
    with pytest.raises(ConversionError, match='does not fit in point_step 24'):
        pointcloud2_to_xyz(SimpleNamespace(**{**vars(msg), 'point_step': 24, 'row_step': 96,
                                              'data': msg.data[:96]}))


def test_pointcloud2_fields_round_trip_with_packed_rgb():
    rng = np.random.default_rng()
    xyz = rng.normal(0, 5, (50, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (50, 3), dtype=np.uint8)
    fields = pointcloud2_fields(xyz, rgb)
    assert [f['name'] for f in fields['fields']] == ['x', 'y', 'z', 'rgb']
    assert fields['point_step'] == 16 and fields['row_step'] == 800 and fields['is_dense']
    msg = SimpleNamespace(**{**fields, 'fields': [SimpleNamespace(**f)
                                                  for f in fields['fields']]})
    np.testing.assert_array_equal(pointcloud2_to_xyz(msg), xyz)
    raw = fields['data'].tobytes()
    for i in range(0, 50, 7):  # rviz reads the rgb float's bits as 0x00RRGGBB
        packed, = struct.unpack_from('<I' if not fields['is_bigendian'] else '>I', raw,
                                     16 * i + 12)
        assert packed == (int(rgb[i, 0]) << 16) | (int(rgb[i, 1]) << 8) | int(rgb[i, 2])
    plain = pointcloud2_fields(xyz)
    assert plain['point_step'] == 12 and len(plain['fields']) == 3
    assert pack_rgb(rgb).dtype == np.float32
    with pytest.raises(ConversionError, match='colours must have shape'):
        pointcloud2_fields(xyz, rgb[:3])


def test_real_sensor_msgs_image_and_pointcloud2():
    from sensor_msgs.msg import Image, PointCloud2, PointField
    rng = np.random.default_rng()
    depth = rng.uniform(0.5, 20, (6, 10)).astype(np.float32)
    fields = depth_fields(depth)
    msg = Image(height=fields['height'], width=fields['width'], encoding=fields['encoding'],
                is_bigendian=fields['is_bigendian'], step=fields['step'])
    msg.data = array.array('B', fields['data'].tobytes())
    assert isinstance(msg.data, array.array)
    result = image_to_array(msg)
    np.testing.assert_array_equal(result, depth)
    assert np.shares_memory(result, np.frombuffer(msg.data, np.uint8))
    np.testing.assert_array_equal(image_to_depth(msg), depth)

    xyz = rng.normal(0, 5, (30, 3)).astype(np.float32)
    cloud_fields = pointcloud2_fields(xyz, rng.integers(0, 256, (30, 3), dtype=np.uint8))
    cloud = PointCloud2(height=1, width=30, is_bigendian=cloud_fields['is_bigendian'],
                        point_step=cloud_fields['point_step'],
                        row_step=cloud_fields['row_step'], is_dense=cloud_fields['is_dense'],
                        fields=[PointField(**f) for f in cloud_fields['fields']])
    cloud.data = array.array('B', cloud_fields['data'].tobytes())
    np.testing.assert_array_equal(pointcloud2_to_xyz(cloud), xyz)
