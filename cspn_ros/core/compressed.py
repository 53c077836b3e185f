"""sensor_msgs/CompressedImage <-> numpy with OpenCV: image_transport's `compressed` (jpeg/png
colour) and `compressedDepth` (depth) conventions, ROS-free and duck-typed (`format`, `data`).

`compressed`: `format` is e.g. 'rgb8; jpeg compressed bgr8' (older publishers: 'jpeg'), `data`
one JPEG or PNG file of the colour image, stored BGR (OpenCV's order) whatever the source
encoding; it is decoded to RGB here.

`compressedDepth` (compressed_depth_image_transport): `format` is '<encoding>; compressedDepth
[png|rvl]', `data` a 12-byte little-endian header (int32 compression format, float32
depthQuantA, float32 depthQuantB) then a PNG of one uint16 plane:
- 16UC1: the millimetres themselves (0 = invalid);
- 32FC1: quantised inverse depth q = A / depth + B (truncated), with A = quantization *
  (quantization + 1) and B = 1 - A / max_depth; decoded as depth = A / (q - B) metres, q = 0
  invalid. A step of q is depth^2 / A metres: 1 cm at 10 m with the default quantization 100.
Only png is decoded ('rvl' raises ConversionError naming it).

Depth comes out in the core convention (float32 metres, 0 = no measurement). A payload that
cannot be decoded whole (empty, truncated, corrupt PNG, wrong format) raises ConversionError:
JPEG and PNG must end with their end marker, so a truncated file is never half-decoded into a
grey-filled image. (Damaged JPEG entropy data has no checksum and cannot be detected; PNG's
CRCs catch it.)
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from cspn_ros.core.conversions import ConversionError, message_bytes

#: Bytes of compressed_depth_image_transport's ConfigHeader before the PNG.
DEPTH_HEADER_BYTES = 12
_DEPTH_HEADER = np.dtype([('format', '<i4'), ('quant_a', '<f4'), ('quant_b', '<f4')])
#: compressed_depth_image_transport's compressionFormat value written in the header.
_INV_DEPTH_FORMAT = 0
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_END = b'IEND'
_JPEG_START, _JPEG_END = b'\xff\xd8', b'\xff\xd9'
#: Trailing bytes allowed after a JPEG's end marker (some encoders pad).
_JPEG_TRAILER_BYTES = 16
#: Defaults of compressed_depth_image_transport's publisher (32FC1 only).
DEFAULT_DEPTH_MAX_M = 10.0
DEFAULT_DEPTH_QUANTIZATION = 100.0


def is_compressed(msg: Any) -> bool:
    """Whether msg is a CompressedImage (has `format`, no `encoding`) rather than an Image."""
    return hasattr(msg, 'format') and not hasattr(msg, 'encoding')


def _whole_file(data: np.ndarray, what: str) -> None:
    """ConversionError unless data is one complete JPEG or PNG file (start and end markers)."""
    head, tail = data[:8].tobytes(), data[-(_JPEG_TRAILER_BYTES + 2):].tobytes()
    if head.startswith(_JPEG_START):
        if _JPEG_END not in tail:
            raise ConversionError(f'{what}: JPEG of {data.size} bytes has no end marker '
                                  '(truncated)')
    elif head == _PNG_SIGNATURE:
        if data.size < 20 or data[-8:-4].tobytes() != _PNG_END:
            raise ConversionError(f'{what}: PNG of {data.size} bytes has no IEND chunk '
                                  '(truncated)')
    else:
        raise ConversionError(f'{what}: {data.size} bytes that are neither JPEG nor PNG')


#: JPEG start-of-frame markers (they carry the image size); C4, C8 and CC are other segments.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def compressed_size(msg: Any) -> tuple[int, int]:
    """(width, height) of a CompressedImage from its JPEG/PNG header, without decoding (so an
    oversized image is refused before it is decompressed); ConversionError when the header
    cannot be read."""
    data = message_bytes(msg.data)
    if 'compressedDepth' in str(msg.format):
        data = data[DEPTH_HEADER_BYTES:]
    head = data[:8].tobytes()
    if head == _PNG_SIGNATURE and data.size >= 24 and data[12:16].tobytes() == b'IHDR':
        width, height = np.frombuffer(data[16:24].tobytes(), '>u4')
        return int(width), int(height)
    if head.startswith(_JPEG_START):
        position = 2
        while position + 9 <= data.size and data[position] == 0xFF:
            marker = int(data[position + 1])
            if marker == 0xFF:  # fill byte
                position += 1
                continue
            if marker in _JPEG_FRAME_MARKERS:
                height, width = np.frombuffer(data[position + 5:position + 9].tobytes(), '>u2')
                return int(width), int(height)
            position += 2 + int(data[position + 2]) * 256 + int(data[position + 3])
    raise ConversionError(f'compressed image ({str(msg.format)!r}): no JPEG or PNG header '
                          f'giving its size in {data.size} bytes')


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png colour or mono) -> (H,W,3) uint8 RGB."""
    text = str(msg.format)
    if 'compressedDepth' in text:
        raise ConversionError(f'image: format {text!r} is a compressedDepth depth image, not '
                              'colour')
    data = message_bytes(msg.data)
    what = f'compressed image ({text!r})'
    _whole_file(data, what)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise ConversionError(f'{what}: OpenCV cannot decode its {data.size} bytes (corrupt)')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def compressed_depth_to_depth(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage in compressedDepth format -> (H,W) float32 metres, 0 =
    missing (16UC1 millimetres or 32FC1 quantised inverse depth, see the module docstring)."""
    text = str(msg.format)
    encoding, _, rest = text.partition(';')
    encoding, words = encoding.strip(), rest.split()
    if 'compressedDepth' not in words:
        raise ConversionError(f'depth: format {text!r} is not compressedDepth '
                              "('<encoding>; compressedDepth png')")
    codec = words[words.index('compressedDepth') + 1:] or ['png']
    if codec[0] != 'png':
        raise ConversionError(f'depth: compressedDepth codec {codec[0]!r} is not supported '
                              "(png only; set the publisher's format parameter to png)")
    if encoding not in ('16UC1', 'mono16', '32FC1'):
        raise ConversionError(f'depth: compressedDepth of {encoding!r} (16UC1 or 32FC1 only)')
    data = message_bytes(msg.data)
    what = f'compressedDepth ({text!r})'
    if data.size <= DEPTH_HEADER_BYTES:
        raise ConversionError(f'{what}: {data.size} bytes, not even its '
                              f'{DEPTH_HEADER_BYTES}-byte header and a PNG')
    header = np.frombuffer(data[:DEPTH_HEADER_BYTES].tobytes(), _DEPTH_HEADER)[0]
    png = data[DEPTH_HEADER_BYTES:]
    _whole_file(png, what)
    plane = cv2.imdecode(png, cv2.IMREAD_UNCHANGED)
    if plane is None or plane.dtype != np.uint16 or plane.ndim != 2:
        found = 'nothing' if plane is None else f'{plane.dtype} x {plane.shape}'
        raise ConversionError(f'{what}: PNG of {png.size} bytes decodes to {found}, expected '
                              'one uint16 plane (corrupt)')
    if encoding != '32FC1':
        return plane.astype(np.float32) / np.float32(1000.0)
    quant_a, quant_b = np.float32(header['quant_a']), np.float32(header['quant_b'])
    quantised = plane.astype(np.float32)
    with np.errstate(divide='ignore', invalid='ignore'):
        depth = quant_a / (quantised - quant_b)
    return np.where((plane > 0) & np.isfinite(depth) & (depth > 0), depth,
                    np.float32(0)).astype(np.float32)


def compressed_image_fields(rgb: np.ndarray, codec: str = 'jpeg', quality: int = 95
                            ) -> dict[str, Any]:
    """(H,W,3) uint8 RGB -> CompressedImage fields {format, data (1-D uint8)} as image_transport's
    compressed publisher writes them (BGR inside the file). codec: 'jpeg' | 'png'."""
    if codec not in ('jpeg', 'png'):
        raise ValueError(f"codec must be 'jpeg' or 'png', got {codec!r}")
    flags = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if codec == 'jpeg' else []
    ok, data = cv2.imencode('.jpg' if codec == 'jpeg' else '.png',
                            cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), flags)
    if not ok:
        raise ValueError(f'OpenCV could not encode a {rgb.shape} image as {codec}')
    return {'format': f'rgb8; {codec} compressed bgr8', 'data': data.reshape(-1)}


def compressed_depth_fields(depth_m: np.ndarray, encoding: str = '16UC1',
                            max_depth: float = DEFAULT_DEPTH_MAX_M,
                            quantization: float = DEFAULT_DEPTH_QUANTIZATION) -> dict[str, Any]:
    """(H,W) float32 metres (0 / NaN = missing) -> compressedDepth CompressedImage fields
    {format, data}: 16UC1 millimetres, or 32FC1 inverse depth quantised with max_depth (m) and
    quantization (depths at or beyond max_depth become invalid, as in image_transport)."""
    depth = np.nan_to_num(np.asarray(depth_m, dtype=np.float32), nan=0.0, posinf=0.0)
    quant_a = quant_b = 0.0
    if encoding == '16UC1':
        plane = np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)
    elif encoding == '32FC1':
        quant_a = quantization * (quantization + 1.0)
        quant_b = 1.0 - quant_a / max_depth
        valid = (depth > 0) & (depth < max_depth)
        with np.errstate(divide='ignore'):
            quantised = np.where(valid, np.float32(quant_a) / depth + np.float32(quant_b), 0)
        plane = np.where(quantised < 65536, quantised, 0).astype(np.uint16)
    else:
        raise ValueError(f"encoding must be '16UC1' or '32FC1', got {encoding!r}")
    ok, png = cv2.imencode('.png', plane)
    if not ok:
        raise ValueError(f'OpenCV could not encode a {plane.shape} depth plane as png')
    header = np.array([(_INV_DEPTH_FORMAT, quant_a, quant_b)], _DEPTH_HEADER).view(np.uint8)
    return {'format': f'{encoding}; compressedDepth png',
            'data': np.concatenate([header, png.reshape(-1)])}
