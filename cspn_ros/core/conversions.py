"""sensor_msgs Image / PointCloud2 <-> numpy, duck-typed, without Python loops over bytes.

Incoming messages are read through their attributes (`height`, `width`, `encoding`, `step`,
`data`, `fields`, ...), so rclpy and rosbags messages both work; `data` may be bytes, bytearray,
array.array('B'), memoryview, a list of ints or a uint8 numpy array. Outgoing messages are plain
field dicts whose `data` is a 1-D uint8 numpy array; the caller builds its own message class.

Depth convention: the core uses float32 metres with 0 = no measurement. On the wire, 32FC1 is
metres with NaN invalid and 16UC1 is millimetres with 0 invalid (REP 118, depth_image_proc).
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from cspn_ros.core.camera import array_module

#: True when this machine stores multi-byte numbers big-endian (outgoing messages use it).
NATIVE_BIGENDIAN = sys.byteorder == 'big'

#: Image encoding -> (dtype, channels). Aliases map to the same layout.
IMAGE_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    '32FC1': (np.dtype(np.float32), 1),
    '16UC1': (np.dtype(np.uint16), 1),
    '16SC1': (np.dtype(np.int16), 1),
    'mono8': (np.dtype(np.uint8), 1),
    '8UC1': (np.dtype(np.uint8), 1),
    'mono16': (np.dtype(np.uint16), 1),
    'rgb8': (np.dtype(np.uint8), 3),
    'bgr8': (np.dtype(np.uint8), 3),
    '8UC3': (np.dtype(np.uint8), 3),
    'rgba8': (np.dtype(np.uint8), 4),
    'bgra8': (np.dtype(np.uint8), 4),
}

#: sensor_msgs/PointField datatype constant -> numpy dtype (byte order applied per message).
POINTFIELD_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.int8), 2: np.dtype(np.uint8), 3: np.dtype(np.int16), 4: np.dtype(np.uint16),
    5: np.dtype(np.int32), 6: np.dtype(np.uint32), 7: np.dtype(np.float32),
    8: np.dtype(np.float64),
}
POINTFIELD_FLOAT32 = 7

_MM_PER_M = np.float32(1000.0)


class ConversionError(ValueError):
    """A message cannot be converted: unsupported encoding or inconsistent sizes."""


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (`sec`, `nanosec`) -> int nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _rows_buffer(data: Any, height: int, width: int, item_bytes: int, row_bytes: int,
                 what: str, row_name: str, item_text: str) -> np.ndarray:
    """`data` as 1-D uint8 after checking it holds `height` rows of `row_bytes` (padding allowed)
    that each fit `width` items of `item_bytes` (described by item_text in errors);
    ConversionError naming the fields otherwise."""
    if row_bytes < width * item_bytes:
        raise ConversionError(f'{what} {row_name} {row_bytes} is smaller than width {width} x '
                              f'{item_text}')
    buffer = message_bytes(data)
    if buffer.size != height * row_bytes:
        raise ConversionError(f'{what} data has {buffer.size} bytes, expected height {height} x '
                              f'{row_name} {row_bytes} = {height * row_bytes}')
    return buffer


def message_bytes(data: Any) -> np.ndarray:
    """A message's `data` as a 1-D uint8 array, a view of the same memory where possible.

    Buffers (bytes, bytearray, array.array, memoryview, numpy) are wrapped without a copy; a list
    of ints is copied.
    """
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ConversionError(f'message data must be uint8, got numpy dtype {data.dtype}')
        return data.reshape(-1)
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    try:
        view = memoryview(data)
    except TypeError:
        raise ConversionError(f'message data of type {type(data).__name__} is not a byte '
                              'buffer') from None
    if view.itemsize != 1:
        raise ConversionError(f'message data must hold bytes, got items of {view.itemsize} '
                              'bytes')
    return np.frombuffer(view.cast('B') if view.format != 'B' else view, dtype=np.uint8)


def _strided_view(buffer: np.ndarray, dtype: np.dtype, shape: tuple[int, ...],
                  strides: tuple[int, ...], offset: int = 0) -> np.ndarray:
    """A view of `buffer` with the given layout, converted to an aligned native-order array
    (a copy) only when the layout makes the view unaligned or non-native."""
    view = np.ndarray(shape, dtype=dtype, buffer=buffer, offset=offset, strides=strides)
    if dtype.isnative and view.flags.aligned:
        return view
    return view.astype(dtype.newbyteorder('='))


def image_to_array(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> (H,W) or (H,W,C) array with the encoding's dtype in native order.

    A view of `msg.data` (no copy, read-only for immutable buffers) unless the data is
    big-endian on a little-endian machine or the row step is not a multiple of the item size.
    Row padding (`step > width * bytes_per_pixel`) is skipped by the view's strides.
    """
    encoding = msg.encoding
    if encoding not in IMAGE_ENCODINGS:
        raise ConversionError(f'unsupported image encoding {encoding!r}; supported: '
                              f'{sorted(IMAGE_ENCODINGS)}')
    dtype, channels = IMAGE_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    pixel_bytes = dtype.itemsize * channels
    buffer = _rows_buffer(msg.data, height, width, pixel_bytes, step, f'{encoding} image',
                          'step', f'{pixel_bytes} bytes per pixel')
    wire_dtype = dtype.newbyteorder('>' if msg.is_bigendian else '<')
    array = _strided_view(buffer, wire_dtype, (height, width, channels),
                          (step, pixel_bytes, dtype.itemsize))
    return array[..., 0] if channels == 1 else array


