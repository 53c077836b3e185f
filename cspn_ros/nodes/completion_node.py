"""completion_node: colour image + LiDAR cloud or ToF depth in, dense metric depth out.

Thin wiring around `core.pipeline.CompletionPipeline`. `CompletionCore` owns everything a node
needs (model, matcher, worker thread, publishers, subscriptions, diagnostics) in four steps,
configure / activate / deactivate / cleanup, so the plain `CompletionNode` (all four at start)
and the managed `LifecycleCompletionNode` share one implementation. One worker thread owns the
model and the input subscriptions: they live on a hidden helper node (`_<name>_inputs`,
subscribed to the topic names this node resolves) that the worker spins itself between frames,
so the node's executor (parameters, lifecycle services, the diagnostics timer) never
deserialises MB-sized inputs, and
inputs that arrive while a frame is being processed wait in DDS, where a faster publisher's
older samples are overwritten (QoS history) at no cost. Before each frame the worker takes
every waiting message, feeds the stamp matcher (`core.sync`) and completes only the newest
matched set; older sets are dropped and counted. Bad frames are logged (throttled per problem)
and skipped; the node keeps running.

Topics (relative): in `image` (or `image/compressed`: image_transport), `camera_info`, and
`points` (depth_source=lidar) or `tof/depth` (or `tof/depth/compressedDepth`) (+
`tof/camera_info` unless tof.registered); out `depth` (32FC1 metres, NaN invalid, the image's
header), `depth/camera_info` (the colour CameraInfo as scaled to the image, same header; the
depth is pixel-aligned with `image`, raw or rectified), `depth/colorized` (bgr8),
`depth/points` (PointCloud2 xyz+rgb), `depth/sparse` (32FC1), `depth/confidence` (32FC1 in
[0, 1]), and `/diagnostics` (1 Hz DiagnosticArray).
"""
from __future__ import annotations

import json
import re
import threading
import time
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.clock import Clock, ClockType
from rclpy.executors import SingleThreadedExecutor
from rclpy.logging import LoggingSeverity
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from cspn_ros.core.colorize import colorize_depth
from cspn_ros.core.conversions import (depth_fields, image_fields, pointcloud2_fields,
                                       stamp_to_ns)
from cspn_ros.core.diagnostics import ERROR, OK, WARN, CompletionDiagnostics, silent_topics
from cspn_ros.core.input_check import (DEFAULT_MAX_IMAGE_SIZE, DEFAULT_MAX_INPUT_DISTANCE,
                                       DEFAULT_MIN_INPUT_PIXELS, image_size_problem,
                                       silent_input_hint)
from cspn_ros.core.motion import MotionCompensation, parse_time_field
from cspn_ros.core.occlusion import OcclusionFilter
from cspn_ros.core.pipeline import (DEPTH_SOURCES, CompletionPipeline, InputError,
                                    ModelOutputError)
from cspn_ros.core.projection import depth_to_points, transform_from_translation_quaternion
from cspn_ros.core.selfcheck import FALLBACKS, SelfCheck, SelfCheckConfig
from cspn_ros.core.sync import ApproximateTimeMatcher, MatchedSet
from cspn_ros.core.topics import COLOUR_TRANSPORTS, DEPTH_TRANSPORTS, transport_topic
from cspn_ros.nodes.extrinsic_source import ExtrinsicSource
from cspn_ros.nodes.hardware import hardware_id
from cspn_ros.nodes.motion_source import ODOMETRY_TYPES, MotionSource, odometry_message_type
from cspn_ros.nodes.messages import (camera_info_msg, diagnostic_array_msg, header_msg, image_msg,
                                     pointcloud2_msg)
from cspn_ros.nodes.spin import freeze_long_lived_objects, run

#: Seconds between two log lines about the same problem.
THROTTLE_S = 5.0
DEVICES = ('cpu', 'cuda', 'auto')
PRECISIONS = ('fp32', 'fp16', 'bf16')
RELIABILITIES = {'reliable': ReliabilityPolicy.RELIABLE,
                 'best_effort': ReliabilityPolicy.BEST_EFFORT}
OUTPUT_TOPICS = {'depth': Image, 'depth/camera_info': CameraInfo, 'depth/colorized': Image,
                 'depth/points': PointCloud2, 'depth/sparse': Image, 'depth/confidence': Image}


def _float_range(low: float, high: float) -> dict:
    return {'floating_point_range': [FloatingPointRange(from_value=low, to_value=high, step=0.0)]}


def _int_range(low: int, high: int) -> dict:
    return {'integer_range': [IntegerRange(from_value=low, to_value=high, step=1)]}


