"""Topic names and frame ids shared by the nodes, the bag reader and the synthetic bag writer.

`TOPICS` are the nodes' relative names (they resolve in the node's namespace); `BAG_TOPICS` are
the same topics as a bag recorded from the root namespace holds them (the bag tools' defaults).
"""
from __future__ import annotations

#: stream -> topic name relative to the node namespace.
TOPICS = {
    'image': 'image',                        # sensor_msgs/Image, colour (rgb8, bgr8, mono8, ...)
    'camera_info': 'camera_info',            # sensor_msgs/CameraInfo of the colour camera
    'points': 'points',                      # sensor_msgs/PointCloud2 in the LiDAR frame
    'tof_depth': 'tof/depth',                # sensor_msgs/Image 32FC1 m (NaN) or 16UC1 mm (0)
    'tof_camera_info': 'tof/camera_info',    # sensor_msgs/CameraInfo of the ToF camera
    'ground_truth': 'ground_truth/depth',    # sensor_msgs/Image 32FC1 m in the colour camera
    'odometry': 'odom',                      # nav_msgs/Odometry, child frame = camera optical
}
#: stream -> absolute topic, as recorded from nodes in the root namespace.
BAG_TOPICS = {key: '/' + name for key, name in TOPICS.items()}
#: image_transport transport -> suffix of its topic after the base image topic
#: (`<image>/compressed`, `<depth>/compressedDepth`); 'raw' is the base topic itself.
TRANSPORT_SUFFIXES = {'raw': '', 'compressed': '/compressed', 'compressedDepth': '/compressedDepth'}
#: Transports each image input takes (parameters `image_transport`, `tof.image_transport`).
COLOUR_TRANSPORTS = ('raw', 'compressed')
DEPTH_TRANSPORTS = ('raw', 'compressedDepth')
#: tf topics (always absolute): transforms that change and transforms that never do.
TF_TOPIC = '/tf'
TF_STATIC_TOPIC = '/tf_static'
#: Frame ids of the embedded rig; 'odom' is the fixed frame of the camera odometry (REP 105).
FRAME_IDS = {'camera': 'camera_optical', 'lidar': 'lidar', 'tof': 'tof_optical',
             'odom': 'odom'}


def transport_topic(base: str, transport: str) -> str:
    """The topic of `transport` for the image topic `base` (image_transport's naming)."""
    if transport not in TRANSPORT_SUFFIXES:
        raise ValueError(f'transport must be one of {tuple(TRANSPORT_SUFFIXES)}, '
                         f'got {transport!r}')
    return base.rstrip('/') + TRANSPORT_SUFFIXES[transport]


def recorded_topic(base: str, recorded: set[str] | dict) -> str | None:
    """Which topic holds the image topic `base` in a recording: `base` itself, else its
    compressed / compressedDepth transport topic, else None."""
    for transport in TRANSPORT_SUFFIXES:
        topic = transport_topic(base, transport)
        if topic in recorded:
            return topic
    return None