def image_size(msg: Any) -> tuple[int, int]:
    """(width, height) of a sensor_msgs/Image, or of a CompressedImage read from its header
    (`core.compressed.compressed_size`, nothing decoded)."""
    from cspn_ros.core import compressed  # OpenCV, imported when first needed
    if compressed.is_compressed(msg):
        return compressed.compressed_size(msg)
    return int(msg.width), int(msg.height)


def image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image (colour or mono) -> (H,W,3) uint8 RGB; mono is replicated.

    rgb8 (and 8UC3, taken as RGB) is returned as a view of the message; other encodings are
    copied. mono16 keeps its high byte. A sensor_msgs/CompressedImage (jpeg/png) is decoded by
    `core.compressed`.
    """
    from cspn_ros.core import compressed  # OpenCV, imported when first needed
    if compressed.is_compressed(msg):
        return compressed.compressed_to_rgb(msg)
    array = image_to_array(msg)
    encoding = msg.encoding
    if encoding in ('rgb8', '8UC3'):
        return array
    if encoding == 'bgr8':
        return np.ascontiguousarray(array[..., ::-1])
    if encoding == 'rgba8':
        return np.ascontiguousarray(array[..., :3])
    if encoding == 'bgra8':
        return np.ascontiguousarray(array[..., 2::-1])
    if encoding in ('mono8', '8UC1'):
        return np.repeat(array[..., None], 3, axis=2)
    if encoding == 'mono16':
        return np.repeat((array >> 8).astype(np.uint8)[..., None], 3, axis=2)
    raise ConversionError(f'{encoding!r} is not a colour or mono image encoding')


def image_to_depth(msg: Any) -> np.ndarray:
    """Depth image -> (H,W) float32 metres with 0 = missing (always a new array).

    32FC1 is metres (NaN, inf and values <= 0 become 0); 16UC1 / mono16 are millimetres. A
    sensor_msgs/CompressedImage in image_transport's compressedDepth format is decoded by
    `core.compressed`.
    """
    from cspn_ros.core import compressed  # OpenCV, imported when first needed
    if compressed.is_compressed(msg):
        return compressed.compressed_depth_to_depth(msg)
    array = image_to_array(msg)
    if msg.encoding == '32FC1':
        return np.where(np.isfinite(array) & (array > 0), array, np.float32(0))
    if msg.encoding in ('16UC1', 'mono16'):
        return array.astype(np.float32) / _MM_PER_M
    raise ConversionError(f'{msg.encoding!r} is not a depth encoding (use 32FC1 or 16UC1)')


def image_fields(array: np.ndarray, encoding: str) -> dict[str, Any]:
    """(H,W) or (H,W,C) array -> sensor_msgs/Image fields (without header).

    `data` is a 1-D uint8 view of the array when it is C-contiguous (else of a contiguous copy),
    in this machine's byte order, with no row padding.
    """
    if encoding not in IMAGE_ENCODINGS:
        raise ConversionError(f'unsupported image encoding {encoding!r}; supported: '
                              f'{sorted(IMAGE_ENCODINGS)}')
    dtype, channels = IMAGE_ENCODINGS[encoding]
    expected_ndim = 2 if channels == 1 else 3
    if (array.ndim != expected_ndim or (channels > 1 and array.shape[2] != channels)
            or array.dtype.newbyteorder('=') != dtype):
        raise ConversionError(f'{encoding} needs a {dtype} array of shape (H,W'
                              f'{"" if channels == 1 else f",{channels}"}), got {array.dtype} '
                              f'{array.shape}')
    native = np.ascontiguousarray(array, dtype=dtype)
    height, width = native.shape[:2]
    return {'height': height, 'width': width, 'encoding': encoding,
            'is_bigendian': NATIVE_BIGENDIAN, 'step': width * dtype.itemsize * channels,
            'data': native.reshape(-1).view(np.uint8)}


def depth_to_32fc1(depth_m: Any) -> Any:
    """(H,W) metres (0 = missing; numpy or torch) -> float32 32FC1 values: metres, NaN where
    missing (0, negative, non-finite), as REP 117 wants them on the wire."""
    xp = array_module(depth_m)
    depth = depth_m.float() if xp is not np else np.asarray(depth_m, dtype=np.float32)
    valid = xp.isfinite(depth) & (depth > 0)
    return xp.where(valid, depth, np.float32(np.nan) if xp is np else float('nan'))


def depth_fields(depth_m: np.ndarray, encoding: str = '32FC1') -> dict[str, Any]:
    """(H,W) metres (0 = missing) -> depth Image fields.

    32FC1: metres with missing (0, negative, non-finite) -> NaN. 16UC1: millimetres rounded to
    the nearest mm; missing and depths beyond 65.535 m -> 0 (invalid), never clipped.
    """
    metres = depth_to_32fc1(np.asarray(depth_m))  # NaN where missing
    if encoding == '32FC1':
        return image_fields(metres, encoding)
    if encoding == '16UC1':
        millimetres = np.rint(np.nan_to_num(metres, nan=0.0) * _MM_PER_M)
        millimetres[millimetres > np.iinfo(np.uint16).max] = 0
        return image_fields(millimetres.astype(np.uint16), encoding)
    raise ConversionError(f'depth encoding must be 32FC1 or 16UC1, got {encoding!r}')


def pointcloud2_to_xyz(msg: Any) -> np.ndarray:
    """sensor_msgs/PointCloud2 -> (N,3) float32 x, y, z in the cloud's frame.

    Any field layout: float32/float64 x/y/z at any offsets, extra fields, padding in point_step
    and row_step, either byte order. Integer x/y/z are refused (as metres they would be whole
    metres; a wrong declaration over float bytes reads garbage). Organized clouds (height > 1) are read row by
    row as (height, width). Points with a non-finite coordinate are dropped.
    """
    fields = {field.name: field for field in msg.fields}
    missing = [name for name in 'xyz' if name not in fields]
    if missing:
        raise ConversionError(f'PointCloud2 lacks field(s) {missing}; it has '
                              f'{sorted(fields)}')
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    buffer = _rows_buffer(msg.data, height, width, point_step, row_step, 'PointCloud2',
                          'row_step', f'point_step {point_step}')
    xyz = np.empty((height, width, 3), dtype=np.float32)
    for axis, name in enumerate('xyz'):
        field = fields[name]
        if field.datatype in POINTFIELD_DTYPES and POINTFIELD_DTYPES[field.datatype].kind != 'f':
            raise ConversionError(f'PointCloud2 field {name!r} is declared '
                                  f'{POINTFIELD_DTYPES[field.datatype]}: x/y/z must be FLOAT32 '
                                  'or FLOAT64 metres (check the field types)')
        xyz[..., axis] = _field_view(msg, field, buffer)
    xyz = xyz.reshape(-1, 3)
    finite = np.isfinite(xyz).all(axis=1)
    return xyz if finite.all() else xyz[finite]


def _field_view(msg: Any, field: Any, buffer: np.ndarray) -> np.ndarray:
    """(height, width) view of one PointField of a PointCloud2 whose data is `buffer` (an empty
    array for an empty cloud); ConversionError for unknown datatypes or a field that does not
    fit in point_step."""
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if field.datatype not in POINTFIELD_DTYPES:
        raise ConversionError(f'PointCloud2 field {field.name!r} has unknown datatype '
                              f'{field.datatype}')
    dtype = POINTFIELD_DTYPES[field.datatype].newbyteorder('>' if msg.is_bigendian else '<')
    if field.offset + dtype.itemsize > point_step:
        raise ConversionError(f'PointCloud2 field {field.name!r} at offset {field.offset} does '
                              f'not fit in point_step {point_step}')
    if height * width == 0:  # an empty cloud has no buffer to view (numpy rejects the strides)
        return np.empty((height, width), dtype)
    return np.ndarray((height, width), dtype=dtype, buffer=buffer, offset=field.offset,
                      strides=(row_step, point_step))


def pointcloud2_field(msg: Any, name: str) -> np.ndarray:
    """One PointCloud2 field -> (N,) float64 for the points `pointcloud2_to_xyz` keeps (finite
    x, y, z), in the same order. ConversionError when the cloud has no such field."""
    fields = {field.name: field for field in msg.fields}
    if name not in fields or any(axis not in fields for axis in 'xyz'):
        raise ConversionError(f'PointCloud2 lacks field {name!r}; it has {sorted(fields)}')
    buffer = _rows_buffer(msg.data, int(msg.height), int(msg.width), int(msg.point_step),
                          int(msg.row_step), 'PointCloud2', 'row_step',
                          f'point_step {msg.point_step}')
    values = _field_view(msg, fields[name], buffer).astype(np.float64).reshape(-1)
    finite = np.ones(values.shape, bool)
    for axis in 'xyz':
        finite &= np.isfinite(_field_view(msg, fields[axis], buffer).reshape(-1))
    return values if finite.all() else values[finite]


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(N,3) uint8 -> (N,) float32 whose bits are 0x00RRGGBB (the 'rgb' field rviz reads)."""
    rgb = np.asarray(rgb, dtype=np.uint32)
    return ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).view(np.float32)


