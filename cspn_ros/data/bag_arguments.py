"""Command-line bag options shared by `evaluate` and `training_node`.

`add_bag_arguments` declares the topic, pairing and projection options (names and defaults are
the completion node's parameters); `frames_from_args` turns the parsed options into, per depth
source, the `BagFrames` and the `CompletionPipeline` keyword arguments. The extrinsic is the
--extrinsic-* flags when given, else the bags' tf (`BagFrames.sensor_extrinsic`).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from cspn_ros.core.motion import DRIVER_TIME_FIELDS, MotionCompensation, parse_time_field
from cspn_ros.core.occlusion import OcclusionFilter
from cspn_ros.core.projection import transform_from_translation_quaternion
from cspn_ros.core.topics import recorded_topic
from cspn_ros.data.bag_frames import BagFrames
from cspn_ros.data.bag_reader import BagError, BagTopics, bag_topics

LOGGER = logging.getLogger(__name__)
#: depth sources of a pipeline; training also reads 'both' (each bag feeds the sources it records).
DEPTH_SOURCES = ('lidar', 'tof')


def add_bag_arguments(parser: argparse.ArgumentParser,
                      depth_sources: Sequence[str] = DEPTH_SOURCES) -> None:
    """Topic, pairing and projection options shared by `evaluate` and `training_node`; names
    and defaults are the completion node's parameters. depth_sources: the --depth-source
    choices (training also takes 'both')."""
    group = parser.add_argument_group('bag topics and projection (as the completion node)')
    defaults = BagTopics()
    group.add_argument('--image-topic', default=defaults.image)
    group.add_argument('--camera-info-topic', default=defaults.camera_info)
    group.add_argument('--points-topic', default=defaults.points)
    group.add_argument('--tof-depth-topic', default=defaults.tof_depth)
    group.add_argument('--tof-camera-info-topic', default=defaults.tof_camera_info)
    group.add_argument('--depth-source', choices=tuple(depth_sources), default='lidar')
    group.add_argument('--tof-registered', action='store_true',
                       help='the ToF depth is already in the colour camera')
    extrinsic = ('the sensor frame in the camera optical frame (p_cam = R p_sensor + t); '
                 "default: looked up in the bag's /tf_static or /tf")
    group.add_argument('--extrinsic-translation', type=float, nargs=3, default=None,
                       metavar=('X', 'Y', 'Z'), help=f'metres; {extrinsic}')
    group.add_argument('--extrinsic-rotation', type=float, nargs=4, default=None,
                       metavar=('QX', 'QY', 'QZ', 'QW'), help=f'quaternion; {extrinsic}')
    group.add_argument('--motion-topic', default='',
                       help='odometry (nav_msgs/Odometry or PoseStamped) of the platform: every '
                       "LiDAR point is moved to the image's stamp (motion compensation, "
                       'README "Moving LiDAR"); default: none')
    group.add_argument('--lidar-time-field', default='velodyne',
                       help='per-point time of the cloud for --motion-topic: a driver ('
                       + ', '.join(DRIVER_TIME_FIELDS) + ') or NAME[:UNIT[:REFERENCE]] '
                       "(unit s/ms/us/ns, reference relative/absolute); default %(default)s")
    group.add_argument('--slop', type=float, default=0.05, help='pairing slop, seconds')
    group.add_argument('--queue-size', type=int, default=10)
    group.add_argument('--min-depth', type=float, default=0.1, help='metres')
    group.add_argument('--max-depth', type=float, default=100.0, help='metres')
    occlusion = OcclusionFilter()
    group.add_argument('--no-occlusion-filter', dest='occlusion_filter', action='store_false',
                       help='keep LiDAR points the camera cannot see (the filter is on by default)')
    group.add_argument('--occlusion-window', type=int, default=occlusion.window,
                       help='occlusion filter: pixels searched around a point')
    group.add_argument('--occlusion-min-gap', type=float, default=occlusion.min_gap,
                       help='occlusion filter: relative depth gap of a nearer neighbour')
    group.add_argument('--occlusion-min-quadrants', type=int, default=occlusion.min_quadrants,
                       help='occlusion filter: quadrants with nearer points that drop a point')


def _extrinsic(args: argparse.Namespace, frames: BagFrames, depth_source: str) -> np.ndarray:
    """T_cam_from_sensor: the --extrinsic-* flags when given (a missing one is the identity),
    else the bags' tf; identity for ToF depth already registered to the colour camera."""
    if depth_source == 'tof' and args.tof_registered:
        return np.eye(4)
    if args.extrinsic_translation is not None or args.extrinsic_rotation is not None:
        LOGGER.info('extrinsic of the %s from --extrinsic-translation/--extrinsic-rotation',
                    depth_source)
        return transform_from_translation_quaternion(
            args.extrinsic_translation or [0.0, 0.0, 0.0],
            args.extrinsic_rotation or [0.0, 0.0, 0.0, 1.0])
    return frames.sensor_extrinsic(depth_source)


