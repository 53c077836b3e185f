"""completion_node: colour image + LiDAR cloud or ToF depth in, dense metric depth out.

Thin wiring around `core.pipeline.CompletionPipeline`. Subscription callbacks only feed the
stamp matcher (`core.sync`) and put matched sets into a drop-oldest slot of size one; a single
worker thread owns the model and runs prepare + complete + publish. Bad frames are logged
(throttled per problem) and skipped; the node keeps running.

Topics (relative): in `image`, `camera_info`, and `points` (depth_source=lidar) or `tof/depth`
(+ `tof/camera_info` unless tof.registered); out `depth` (32FC1 metres, NaN invalid, the image's
header), `depth/colorized` (bgr8), `depth/points` (PointCloud2 xyz+rgb), `depth/sparse` (32FC1),
`depth/confidence` (32FC1 in [0, 1]).
"""
from __future__ import annotations

import json
import re
import threading
import time
from typing import Any, Optional

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.time import Time
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from cspn_ros.core.colorize import colorize_depth
from cspn_ros.core.conversions import (depth_fields, image_fields, pointcloud2_fields,
                                       stamp_to_ns)
from cspn_ros.core.pipeline import DEPTH_SOURCES, CompletionPipeline, InputError
from cspn_ros.core.projection import depth_to_points, transform_from_translation_quaternion
from cspn_ros.core.sync import ApproximateTimeMatcher, MatchedSet
from cspn_ros.nodes.messages import image_msg, pointcloud2_msg

try:  # a real ROS 2 install has tf2_ros; the PyPI wheels used here do not
    import tf2_ros
except ImportError:
    tf2_ros = None

#: Seconds between two log lines about the same problem.
THROTTLE_S = 5.0
DEVICES = ('cpu', 'cuda', 'auto')
RELIABILITIES = {'reliable': ReliabilityPolicy.RELIABLE,
                 'best_effort': ReliabilityPolicy.BEST_EFFORT}


def _float_range(low: float, high: float) -> dict:
    return {'floating_point_range': [FloatingPointRange(from_value=low, to_value=high, step=0.0)]}


def _int_range(low: int, high: int) -> dict:
    return {'integer_range': [IntegerRange(from_value=low, to_value=high, step=1)]}


#: name -> (default, description, extra ParameterDescriptor fields, read_only).
#: Parameters that shape the model, the matcher or the subscriptions are read-only; output options
#: can change at run time.
PARAMETERS = {
    'depth_source': ('lidar', 'lidar: PointCloud2 on `points`; tof: depth Image on `tof/depth`',
                     {'additional_constraints': 'one of: lidar, tof'}, True),
    'device': ('auto', 'cpu, cuda, or auto (cuda when available); cuda without a GPU falls '
               'back to cpu with a warning unless require_gpu',
               {'additional_constraints': 'one of: cpu, cuda, auto'}, True),
    'require_gpu': (False, 'refuse to start when CUDA is not available', {}, True),
    'checkpoint': ('', "'' = packaged default weights; 'classical' = no-weights baseline; "
                   'else a .safetensors/.pt path', {}, True),
    'model_config': ('', 'untrained model (random weights, mainly for tests): a JSON object '
                     '(e.g. {"width": 8, "steps": 2}), a YAML/JSON file or a propagation name; '
                     'overrides checkpoint when non-empty', {}, True),
    'extrinsic.translation': ([0.0, 0.0, 0.0], '[x, y, z] metres of the LiDAR/ToF frame in the '
                              'colour camera optical frame (p_cam = R p_sensor + t)', {}, True),
    'extrinsic.rotation': ([0.0, 0.0, 0.0, 1.0], '[qx, qy, qz, qw] rotation from the LiDAR/ToF '
                           'frame to the colour camera optical frame', {}, True),
    'extrinsic.matrix': (Parameter.Type.DOUBLE_ARRAY, '16 floats, row-major 4x4 '
                         'T_cam_from_sensor; overrides translation/rotation when set', {}, True),
    'tof.registered': (False, 'the ToF depth is already registered to the colour camera '
                       '(no tof/camera_info, no extrinsic)', {}, True),
    'slop': (0.05, 'largest stamp difference (s) between paired messages', _float_range(0.0, 10.0),
             True),
    'queue_size': (10, 'messages kept per topic while pairing', _int_range(1, 1000), True),
    'input_timeout': (5.0, 'seconds without a paired frame before warning which input is '
                      'missing or out of sync', _float_range(0.1, 3600.0), True),
    'min_depth': (0.1, 'metres; nearer sensor depths are ignored', _float_range(0.0, 1000.0), True),
    'max_depth': (100.0, 'metres; farther sensor depths are ignored; also the colour scale end',
                  _float_range(0.01, 1000.0), True),
    'propagation_steps': (-1, 'propagation iterations (-1 = the model default)',
                          _int_range(-1, 256), True),
    'min_confidence': (0.0, 'pixels with lower confidence are published as NaN (0 = keep all; '
                       'removes flying pixels)', _float_range(0.0, 1.0), False),
    'publish_colorized': (True, 'publish depth/colorized (bgr8)', {}, False),
    'publish_points': (False, 'publish depth/points (dense cloud with rgb)', {}, False),
    'points_stride': (4, 'depth/points keeps every n-th row and column', _int_range(1, 64), False),
    'publish_sparse': (False, 'publish depth/sparse (the projected sensor input, 32FC1)', {},
                       False),
    'publish_confidence': (False, 'publish depth/confidence (32FC1 in [0, 1])', {}, False),
    'input_reliability': ('best_effort', 'QoS reliability of the inputs (otherwise the sensor '
                          'data profile): best_effort, or reliable where large clouds lose '
                          'fragments over best-effort UDP',
                          {'additional_constraints': 'one of: reliable, best_effort'}, True),
    'output_reliability': ('reliable', 'QoS reliability of the outputs: reliable or best_effort',
                           {'additional_constraints': 'one of: reliable, best_effort'}, True),
}