#: name -> (default, description, extra ParameterDescriptor fields, read_only).
#: Parameters that shape the model, the matcher or the subscriptions are read-only; output
#: options, the depth range, precision and propagation steps can change at run time.
PARAMETERS = {
    'depth_source': ('lidar', 'lidar: PointCloud2 on `points`; tof: depth Image on `tof/depth`',
                     {'additional_constraints': 'one of: lidar, tof'}, True),
    'device': ('auto', 'cpu, cuda, or auto (cuda when available); cuda without a GPU falls '
               'back to cpu with a warning unless require_gpu',
               {'additional_constraints': 'one of: cpu, cuda, auto'}, True),
    'require_gpu': (False, 'refuse to start without CUDA; on CUDA out of memory keep trying on '
                    'the GPU instead of falling back to the CPU', {}, True),
    'checkpoint': ('', "'' = packaged default weights; 'classical' = no-weights baseline; "
                   'else a .safetensors/.pt path', {}, True),
    'model_config': ('', 'untrained model (random weights, mainly for tests): a JSON object '
                     '(e.g. {"width": 8, "steps": 2}), a YAML/JSON file or a propagation name; '
                     'overrides checkpoint when non-empty', {}, True),
    'precision': ('fp32', 'fp32, fp16 or bf16 (autocast on CUDA; CPU runs fp32)',
                  {'additional_constraints': 'one of: fp32, fp16, bf16'}, False),
    'backend': ('auto', 'torch, onnxruntime (the network as a cached ONNX graph; CPU, fp32), or '
                'auto (onnxruntime where it applies, else torch)',
                {'additional_constraints': 'one of: torch, onnxruntime, auto'}, True),
    'channels_last': (False, 'channels-last memory format for the network (GPU)', {}, True),
    'cuda_graphs': (False, 'replay the network from a CUDA graph (GPU, fixed image size)', {},
                    True),
    'compile': (False, 'torch.compile the network (slow first frames; see warmup_size)', {},
                True),
    'warmup_size': ([0, 0], '[width, height] px of frames to warm the model up with at start; '
                    '[0, 0] = warm up at the first camera_info size', {}, True),
    'extrinsic.from_tf': (True, 'T_cam_from_sensor from tf (image frame <- sensor frame; the '
                          'extrinsic.* parameters are then ignored; frames wait until tf has it; '
                          '/tf_static changes are followed); false, or tf2_ros not installed: '
                          'the extrinsic.* parameters', {}, True),
    'extrinsic.translation': ([0.0, 0.0, 0.0], '[x, y, z] metres of the LiDAR/ToF frame in the '
                              'colour camera optical frame (p_cam = R p_sensor + t)', {}, True),
    'extrinsic.rotation': ([0.0, 0.0, 0.0, 1.0], '[qx, qy, qz, qw] rotation from the LiDAR/ToF '
                           'frame to the colour camera optical frame', {}, True),
    'extrinsic.matrix': (Parameter.Type.DOUBLE_ARRAY, '16 floats, row-major 4x4 '
                         'T_cam_from_sensor; overrides translation/rotation when set', {}, True),
    'rectified': (False, 'the `image` is rectified (image_rect): its camera is the CameraInfo '
                  'P, no distortion; false = a raw image, K + D', {}, True),
    'image_transport': ('raw', 'transport of `image` (image_transport naming): raw = '
                        'sensor_msgs/Image on `image`; compressed = CompressedImage (jpeg/png) on '
                        '`image/compressed`', {'additional_constraints': 'one of: raw, compressed'},
                        True),
    'tof.image_transport': ('raw', 'transport of `tof/depth`: raw = Image; compressedDepth = '
                            "image_transport's compressedDepth (png of 16UC1, or of 32FC1 "
                            'quantised inverse depth) on `tof/depth/compressedDepth`',
                            {'additional_constraints': 'one of: raw, compressedDepth'}, True),
    'motion.odometry_topic': ('', "platform odometry for LiDAR motion compensation ('' = "
                              "off): every cloud point is moved to the image's stamp using "
                              'its per-point time (motion.time_field)', {}, True),
    'motion.odometry_type': ('odometry', 'odometry = nav_msgs/Odometry (child_frame_id: the '
                             'body); pose = geometry_msgs/PoseStamped of the camera',
                             {'additional_constraints': 'one of: odometry, pose'}, True),
    'motion.time_field': ('velodyne', 'per-point time of the cloud: a driver (velodyne, ouster, '
                          'hesai, robosense, livox, livox_offset) or NAME:UNIT:REFERENCE '
                          '(unit s/ms/us/ns, reference relative/absolute)', {}, True),
    'tof.registered': (False, 'the ToF depth is already registered to the colour camera '
                       '(no tof/camera_info, no extrinsic)', {}, True),
    'slop': (0.05, 'largest stamp difference (s) between paired messages', _float_range(0.0, 10.0),
             True),
    'queue_size': (10, 'messages kept per topic while pairing', _int_range(1, 1000), True),
    'input_timeout': (5.0, 'seconds of silence on an input before warning (naming it), and '
                      'without output while inputs arrive before an error',
                      _float_range(0.1, 3600.0), True),
    'min_depth': (0.1, 'metres; nearer sensor depths are ignored', _float_range(0.0, 1000.0),
                  False),
    'max_depth': (100.0, 'metres; farther sensor depths are ignored; also the colour scale end',
                  _float_range(0.01, 1000.0), False),
    'propagation_steps': (-1, 'propagation iterations (-1 = the model default)',
                          _int_range(-1, 256), False),
    'min_confidence': (0.0, 'pixels with lower confidence are published as NaN (0 = keep all; '
                       'removes flying pixels)', _float_range(0.0, 1.0), False),
    'publish_colorized': (True, 'publish depth/colorized (bgr8)', {}, False),
    'publish_points': (False, 'publish depth/points (dense cloud with rgb)', {}, False),
    'points_stride': (4, 'depth/points keeps every n-th row and column', _int_range(1, 64), False),
    'publish_sparse': (False, 'publish depth/sparse (the projected sensor input, 32FC1)', {},
                       False),
    'publish_confidence': (False, 'publish depth/confidence (32FC1 in [0, 1])', {}, False),
    'min_input_pixels': (DEFAULT_MIN_INPUT_PIXELS, 'frames with fewer valid input pixels '
                         '(after projection) are refused: nothing published, an error naming '
                         'the likely cause', _int_range(1, 1_000_000), False),
    'max_input_distance': (DEFAULT_MAX_INPUT_DISTANCE, 'output pixels with no input pixel '
                           'within this share of the longer image side get confidence 0 and '
                           'are published as NaN (0 = no limit)', _float_range(0.0, 1.0), False),
    'max_image_size': (list(DEFAULT_MAX_IMAGE_SIZE), '[width, height] px; larger images, '
                       'camera infos and ToF depth images are refused (and never warmed up at)',
                       {}, True),
    'input_reliability': ('best_effort', 'QoS reliability of the inputs (otherwise the sensor '
                          'data profile): best_effort, or reliable where large clouds lose '
                          'fragments over best-effort UDP',
                          {'additional_constraints': 'one of: reliable, best_effort'}, True),
    'output_reliability': ('reliable', 'QoS reliability of the outputs: reliable or best_effort',
                           {'additional_constraints': 'one of: reliable, best_effort'}, True),
    'occlusion_filter.enabled': (True, 'drop LiDAR points the camera cannot see (parallax '
                                 'see-through; depth_source lidar only)', {}, True),
    'occlusion_filter.window': (OcclusionFilter.window, 'pixels searched around a point (half '
                                'size)', _int_range(1, 64), True),
    'occlusion_filter.min_gap': (OcclusionFilter.min_gap, 'a neighbour is nearer when its depth '
                                 '< (1 - min_gap) x the point\'s', _float_range(0.01, 0.99),
                                 True),
    'occlusion_filter.min_quadrants': (OcclusionFilter.min_quadrants, 'quadrants around a point '
                                       'with nearer points that drop it', _int_range(1, 4),
                                       True),
    'self_check.holdout_share': (SelfCheckConfig.holdout_share, 'share of input points held out '
                                 'each frame (never fed to the model) to score model and '
                                 'classical fill on /diagnostics; 0 = off',
                                 _float_range(0.0, 0.5), True),
    'self_check.window': (SelfCheckConfig.window, 'scored frames in the rolling self-check '
                          'statistics', _int_range(1, 10000), True),
    'self_check.classical_every': (SelfCheckConfig.classical_every, 'run the classical fill '
                                   '(CPU) and score every n-th frame (every frame while the '
                                   'fallback is active)', _int_range(1, 1000), True),
    'self_check.min_frames': (SelfCheckConfig.min_frames, 'scored frames before the fallback '
                              'switches, and between switches', _int_range(1, 10000), True),
    'self_check.hysteresis': (SelfCheckConfig.hysteresis, 'back to the model once its rolling '
                              'RMSE < (1 - hysteresis) x the fill\'s', _float_range(0.0, 0.99),
                              True),
    'fallback': ('none', 'none, or classical: publish the classical fill while the model\'s '
                 'rolling held-out RMSE is worse than the fill\'s (diagnostics WARN)',
                 {'additional_constraints': 'one of: none, classical'}, True),
}