def _occlusion_filter(args: argparse.Namespace, depth_source: str) -> Optional[OcclusionFilter]:
    """The --occlusion-* filter for LiDAR input (None for ToF or --no-occlusion-filter)."""
    if depth_source != 'lidar' or not args.occlusion_filter:
        return None
    return OcclusionFilter(args.occlusion_window, args.occlusion_min_gap,
                           args.occlusion_min_quadrants)


def frames_from_args(args: argparse.Namespace, paths: Sequence[str | Path],
                     ground_truth: Optional[str] = None, pose: Optional[str] = None
                     ) -> dict[str, tuple[BagFrames, dict[str, Any]]]:
    """Per depth source: the BagFrames of the parsed `add_bag_arguments` options and the
    CompletionPipeline keyword arguments (all but the completer, extrinsic included).

    One source ('lidar' | 'tof'): every bag must record it. With --depth-source both, each bag
    feeds every source whose topics it records (an outdoor bag without a ToF feeds only
    'lidar'); both extrinsics then come from the bags' tf.
    """
    motion_topic = getattr(args, 'motion_topic', '')
    if pose and motion_topic and pose != motion_topic:
        raise ValueError(f'--motion-topic {motion_topic} and the pose topic {pose} differ: '
                         'give one odometry')
    topics = BagTopics(args.image_topic, args.camera_info_topic, args.points_topic,
                       args.tof_depth_topic, args.tof_camera_info_topic, ground_truth,
                       pose or motion_topic or None)
    both = args.depth_source == 'both'
    if both and (args.extrinsic_translation is not None or args.extrinsic_rotation is not None):
        raise ValueError("--depth-source both reads both extrinsics from the bag's tf; "
                         '--extrinsic-translation/--extrinsic-rotation describe one sensor')
    recorded = {str(path): bag_topics(path) for path in paths} if both else {}
    result = {}
    for source in DEPTH_SOURCES if both else (args.depth_source,):
        wanted = topics.sensor(source, args.tof_registered)
        source_paths = ([p for p in paths
                         if all(recorded_topic(t, recorded[str(p)]) for t in wanted)]
                        if both else list(paths))
        if not source_paths:
            continue
        frames = BagFrames(source_paths, topics, source, args.tof_registered, args.slop,
                           args.queue_size)
        options = {'depth_source': source, 'T_cam_from_sensor': _extrinsic(args, frames, source),
                   'min_depth': args.min_depth, 'max_depth': args.max_depth,
                   'tof_registered': args.tof_registered,
                   'occlusion': _occlusion_filter(args, source)}
        if motion_topic and source == 'lidar':
            options['motion'] = MotionCompensation(
                parse_time_field(args.lidar_time_field),
                T_body_from_sensor=frames.motion_body_extrinsic(options['T_cam_from_sensor']))
        result[source] = (frames, options)
    if not result:
        raise BagError(f'none of {[str(p) for p in paths]} records a LiDAR ({topics.points}) '
                       f'or ToF ({topics.tof_depth}) topic')
    return result