class StartupError(RuntimeError):
    """The node cannot start with its parameters (message says which and why)."""


class LatestSlot:
    """A drop-oldest queue of size one between the callbacks and the worker thread."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: Any = None
        self.dropped = 0

    def put(self, item: Any) -> None:
        """Store item, replacing (and counting) one the worker has not taken yet."""
        with self._condition:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._condition.notify()

    def take(self, timeout: float) -> Any:
        """The newest item, or None after timeout seconds."""
        with self._condition:
            self._condition.wait_for(lambda: self._item is not None, timeout)
            item, self._item = self._item, None
            return item


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


class CompletionNode(Node):
    """Dense depth from a colour camera and a LiDAR or ToF sensor (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('completion_node', **kwargs)
        for name, (default, description, extra, read_only) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(
                description=description, read_only=read_only, **extra))
        self.depth_source = self._choice('depth_source', DEPTH_SOURCES)
        self.tof_registered = self._value('tof.registered')
        reliability = RELIABILITIES[self._choice('output_reliability', tuple(RELIABILITIES))]
        self.completer = self._load_completer()
        self._extrinsic: Optional[np.ndarray] = None
        self._tf_buffer = None
        if self.depth_source == 'lidar' or not self.tof_registered:
            self._extrinsic_from_parameters = self._parameter_extrinsic()
            if tf2_ros is None:
                self._extrinsic = self._extrinsic_from_parameters
                self.get_logger().info('tf2_ros not available: extrinsic from parameters, '
                                       f'T_cam_from_sensor = {self._extrinsic.round(4).tolist()}')
            else:
                self._tf_buffer = tf2_ros.Buffer()
                self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)
        min_depth, max_depth = self._value('min_depth'), self._value('max_depth')
        if not min_depth < max_depth:
            raise StartupError(f'min_depth ({min_depth}) must be below max_depth ({max_depth})')
        self.pipeline = CompletionPipeline(
            self.completer, depth_source=self.depth_source, min_depth=min_depth,
            max_depth=max_depth, min_confidence=self._value('min_confidence'),
            tof_registered=self.tof_registered)

        output_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=reliability,
                                durability=DurabilityPolicy.VOLATILE)
        self.publishers_by_topic = {
            'depth': self.create_publisher(Image, 'depth', output_qos),
            'depth/colorized': self.create_publisher(Image, 'depth/colorized', output_qos),
            'depth/points': self.create_publisher(PointCloud2, 'depth/points', output_qos),
            'depth/sparse': self.create_publisher(Image, 'depth/sparse', output_qos),
            'depth/confidence': self.create_publisher(Image, 'depth/confidence', output_qos),
        }

        inputs = {'image': Image, 'camera_info': CameraInfo}
        if self.depth_source == 'lidar':
            inputs['points'] = PointCloud2
        else:
            inputs['tof/depth'] = Image
            if not self.tof_registered:
                inputs['tof/camera_info'] = CameraInfo
        self.matcher = ApproximateTimeMatcher(list(inputs), slop_s=self._value('slop'),
                                              queue_size=self._value('queue_size'),
                                              reference='image')
        self._last_arrival = {topic: None for topic in inputs}
        self._last_match = time.monotonic()
        self.slot = LatestSlot()
        input_qos = QoSProfile(**{k: getattr(qos_profile_sensor_data, k) for k in (
            'history', 'depth', 'durability')}, reliability=RELIABILITIES[self._choice(
                'input_reliability', tuple(RELIABILITIES))])
        for topic, msg_type in inputs.items():
            self.create_subscription(msg_type, topic, self._callback_for(topic), input_qos)
        self.create_timer(1.0, self._watch_inputs, clock=Clock(clock_type=ClockType.STEADY_TIME))

        self.frames_processed = 0
        self.frames_failed = 0
        self._error_loggers: dict[str, Any] = {}
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name='completion_worker', daemon=True)
        self._worker.start()
        self.get_logger().info(f'waiting for {", ".join(inputs)}; publishing depth '
                               f'from {self.depth_source}')

    # ---------------------------------------------------------------- parameters and set-up
    def _value(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self._value(name)
        if value not in choices:
            raise StartupError(f'parameter {name} must be one of {choices}, got {value!r}')
        return value

    def _load_completer(self) -> Any:
        import torch

        from cspn_ros.config import ModelConfig
        from cspn_ros.model.completer import DepthCompleter
        device, warning = choose_device(self._value('device'), self._value('require_gpu'),
                                        torch.cuda.is_available())
        if warning:
            self.get_logger().warning(warning)
        model_config, checkpoint = self._value('model_config'), self._value('checkpoint')
        if model_config:
            text = model_config.strip()
            config = ModelConfig.load(json.loads(text) if text.startswith('{') else text)
            self.get_logger().warning(f'model_config given: UNTRAINED model {config}')
            completer = DepthCompleter.from_config(config, device=device)
        elif checkpoint == 'classical':
            completer = DepthCompleter.from_config('classical', device=device)
        else:
            completer = DepthCompleter.from_checkpoint(checkpoint or None, device=device)
        steps = self._value('propagation_steps')
        if steps >= 0:
            completer.steps = steps
        self.get_logger().info(f'model {completer.config.propagation} on {completer.device}'
                               + (f', {completer.steps} propagation steps'
                                  if completer.model is not None else ''))
        return completer

    def _parameter_extrinsic(self) -> np.ndarray:
        """T_cam_from_sensor (4,4) from extrinsic.matrix, else translation + rotation."""
        matrix = self.get_parameter_or('extrinsic.matrix').value  # None when not set
        if matrix:
            if len(matrix) != 16:
                raise StartupError(f'extrinsic.matrix needs 16 values, got {len(matrix)}')
            transform = np.asarray(matrix, dtype=np.float64).reshape(4, 4)
            if not np.allclose(transform[3], [0, 0, 0, 1]):
                raise StartupError(f'extrinsic.matrix last row must be 0 0 0 1, got {transform[3]}')
            return transform
        try:
            return transform_from_translation_quaternion(self._value('extrinsic.translation'),
                                                         self._value('extrinsic.rotation'))
        except ValueError as error:
            raise StartupError(f'extrinsic.translation / extrinsic.rotation: {error}') from error

    def _extrinsic_for(self, matched: MatchedSet) -> np.ndarray:
        """T_cam_from_sensor: looked up once in tf when tf2_ros exists, else the parameters."""
        if self._extrinsic is None:
            camera_frame = matched.messages['image'].header.frame_id
            sensor_topic = 'points' if self.depth_source == 'lidar' else 'tof/depth'
            sensor_frame = matched.messages[sensor_topic].header.frame_id
            try:
                transform = self._tf_buffer.lookup_transform(
                    camera_frame, sensor_frame, Time(), Duration(seconds=1.0))
                t, q = transform.transform.translation, transform.transform.rotation
                self._extrinsic = transform_from_translation_quaternion(
                    [t.x, t.y, t.z], [q.x, q.y, q.z, q.w])
                self.get_logger().info(f'extrinsic from tf {camera_frame} <- {sensor_frame}')
            except Exception as error:  # tf2 raises several unrelated exception types
                self._extrinsic = self._extrinsic_from_parameters
                self.get_logger().warning(f'tf lookup {camera_frame} <- {sensor_frame} failed '
                                          f'({error}); extrinsic from parameters')
        return self._extrinsic

    # ---------------------------------------------------------------- callbacks (executor)
    def _callback_for(self, topic: str):
        def callback(msg: Any) -> None:
            self._last_arrival[topic] = time.monotonic()
            stamp_ns = stamp_to_ns(msg.header.stamp)
            if self.matcher.detect_jump_back(stamp_ns):
                self.get_logger().warning('input stamps jumped back (bag loop or simulator '
                                          'restart): pairing restarted')
                self.matcher.reset()
            for matched in self.matcher.add(topic, stamp_ns, msg):
                self._last_match = time.monotonic()
                self.slot.put(matched)
        return callback

    def _watch_inputs(self) -> None:
        """Warn (throttled) when no frame was paired for input_timeout seconds, naming why."""
        now = time.monotonic()
        timeout = self._value('input_timeout')
        if now - self._last_match < timeout:
            return
        silent = [t for t, arrival in self._last_arrival.items()
                  if arrival is None or now - arrival > timeout]
        if silent:
            self.get_logger().warning(
                f'no paired frame for {timeout:g} s: nothing received on '
                f'{", ".join(self.resolve_topic_name(t) for t in silent)}',
                throttle_duration_sec=THROTTLE_S)
        else:
            stats = self.matcher.stats
            self.get_logger().error(
                f'no paired frame for {timeout:g} s although all inputs arrive: header stamps '
                f'are further apart than slop={self._value("slop"):g} s '
                f'(unmatched {stats["dropped_unmatched"]}, out of order '
                f'{stats["dropped_out_of_order"]})', throttle_duration_sec=THROTTLE_S)

    # ---------------------------------------------------------------- worker thread
    def _work(self) -> None:
        while not self._stop.is_set():
            matched = self.slot.take(timeout=0.1)
            if matched is not None:
                self._process(matched)

    def _process(self, matched: MatchedSet) -> None:
        messages = matched.messages
        try:
            if self.depth_source == 'lidar' or not self.tof_registered:
                self.pipeline.T_cam_from_sensor = self._extrinsic_for(matched)
            self.pipeline.min_confidence = self._value('min_confidence')
            result = self.pipeline.process(
                messages['image'], messages['camera_info'],
                messages['points' if self.depth_source == 'lidar' else 'tof/depth'],
                messages.get('tof/camera_info'))
            self._publish(messages['image'].header, result)
            self.frames_processed += 1
        except InputError as error:
            self.frames_failed += 1
            self._throttled_error(f'frame skipped, bad input: {error}')
        except Exception as error:  # keep running; the type says where to look
            self.frames_failed += 1
            self._throttled_error(f'frame skipped, unexpected {type(error).__name__}: {error}')

    def _throttled_error(self, text: str) -> None:
        """Log text at most every THROTTLE_S per kind of problem (numbers ignored), so one
        problem repeating every frame does not flood the log nor hide a different one."""
        kind = re.sub(r'[-+.\d]+', '#', text)
        if kind not in self._error_loggers:
            if len(self._error_loggers) > 64:
                self._error_loggers.clear()
            self._error_loggers[kind] = self.get_logger().get_child('input')
        self._error_loggers[kind].error(text, throttle_duration_sec=THROTTLE_S)

    def _publish(self, header: Any, result: Any) -> None:
        """Publish the enabled outputs of one frame with the image's header."""
        def wanted(topic: str, flag: Optional[str] = None) -> bool:
            return ((flag is None or self._value(flag))
                    and self.publishers_by_topic[topic].get_subscription_count() > 0)

        publish = {'depth': lambda: image_msg(depth_fields(result.dense), header)}
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
            publish['depth/sparse'] = lambda: image_msg(depth_fields(result.sparse), header)
        if wanted('depth/confidence', 'publish_confidence'):
            publish['depth/confidence'] = lambda: image_msg(
                image_fields(result.confidence, '32FC1'), header)
        for topic, build in publish.items():
            self.publishers_by_topic[topic].publish(build())

    def destroy_node(self) -> None:
        """Stop the worker, then the node."""
        self._stop.set()
        self._worker.join(timeout=10.0)
        self.get_logger().info(f'processed {self.frames_processed} frames, skipped '
                               f'{self.frames_failed} bad ones, dropped {self.slot.dropped} '
                               f'stale ones; pairing {self.matcher.stats}')
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of `completion_node`."""
    rclpy.init(args=args)
    try:
        node = CompletionNode()
    except Exception as error:  # a start-up problem: one clear line, no traceback
        rclpy.logging.get_logger('completion_node').fatal(
            f'cannot start: {type(error).__name__}: {error}')
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