class StartupError(RuntimeError):
    """The node cannot start with its parameters (message says which and why)."""


class LatestSlot:
    """A drop-oldest queue of size one for matched sets. The worker thread alone fills it (it
    runs the input callbacks) and empties it, so it needs no lock."""

    def __init__(self) -> None:
        self._item: Any = None
        self.dropped = 0

    def put(self, item: Any) -> None:
        """Store item, replacing (and counting) one not taken yet."""
        if self._item is not None:
            self.dropped += 1
        self._item = item

    def take(self) -> Any:
        """The newest item, or None."""
        item, self._item = self._item, None
        return item


def declare_parameters(node: Node) -> None:
    """Declare PARAMETERS on node (with descriptions, ranges and read_only flags)."""
    for name, (default, description, extra, read_only) in PARAMETERS.items():
        node.declare_parameter(name, default, ParameterDescriptor(
            description=description, read_only=read_only, **extra))


def choose_device(requested: str, require_gpu: bool, cuda_available: bool) -> tuple[str, str]:
    """(device, warning or '') for the `device` / `require_gpu` parameters."""
    if requested not in DEVICES:
        raise StartupError(f"parameter device must be one of {DEVICES}, got {requested!r}")
    if cuda_available:
        return ('cpu' if requested == 'cpu' else 'cuda'), ''
    if require_gpu:
        raise StartupError(f'require_gpu is true but CUDA is not available (device={requested!r})')
    warning = 'CUDA is not available: running on CPU' if requested == 'cuda' else ''
    return 'cpu', warning


def after_out_of_memory(failures: int, require_gpu: bool) -> str:
    """What to do after the failures-th CUDA out-of-memory error on one frame (cache freed):
    'retry' the first time, then 'cpu' (fall back for good) or, with require_gpu, 'skip' the
    frame and stay on the GPU."""
    if failures <= 1:
        return 'retry'
    return 'skip' if require_gpu else 'cpu'