def pointcloud2_fields(xyz: np.ndarray, rgb: np.ndarray | None = None,
                       extra: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """(N,3) float32 points (+ (N,3) uint8 colours) -> unorganized PointCloud2 fields.

    Layout: x, y, z float32 at offsets 0, 4, 8 and, with colours, a packed float32 'rgb' at 12
    (point_step 16); `fields` is a list of {name, offset, datatype, count} dicts. extra: more
    per-point fields after those, name -> (N,) array of any PointField dtype (e.g. a LiDAR's
    per-point time), packed without padding.
    """
    if extra:
        return _pointcloud2_fields_with(xyz, rgb, extra)
    xyz = np.asarray(xyz, dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ConversionError(f'points must have shape (N,3), got {xyz.shape}')
    names = ['x', 'y', 'z']
    if rgb is not None:
        if np.shape(rgb) != xyz.shape:
            raise ConversionError(f'colours must have shape {xyz.shape}, got {np.shape(rgb)}')
        names.append('rgb')
    points = np.empty((xyz.shape[0], len(names)), dtype=np.float32)
    points[:, :3] = xyz
    if rgb is not None:
        points[:, 3] = pack_rgb(rgb)
    point_step = 4 * len(names)
    return {'height': 1, 'width': xyz.shape[0],
            'fields': [{'name': name, 'offset': 4 * i, 'datatype': POINTFIELD_FLOAT32,
                        'count': 1} for i, name in enumerate(names)],
            'is_bigendian': NATIVE_BIGENDIAN, 'point_step': point_step,
            'row_step': point_step * xyz.shape[0], 'data': points.reshape(-1).view(np.uint8),
            'is_dense': bool(np.isfinite(xyz).all())}


def _pointcloud2_fields_with(xyz: np.ndarray, rgb: np.ndarray | None,
                             extra: dict[str, np.ndarray]) -> dict[str, Any]:
    """`pointcloud2_fields` with extra per-point fields (a structured array, one copy)."""
    base = pointcloud2_fields(xyz, rgb)
    count = int(base['width'])
    datatypes = {dtype: code for code, dtype in POINTFIELD_DTYPES.items()}
    columns = [(f['name'], np.dtype(np.float32)) for f in base['fields']]
    for name, values in extra.items():
        values = np.asarray(values)
        if values.shape != (count,) or values.dtype.newbyteorder('=') not in datatypes:
            raise ConversionError(f'extra field {name!r} must be ({count},) of a PointField '
                                  f'dtype, got {values.shape} {values.dtype}')
        columns.append((name, values.dtype.newbyteorder('=')))
    points = np.empty(count, np.dtype(columns))
    head = np.frombuffer(base['data'], np.dtype(columns[:len(base['fields'])]))
    for name, _ in columns[:len(base['fields'])]:
        points[name] = head[name]
    for name, values in extra.items():
        points[name] = values
    point_step = points.dtype.itemsize
    return {**base, 'fields': [{'name': name, 'offset': points.dtype.fields[name][1],
                                'datatype': datatypes[dtype], 'count': 1}
                               for name, dtype in columns],
            'point_step': point_step, 'row_step': point_step * count,
            'data': points.view(np.uint8).reshape(-1)}
