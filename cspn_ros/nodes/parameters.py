"""The completion node's parameters: declarations (descriptions, ranges, read-only flags),
validation, and reading them into the core's objects in one place (`ParameterReader`).

The README's parameter table and config/completion.yaml list exactly `PARAMETERS`
(test_launch_files checks it). A rig (`cameras`, `lidars`) adds per-sensor parameters declared
at configure: `NAME.extrinsic.translation` / `NAME.extrinsic.rotation`, sensor NAME's pose in
the rig's base frame (`core.rig.extrinsics_from_poses`).
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional

import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy

from cspn_ros.core.input_check import (DEFAULT_MAX_IMAGE_SIZE, DEFAULT_MAX_INPUT_DISTANCE,
                                       DEFAULT_MIN_INPUT_PIXELS, image_size_problem)
from cspn_ros.core.motion import MotionCompensation, parse_time_field
from cspn_ros.core.occlusion import OcclusionFilter
from cspn_ros.core.projection import transform_from_translation_quaternion
from cspn_ros.core.rig import extrinsics_from_poses, stamped_pose_base
from cspn_ros.core.selfcheck import FALLBACKS, SelfCheck, SelfCheckConfig
from cspn_ros.nodes.motion_source import ODOMETRY_TYPES, MotionSource, odometry_message_type

DEVICES = ('cpu', 'cuda', 'auto')
PRECISIONS = ('auto', 'fp32', 'fp16', 'bf16')
RELIABILITIES = {'reliable': ReliabilityPolicy.RELIABLE,
                 'best_effort': ReliabilityPolicy.BEST_EFFORT}


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
    'precision': ('auto', 'auto (CUDA: fp16, the fastest safe one; CPU: fp32), fp32, fp16 or bf16 '
                  '(autocast on CUDA; CPU runs fp32 or bf16)',
                  {'additional_constraints': 'one of: auto, fp32, fp16, bf16'}, False),
    'backend': ('auto', 'torch, onnxruntime (the network as a cached ONNX graph; CPU, fp32), or '
                'auto (onnxruntime where it applies, else torch)',
                {'additional_constraints': 'one of: torch, onnxruntime, auto'}, True),
    'channels_last': (Parameter.Type.BOOL, 'channels-last memory format for the network; unset: '
                      'on CUDA', {}, True),
    'cuda_graphs': (Parameter.Type.BOOL, 'replay the network from CUDA graphs (one per image '
                    'and batch size, up to 8 kept); unset: on CUDA', {}, True),
    'compile': (Parameter.Type.BOOL, 'torch.compile the network (compiles during the warm-up '
                'at start, see warmup_size); unset: on CUDA where Triton is installed', {}, True),
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
                             'body); pose = geometry_msgs/PoseStamped of the camera (with '
                             'cameras: of the LiDAR)',
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
    'cameras': (Parameter.Type.STRING_ARRAY, 'names of the cameras of a rig around the LiDAR(s), '
                'e.g. [front, left]: camera NAME reads NAME/image and NAME/camera_info and '
                'publishes NAME/depth, ...; their frames of one sweep are completed as one '
                'batch (unset = one camera on image, camera_info: depth, ...)', {}, True),
    'lidars': (Parameter.Type.STRING_ARRAY, 'names of several LiDARs, e.g. [top, rear]: LiDAR '
               'NAME is read on NAME/points; the clouds that pair with one image are merged '
               'through one z-buffer (unset = one LiDAR on points)', {}, True),
    'batch_wait': (0.05, 'seconds the first camera frame of a sweep waits for the other '
                   'cameras of the rig before its batch runs without them',
                   _float_range(0.0, 1.0), True),
    'fallback': ('none', 'none, or classical: publish the classical fill while the model\'s '
                 'rolling held-out RMSE is worse than the fill\'s (diagnostics WARN)',
                 {'additional_constraints': 'one of: none, classical'}, True),
}


class StartupError(RuntimeError):
    """The node cannot start with its parameters (message says which and why)."""



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


def sensor_names(node: Node, name: str) -> tuple[str, ...]:
    """The `cameras` or `lidars` names, ('',) when unset (one unnamed sensor); StartupError
    for empty, repeated or unusable names."""
    names = node.get_parameter_or(name).value  # None when not set
    if not names:
        return ('',)
    bad = [n for n in names if not n or not n.replace('_', 'a').isalnum() or n[0].isdigit()]
    if bad or len(set(names)) != len(names):
        raise StartupError(f'{name} must be distinct names of letters, digits and _ (not '
                           f'starting with a digit), got {list(names)}')
    return tuple(names)


def declare_rig_parameters(node: Node, sensors: tuple[str, ...]) -> None:
    """Declare NAME.extrinsic.translation / .rotation for each named sensor (once)."""
    for sensor in filter(None, sensors):
        for key, default, meaning in (
                ('translation', [0.0, 0.0, 0.0], '[x, y, z] metres of sensor {} in the rig base '
                 'frame (p_base = R p_sensor + t)'),
                ('rotation', [0.0, 0.0, 0.0, 1.0], '[qx, qy, qz, qw] rotation from sensor {} to '
                 'the rig base frame')):
            name = f'{sensor}.extrinsic.{key}'
            if not node.has_parameter(name):
                node.declare_parameter(name, default, ParameterDescriptor(
                    description=meaning.format(sensor), read_only=True))


class ParameterReader:
    """Reads the node's parameters into core objects; StartupError names a bad parameter."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.log = node.get_logger()

    def value(self, name: str) -> Any:
        return self.node.get_parameter(name).value

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self.value(name)
        if value not in choices:
            raise StartupError(f'parameter {name} must be one of {choices}, got {value!r}')
        return value

    def run_time_values(self) -> dict[str, Any]:
        """The values `parameter_problem` checks."""
        return {name: self.value(name) for name in ('min_depth', 'max_depth', 'precision',
                                                     'propagation_steps')}

    def max_image_size(self) -> tuple[int, int]:
        size = tuple(self.value('max_image_size'))
        if len(size) != 2 or min(size) < 1:
            raise StartupError(f'max_image_size must be [width, height] > 0, got {list(size)}')
        return size

    def warmup_size(self, max_image_size: tuple[int, int]) -> Optional[tuple[int, int]]:
        """(height, width) of `warmup_size`, or None for [0, 0] (warm up at the first
        camera_info)."""
        width, height = self.value('warmup_size')
        if width <= 0 or height <= 0:
            return None
        problem = image_size_problem(width, height, max_image_size, 'warmup_size')
        if problem:
            raise StartupError(problem)
        return height, width

    def load_completer(self, require_gpu: bool, cuda_available: bool) -> tuple[Any, str]:
        """(DepthCompleter, where its weights come from) per device, model_config, checkpoint,
        the inference modes and propagation_steps."""
        from cspn_ros.config import ModelConfig
        from cspn_ros.model.completer import BACKENDS, DepthCompleter
        device, warning = choose_device(self.value('device'), require_gpu, cuda_available)
        if warning:
            self.log.warning(warning)
        modes = {'precision': self.choice('precision', PRECISIONS),
                 'backend': self.choice('backend', BACKENDS),
                 **{name: self.node.get_parameter_or(name).value  # None (unset): device's fast one
                    for name in ('channels_last', 'compile', 'cuda_graphs')}}
        model_config, checkpoint = self.value('model_config'), self.value('checkpoint')
        source = (f'untrained: {model_config}' if model_config
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
        steps = self.value('propagation_steps')
        if steps >= 0 and completer.config.propagation not in ('classical', 'cspnpp'):
            completer.steps = steps
        enabled = [mode for mode in ('channels_last', 'compile', 'cuda_graphs')
                   if getattr(completer, mode)]
        self.log.info(f'model {completer.config.propagation} on {completer.device} '
                      f'({", ".join([completer.backend, completer.precision, *enabled])})'
                      + (f', {completer.steps} propagation steps'
                         if completer.model is not None else ''))
        return completer, source

    def self_check(self) -> SelfCheck:
        from cspn_ros.model.completer import DepthCompleter
        try:
            config = SelfCheckConfig(fallback=self.choice('fallback', FALLBACKS), **{
                name: self.value(f'self_check.{name}') for name in (
                    'holdout_share', 'window', 'classical_every', 'min_frames', 'hysteresis')})
        except ValueError as error:
            raise StartupError(f'self_check / fallback: {error}') from error
        return SelfCheck(config, DepthCompleter.from_config('classical'))

    def occlusion(self, depth_source: str) -> Optional[OcclusionFilter]:
        if depth_source != 'lidar' or not self.value('occlusion_filter.enabled'):
            return None
        return OcclusionFilter(*(self.value(f'occlusion_filter.{name}') for name in (
            'window', 'min_gap', 'min_quadrants')))

    def motion_source(self, depth_source: str, cameras: tuple[str, ...],
                      lidars: tuple[str, ...]) -> Optional[MotionSource]:
        """The odometry-driven MotionSource when motion.odometry_topic is set (LiDAR only)."""
        if not self.value('motion.odometry_topic') or depth_source != 'lidar':
            return None
        kind = self.choice('motion.odometry_type', ODOMETRY_TYPES)
        try:
            odometry_message_type(kind)
            time_field = parse_time_field(self.value('motion.time_field'))
            pose_base = stamped_pose_base(cameras, lidars) if kind == 'pose' else 'camera'
        except (ImportError, ValueError) as error:
            raise StartupError(str(error)) from error
        self.log.info(f'LiDAR motion compensation: odometry on '
                      f'{self.node.resolve_topic_name(self.value("motion.odometry_topic"))}, '
                      f'per-point time {time_field}')
        return MotionSource(MotionCompensation(time_field), pose_base)

    def parameter_extrinsic(self) -> np.ndarray:
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
        return self._pose('extrinsic')

    def rig_extrinsics(self, cameras: tuple[str, ...],
                       lidars: tuple[str, ...]) -> dict[tuple[str, str], np.ndarray]:
        """{(camera, lidar): T_cam_from_lidar} from parameters: the extrinsic.* parameters for
        one unnamed camera and LiDAR, else the named sensors' poses (module docstring)."""
        if cameras == ('',) and lidars == ('',):
            return {('', ''): self.parameter_extrinsic()}
        poses = {name: self._pose(f'{name}.extrinsic') for name in (*cameras, *lidars) if name}
        return extrinsics_from_poses(poses, cameras, lidars)

    def _pose(self, prefix: str) -> np.ndarray:
        try:
            return transform_from_translation_quaternion(self.value(f'{prefix}.translation'),
                                                         self.value(f'{prefix}.rotation'))
        except ValueError as error:
            raise StartupError(f'{prefix}.translation / {prefix}.rotation: {error}') from error