def parameter_problem(values: Mapping[str, Any], propagation: Optional[str]) -> str:
    """Why the run-time parameter values (all of them, changes applied) cannot be used, or ''.

    propagation: the loaded model's scheme (None before the model is loaded)."""
    if not values['min_depth'] < values['max_depth']:
        return f'min_depth ({values["min_depth"]}) must be below max_depth ({values["max_depth"]})'
    if values['precision'] not in PRECISIONS:
        return f'precision must be one of {PRECISIONS}, got {values["precision"]!r}'
    if values['propagation_steps'] >= 0 and propagation in ('classical', 'cspnpp'):
        return (f'propagation_steps must stay -1 for {propagation!r} (classical has no steps; '
                'cspnpp sets per-branch steps in its model config)')
    return ''


class CompletionCore:
    """Model, matcher, worker, publishers, subscriptions and diagnostics of a completion node.

    node: the rclpy Node (plain or lifecycle) whose parameters (declare_parameters) it reads;
    create_output_publisher: node.create_publisher or node.create_lifecycle_publisher.
    configure() loads parameters, the model and the publishers; activate() subscribes and starts
    the worker; deactivate() stops both and frees GPU memory; cleanup() releases everything.
    """

    def __init__(self, node: Node, create_output_publisher: Callable[..., Any]) -> None:
        self.node = node
        self.log = node.get_logger()
        self._create_output_publisher = create_output_publisher
        self.completer: Any = None
        self.pipeline: Optional[CompletionPipeline] = None
        self.matcher: Optional[ApproximateTimeMatcher] = None
        self.diagnostics: Optional[CompletionDiagnostics] = None
        self.publishers_by_topic: dict[str, Any] = {}
        self.slot = LatestSlot()
        self.frames_processed = 0
        self.active = False
        self._inputs_node: Optional[Node] = None
        self._inputs_executor: Optional[SingleThreadedExecutor] = None
        self._messages_taken = 0
        self.images_skipped = 0  # reference images never taken (publisher sequence gaps)
        self._last_image_sequence: dict[str, int] = {}
        self._worker: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards diagnostics (callbacks, worker and timer)
        self._loggers: dict[tuple, Any] = {}
        self._warmup_size: Optional[tuple[int, int]] = None
        self._timer = self._diagnostics_publisher = None
        node.add_on_set_parameters_callback(self._check_parameters)
        node.add_post_set_parameters_callback(self._apply_parameters)

    # ---------------------------------------------------------------- lifecycle steps
    def configure(self) -> None:
        """Read parameters, load and warm up the model, create publishers and the 1 Hz
        diagnostics timer. Raises StartupError (or the loader's error) on bad parameters."""
        self.depth_source = self._choice('depth_source', DEPTH_SOURCES)
        self.tof_registered = self._value('tof.registered')
        self.require_gpu = self._value('require_gpu')
        self.completer = self._load_completer()
        self._default_steps = self.completer.steps
        self._extrinsic: Optional[ExtrinsicSource] = None
        if self.depth_source == 'lidar' or not self.tof_registered:
            self._extrinsic = ExtrinsicSource(self.node, self._value('extrinsic.from_tf'),
                                              self._parameter_extrinsic)
        values = {name: self._value(name) for name in ('min_depth', 'max_depth', 'precision',
                                                        'propagation_steps')}
        problem = parameter_problem(values, self.completer.config.propagation)
        if problem:
            raise StartupError(problem)
        max_image_size = tuple(self._value('max_image_size'))
        if len(max_image_size) != 2 or min(max_image_size) < 1:
            raise StartupError(f'max_image_size must be [width, height] > 0, got '
                               f'{list(max_image_size)}')
        self.self_check = self._self_check()
        occlusion = None
        if self.depth_source == 'lidar' and self._value('occlusion_filter.enabled'):
            occlusion = OcclusionFilter(*(self._value(f'occlusion_filter.{name}') for name in (
                'window', 'min_gap', 'min_quadrants')))
        self.motion = self._motion_source()
        self.pipeline = CompletionPipeline(
            self.completer, depth_source=self.depth_source, min_depth=values['min_depth'],
            max_depth=values['max_depth'], min_confidence=self._value('min_confidence'),
            tof_registered=self.tof_registered, rectified=self._value('rectified'),
            min_input_pixels=self._value('min_input_pixels'),
            max_input_distance=self._value('max_input_distance'), max_image_size=max_image_size,
            occlusion=occlusion, holdout=self.self_check.holdout(),
            motion=self.motion and self.motion.compensation)

        reliability = RELIABILITIES[self._choice('output_reliability', tuple(RELIABILITIES))]
        output_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=reliability,
                                durability=DurabilityPolicy.VOLATILE)
        self.publishers_by_topic = {topic: self._create_output_publisher(msg_type, topic,
                                                                         output_qos)
                                    for topic, msg_type in OUTPUT_TOPICS.items()}
        self._diagnostics_publisher = self.node.create_publisher(DiagnosticArray,
                                                                 '/diagnostics', 10)
        transports = {'image': self._choice('image_transport', COLOUR_TRANSPORTS),
                      'tof/depth': self._choice('tof.image_transport', DEPTH_TRANSPORTS)}
        image_type = {transport: Image if transport == 'raw' else CompressedImage
                      for transport in transports.values()}
        self.inputs = {'image': image_type[transports['image']], 'camera_info': CameraInfo}
        if self.depth_source == 'lidar':
            self.inputs['points'] = PointCloud2
        else:
            self.inputs['tof/depth'] = image_type[transports['tof/depth']]
            if not self.tof_registered:
                self.inputs['tof/camera_info'] = CameraInfo
        self.matcher = ApproximateTimeMatcher(list(self.inputs), slop_s=self._value('slop'),
                                              queue_size=self._value('queue_size'),
                                              reference='image')
        self._resolved = {topic: transport_topic(self.node.resolve_topic_name(topic),
                                                 transports.get(topic, 'raw'))
                          for topic in self.inputs}
        self.diagnostics = CompletionDiagnostics(tuple(self._resolved.values()),
                                                 timeout_s=self._value('input_timeout'))
        self._last_match = time.monotonic()
        self._timer = self.node.create_timer(1.0, self._report,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        width, height = self._value('warmup_size')
        self._warmed_up = False
        if width > 0 and height > 0:
            problem = image_size_problem(width, height, max_image_size, 'warmup_size')
            if problem:
                raise StartupError(problem)
            self._warm_up(height, width)

    def activate(self) -> None:
        """Subscribe to the inputs and start the worker thread."""
        self.matcher.reset()
        with self._lock:
            self.diagnostics.forget_inputs()
        self._last_match = time.monotonic()
        input_qos = QoSProfile(**{k: getattr(qos_profile_sensor_data, k) for k in (
            'history', 'depth', 'durability')}, reliability=RELIABILITIES[self._choice(
                'input_reliability', tuple(RELIABILITIES))])
        # The helper ignores the process's arguments (a `__node` remap would rename it too) and
        # subscribes to the names this node resolves, node-specific remappings included.
        self._inputs_node = Node(f'_{self.node.get_name()}_inputs',
                                 namespace=self.node.get_namespace(),
                                 context=self.node.context, start_parameter_services=False,
                                 use_global_arguments=False)
        for topic, msg_type in self.inputs.items():
            self._inputs_node.create_subscription(msg_type, self._resolved[topic],
                                                  self._callback_for(topic), input_qos)
        if self.motion is not None:  # every pose between two frames is kept
            self._inputs_node.create_subscription(
                odometry_message_type(self._value('motion.odometry_type')),
                self.node.resolve_topic_name(self._value('motion.odometry_topic')),
                self.motion.callback, QoSProfile(**{**{k: getattr(input_qos, k) for k in (
                    'history', 'durability', 'reliability')}, 'depth': 200}))
        self._inputs_executor = SingleThreadedExecutor(context=self.node.context)
        self._inputs_executor.add_node(self._inputs_node)
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name='completion_worker', daemon=True)
        self._worker.start()
        self.active = True
        self.log.info(f'waiting for {", ".join(self._resolved.values())}; publishing depth '
                      f'from {self.depth_source}')

    def deactivate(self) -> None:
        """Unsubscribe, stop the worker, drop a pending frame and free cached GPU memory."""
        if not self.active:
            return
        self.active = False
        self._stop.set()
        self._worker.join(timeout=10.0)
        self._inputs_executor.shutdown(timeout_sec=1.0)
        self._inputs_node.destroy_node()
        self._inputs_node = self._inputs_executor = None
        self.slot.take()
        self._free_device_memory()

    def cleanup(self) -> None:
        """Deactivate if needed, then release the model, publishers, timer and tf listener."""
        self.deactivate()
        if self.completer is None:
            return
        if self.diagnostics is not None:  # None when configure failed before it
            self.log.info(f'processed {self.frames_processed} frames, skipped '
                          f'{self.diagnostics.failed} bad ones, dropped {self.stale_dropped} '
                          f'stale ones; pairing {self.matcher.stats}')
        if self._timer is not None:
            self.node.destroy_timer(self._timer)
        for publisher in self.publishers_by_topic.values():
            self.node.destroy_publisher(publisher)
        if self._diagnostics_publisher is not None:
            self.node.destroy_publisher(self._diagnostics_publisher)
        self._timer = self._diagnostics_publisher = None
        self.publishers_by_topic = {}
        if self._extrinsic is not None:
            self._extrinsic.close()
        self.completer = self.pipeline = self.matcher = None
        self._free_device_memory()

    # ---------------------------------------------------------------- parameters and set-up
    def _value(self, name: str) -> Any:
        return self.node.get_parameter(name).value

    def _choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self._value(name)
        if value not in choices:
            raise StartupError(f'parameter {name} must be one of {choices}, got {value!r}')
        return value

    def _load_completer(self) -> Any:
        from cspn_ros.config import ModelConfig
        from cspn_ros.model.completer import BACKENDS, DepthCompleter
        device, warning = choose_device(self._value('device'), self.require_gpu,
                                        torch.cuda.is_available())
        if warning:
            self.log.warning(warning)
        modes = {'precision': self._choice('precision', PRECISIONS),
                 'channels_last': self._value('channels_last'),
                 'compile': self._value('compile'), 'cuda_graphs': self._value('cuda_graphs'),
                 'backend': self._choice('backend', BACKENDS)}
        model_config, checkpoint = self._value('model_config'), self._value('checkpoint')
        self.model_source = (f'untrained: {model_config}' if model_config
                             else checkpoint or 'packaged default')
        if model_config:
            text = model_config.strip()
            config = ModelConfig.load(json.loads(text) if text.startswith('{') else text)
            self.log.warning(f'model_config given: UNTRAINED model {config}')
            completer = DepthCompleter.from_config(config, device=device, **modes)
        elif checkpoint == 'classical':
            completer = DepthCompleter.from_config('classical', device=device, **modes)
        else:
            completer = DepthCompleter.from_checkpoint(checkpoint or None, device=device, **modes)
        steps = self._value('propagation_steps')
        if steps >= 0 and completer.config.propagation not in ('classical', 'cspnpp'):
            completer.steps = steps
        self.log.info(f'model {completer.config.propagation} on {completer.device} '
                      f'({completer.backend})'
                      + (f', {completer.steps} propagation steps'
                         if completer.model is not None else ''))
        return completer

    def _self_check(self) -> SelfCheck:
        from cspn_ros.model.completer import DepthCompleter
        try:
            config = SelfCheckConfig(fallback=self._choice('fallback', FALLBACKS), **{
                name: self._value(f'self_check.{name}') for name in (
                    'holdout_share', 'window', 'classical_every', 'min_frames', 'hysteresis')})
        except ValueError as error:
            raise StartupError(f'self_check / fallback: {error}') from error
        return SelfCheck(config, DepthCompleter.from_config('classical'))

    def _motion_source(self) -> Optional[MotionSource]:
        """The odometry-driven MotionSource when motion.odometry_topic is set (LiDAR only)."""
        if not self._value('motion.odometry_topic') or self.depth_source != 'lidar':
            return None
        self._choice('motion.odometry_type', ODOMETRY_TYPES)
        try:
            odometry_message_type(self._value('motion.odometry_type'))
            time_field = parse_time_field(self._value('motion.time_field'))
        except (ImportError, ValueError) as error:
            raise StartupError(str(error)) from error
        self.log.info(f'LiDAR motion compensation: odometry on '
                      f'{self.node.resolve_topic_name(self._value("motion.odometry_topic"))}, '
                      f'per-point time {time_field}')
        return MotionSource(MotionCompensation(time_field))

    def _parameter_extrinsic(self) -> np.ndarray:
        """T_cam_from_sensor (4,4) from extrinsic.matrix, else translation + rotation."""
        matrix = self.node.get_parameter_or('extrinsic.matrix').value  # None when not set
        if matrix:
            if len(matrix) != 16:
                raise StartupError(f'extrinsic.matrix needs 16 values, got {len(matrix)}')
            transform = np.asarray(matrix, dtype=np.float64).reshape(4, 4)
            if not np.allclose(transform[3], [0, 0, 0, 1]):
                raise StartupError('extrinsic.matrix last row must be 0 0 0 1, got '
                                   f'{transform[3]}')
            return transform
        try:
            return transform_from_translation_quaternion(self._value('extrinsic.translation'),
                                                         self._value('extrinsic.rotation'))
        except ValueError as error:
            raise StartupError(f'extrinsic.translation / extrinsic.rotation: {error}') from error

    def _extrinsic_for(self, matched: MatchedSet) -> np.ndarray:
        """T_cam_from_sensor for the frames of matched (tf or parameters: ExtrinsicSource).
        Raises InputError while tf does not have it yet (the frame is skipped, not guessed)."""
        sensor_topic = 'points' if self.depth_source == 'lidar' else 'tof/depth'
        return self._extrinsic.for_frames(matched.messages['image'].header.frame_id,
                                          matched.messages[sensor_topic].header.frame_id)

    def _check_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Reject run-time values that do not fit together or with the loaded model (ranges,
        types and read-only flags are checked by rclpy from the descriptors)."""
        values = {name: self._value(name) for name in ('min_depth', 'max_depth', 'precision',
                                                        'propagation_steps')}
        values.update({p.name: p.value for p in parameters if p.name in values})
        propagation = None if self.completer is None else self.completer.config.propagation
        problem = parameter_problem(values, propagation)
        return SetParametersResult(successful=not problem, reason=problem)

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        """Apply accepted run-time parameters to the model and the pipeline."""
        if self.pipeline is None:
            return  # read at configure
        for parameter in parameters:
            if parameter.name in ('min_depth', 'max_depth', 'min_confidence',
                                  'max_input_distance'):
                setattr(self.pipeline, parameter.name, float(parameter.value))
            elif parameter.name == 'min_input_pixels':
                self.pipeline.min_input_pixels = parameter.value
            elif parameter.name == 'precision':
                self.completer.precision = parameter.value
            elif parameter.name == 'propagation_steps' and self.completer.model is not None:
                steps = parameter.value
                self.completer.steps = self._default_steps if steps < 0 else steps
            else:
                continue
            self.log.info(f'{parameter.name} set to {parameter.value}')

    def _warm_up(self, height: int, width: int) -> None:
        """Run the model on random height x width frames once, so the first frame is fast."""
        start = time.perf_counter()
        self._warmed_up = True
        try:
            self.completer.warmup(height, width)
        except Exception as error:  # a failed warm-up costs speed only; frames will tell more
            self.log.warning(f'warm-up at {width}x{height} failed: {type(error).__name__}: '
                             f'{error}')
            return
        self.log.info(f'model warmed up at {width}x{height} in '
                      f'{time.perf_counter() - start:.2f} s')
        freeze_long_lived_objects()

    def _free_device_memory(self) -> None:
        """Drop captured CUDA graphs and cached CUDA blocks (no-op on the CPU)."""
        if self.completer is not None and self.completer.cuda_graphs:
            from cspn_ros.model.inference import CudaGraphRunner
            self.completer._graphs = CudaGraphRunner()  # no public release in DepthCompleter
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------- callbacks (executor)
    def _callback_for(self, topic: str):
        resolved = self._resolved[topic]

        def callback(msg: Any, info: Mapping[str, Any]) -> None:
            self._messages_taken += 1
            if topic == 'image':
                self._count_skipped_images(info)
            with self._lock:
                self.diagnostics.received(resolved, time.monotonic())
            if (topic == 'camera_info' and not self._warmed_up and self._warmup_size is None
                    and not self.pipeline.camera_info_problem(msg)):  # a checked size only
                self._warmup_size = (int(msg.height), int(msg.width))  # the worker warms up
            stamp_ns = stamp_to_ns(msg.header.stamp)
            if self.matcher.detect_jump_back(topic, stamp_ns):
                self.log.warning('input stamps jumped back (bag loop or simulator restart): '
                                 'pairing restarted')
                self.matcher.reset()
            for matched in self.matcher.add(topic, stamp_ns, msg):
                self._last_match = time.monotonic()
                self.slot.put(matched)
        return callback

    @property
    def stale_dropped(self) -> int:
        """Frames dropped for a newer one: matched sets replaced in the slot + reference images
        never taken (overwritten in DDS while the worker was busy)."""
        return self.slot.dropped + self.images_skipped

    def _count_skipped_images(self, info: Mapping[str, Any]) -> None:
        """Count images overwritten in DDS while the worker was busy (or lost in transport):
        gaps in their publisher's sequence numbers (where the RMW reports them)."""
        sequence = info.get('publication_sequence_number')
        if sequence is None:
            return
        publisher = repr(info.get('publisher_gid'))
        last = self._last_image_sequence.get(publisher)
        if last is not None and sequence > last + 1:
            self.images_skipped += sequence - last - 1
        self._last_image_sequence[publisher] = sequence

    def _report(self) -> None:
        """1 Hz: publish /diagnostics; log (throttled) when the level is not OK."""
        now = time.monotonic()
        extra = {'device': self.completer.device, 'precision': self.completer.precision,
                 'propagation': self.completer.config.propagation,
                 'propagation steps': self.completer.steps,
                 'checkpoint': self.model_source,
                 'stale images never taken (DDS)': self.images_skipped,
                 'state': 'active' if self.active else 'inactive'}
        if self.pipeline.last_input_coverage is not None:
            extra.update(self.pipeline.last_input_coverage.values())
        stats = self.matcher.stats
        stats['received'] = {self._resolved[t]: n for t, n in stats['received'].items()}
        with self._lock:
            if self.pipeline.holdout is not None:
                extra.update(self.self_check.diagnostic_values())
            level, message, values = self.diagnostics.report(now, stats, self.stale_dropped,
                                                             extra, self.images_skipped)
            silent = silent_topics(now, self.diagnostics.last_arrival, self.diagnostics.timeout_s)
            only_fallback = self.self_check.fallback_active and level == OK  # logged once
            if self.self_check.fallback_active:
                fallback = ('fallback: publishing the classical fill, the model is worse on '
                            'held-out points (self-check)')
                message = fallback if level == OK else f'{message}; {fallback}'
                level = max(level, WARN)
        if not self.active:
            level, message = OK, 'inactive'
        if level == ERROR:
            if now - self._last_match > self.diagnostics.timeout_s:
                message += (f': no paired frame, header stamps are further apart than '
                            f'slop={self._value("slop"):g} s (unmatched '
                            f'{stats["dropped_unmatched"]}, out of order '
                            f'{stats["dropped_out_of_order"]})')
            else:
                message += f': every frame fails, last error: {values["last error"]}'
            self._log_throttled(LoggingSeverity.ERROR, message)
        elif level == WARN and not only_fallback:
            message += silent_input_hint({topic: self.node.count_publishers(topic)
                                          for topic in silent}, self._value('input_reliability'))
            self._log_throttled(LoggingSeverity.WARN, message)
        self._diagnostics_publisher.publish(diagnostic_array_msg(
            header_msg(self.node.get_clock().now().nanoseconds, ''),
            f'{self.node.get_fully_qualified_name()}: depth completion',
            hardware_id(self.completer.device), level, message, values))

    # ---------------------------------------------------------------- worker thread
    def _work(self) -> None:
        while not self._stop.is_set() and self.node.context.ok():
            if self._warmup_size is not None and not self._warmed_up:
                self._warm_up(*self._warmup_size)
            try:
                self._take_inputs(first_wait_s=0.1)
            except Exception as error:  # the context went down under us: shutting down
                if self.node.context.ok():
                    raise
                self.log.debug(f'worker stops: {error}')
                return
            matched = self.slot.take()
            if matched is not None:
                self._process(matched)

    def _take_inputs(self, first_wait_s: float) -> None:
        """Wait up to first_wait_s for an input message, then take every message already
        waiting (their callbacks feed the matcher and the slot)."""
        self._inputs_executor.spin_once(timeout_sec=first_wait_s)
        while True:
            taken = self._messages_taken
            self._inputs_executor.spin_once(timeout_sec=0)
            if self._messages_taken == taken:
                return

    def _process(self, matched: MatchedSet) -> None:
        messages = matched.messages
        try:
            if self.depth_source == 'lidar' or not self.tof_registered:
                self.pipeline.T_cam_from_sensor = self._extrinsic_for(matched)
            if self.motion is not None:
                self.motion.prepare(messages['image'].header.frame_id,
                                    messages['points'].header.frame_id,
                                    self.pipeline.T_cam_from_sensor,
                                    self._extrinsic.for_frames if self._extrinsic.kind == 'tf'
                                    else None)
            result = self._complete(messages)
            with self._lock:
                result, switched = self.self_check.check(result)
            if switched:
                self.log.warning(switched)
            timings = {**result.timings, **self._publish(messages['image'].header, result)}
            latency_s = (self.node.get_clock().now().nanoseconds - matched.stamp_ns) / 1e9
            with self._lock:
                self.diagnostics.published_frame(time.monotonic(), latency_s, timings)
            self.frames_processed += 1
        except InputError as error:
            self._frame_failed(f'frame skipped, bad input: {error}')
        except ModelOutputError as error:
            self._frame_failed(f'frame failed: {error}')
        except Exception as error:  # keep running; the type says where to look
            self._frame_failed(f'frame skipped, unexpected {type(error).__name__}: {error}')

    def _complete(self, messages: dict[str, Any]) -> Any:
        """pipeline.process with the CUDA out-of-memory policy of `after_out_of_memory`."""
        failures = 0
        while True:
            try:
                return self.pipeline.process(
                    messages['image'], messages['camera_info'],
                    messages['points' if self.depth_source == 'lidar' else 'tof/depth'],
                    messages.get('tof/camera_info'))
            except torch.cuda.OutOfMemoryError:
                failures += 1
                self._free_device_memory()
                action = after_out_of_memory(failures, self.require_gpu)
                if action == 'skip':
                    raise
                if action == 'cpu':
                    self.log.warning('CUDA out of memory twice on one frame: running on CPU '
                                     'from now on (set require_gpu to stay on the GPU)')
                    self._move_model_to_cpu()

    def _move_model_to_cpu(self) -> None:
        from cspn_ros.model.completer import DepthCompleter
        old = self.completer
        self.completer = DepthCompleter(old.config, old.model, 'cpu', old.precision, old.meta,
                                        channels_last=old.channels_last)
        self.pipeline.completer = self.completer

    def _frame_failed(self, text: str) -> None:
        """Count the failure and log it (throttled per kind of problem)."""
        with self._lock:
            self.diagnostics.error(text, time.monotonic())
        self._log_throttled(LoggingSeverity.ERROR, text)

    def _log_throttled(self, severity: LoggingSeverity, text: str) -> None:
        """Log text at most every THROTTLE_S per kind of problem (numbers ignored), so one
        problem repeating every frame does not flood the log nor hide another."""
        kind = (severity, re.sub(r'[-+.\d]+', '#', text))
        if kind not in self._loggers:
            if len(self._loggers) > 64:
                self._loggers.clear()
            self._loggers[kind] = self.log.get_child('input')
        self._loggers[kind].log(text, severity, throttle_duration_sec=THROTTLE_S)

    def _publish(self, header: Any, result: Any) -> dict[str, float]:
        """Publish the enabled outputs of one frame with the image's header; returns seconds
        spent building messages ('serialize') and handing them to rclpy ('publish')."""
        def wanted(topic: str, flag: Optional[str] = None) -> bool:
            return ((flag is None or self._value(flag))
                    and self.publishers_by_topic[topic].get_subscription_count() > 0)

        publish = {'depth': lambda: image_msg(image_fields(result.dense_as_32fc1(), '32FC1'),
                                              header),
                   'depth/camera_info': lambda: camera_info_msg(result.camera, header)}
        if wanted('depth/colorized', 'publish_colorized'):
            publish['depth/colorized'] = lambda: image_msg(image_fields(colorize_depth(
                result.dense, self.pipeline.min_depth, self.pipeline.max_depth), 'bgr8'), header)
        if wanted('depth/points', 'publish_points'):
            def points() -> Any:
                xyz, rgb = depth_to_points(result.dense, result.camera, result.rgb,
                                           stride=self._value('points_stride'))
                return pointcloud2_msg(pointcloud2_fields(xyz, rgb), header)
            publish['depth/points'] = points
        if wanted('depth/sparse', 'publish_sparse'):
            projected = (result.sparse if result.held_out is None  # the self-check's points too
                         else result.sparse + result.held_out)
            publish['depth/sparse'] = lambda: image_msg(depth_fields(projected), header)
        if wanted('depth/confidence', 'publish_confidence'):
            publish['depth/confidence'] = lambda: image_msg(
                image_fields(result.confidence, '32FC1'), header)
        seconds = {'serialize': 0.0, 'publish': 0.0}
        for topic, build in publish.items():  # depth first: its subscribers wait the least
            start = time.perf_counter()
            msg = build()
            built = time.perf_counter()
            self.publishers_by_topic[topic].publish(msg)
            seconds['serialize'] += built - start
            seconds['publish'] += time.perf_counter() - built
        return seconds


class CompletionNode(Node):
    """Dense depth from a colour camera and a LiDAR or ToF sensor (see the module docstring);
    configured and active from construction."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('completion_node', **kwargs)
        declare_parameters(self)
        self.core = CompletionCore(self, self.create_publisher)
        self.core.configure()
        self.core.activate()

    def destroy_node(self) -> None:
        """Stop the worker, release the model, then the node."""
        core = getattr(self, 'core', None)  # None when declaring the parameters failed
        if core is not None:
            core.cleanup()
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of `completion_node`."""
    return run(CompletionNode, 'completion_node', args)


if __name__ == '__main__':
    raise SystemExit(main())
