"""completion_node: colour image(s) + LiDAR cloud(s) or ToF depth in, dense metric depth out.

Wiring only: parameters are read by `nodes.parameters`, each camera's frames are processed by
the core (`core.rig`: a `CameraChannel` per camera, `RigCompleter` batching the cameras of one
sweep through the model), outputs are published by `nodes.outputs` and /diagnostics by
`nodes.diagnostics_report`. `CompletionCore` holds them in four steps, configure / activate /
deactivate / cleanup, so the plain `CompletionNode` (all four at start) and the managed
`LifecycleCompletionNode` share one implementation. One worker thread owns the model and the
input subscriptions: they live on a hidden helper node (`_<name>_inputs`, subscribed to the
topic names this node resolves) that the worker spins itself between frames, so the node's
executor (parameters, lifecycle services, the diagnostics timer) never deserialises MB-sized
inputs, and inputs that arrive while a frame is being processed wait in DDS, where a faster
publisher's older samples are overwritten (QoS history) at no cost. Before each batch the
worker takes every waiting message, feeds each camera's stamp matcher (`core.sync`) and
completes only each camera's newest matched set (`core.rig.SweepBatcher`); older sets are
dropped and counted. Bad frames are logged (throttled per problem) and skipped; the node keeps
running.

Topics (relative; camera NAME of a rig (`cameras`) reads and publishes under `NAME/`, LiDAR
NAME of several (`lidars`) is read on `NAME/points`): in `image` (or `image/compressed`:
image_transport), `camera_info`, and `points` (depth_source=lidar) or `tof/depth` (or
`tof/depth/compressedDepth`) (+ `tof/camera_info` unless tof.registered); out `depth`,
`depth/camera_info`, `depth/colorized`, `depth/points`, `depth/sparse`, `depth/confidence`
(`nodes.outputs`), and `/diagnostics` (1 Hz DiagnosticArray, one status per camera).
"""
from __future__ import annotations

import functools
import re
import threading
import time
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.executors import SingleThreadedExecutor
from rclpy.logging import LoggingSeverity
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, qos_profile_sensor_data)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from cspn_ros.core.background import BackgroundWorker
from cspn_ros.core.conversions import stamp_to_ns
from cspn_ros.core.diagnostics import CompletionDiagnostics
from cspn_ros.core.pipeline import (DEPTH_SOURCES, CompletionPipeline, InputError,
                                    ModelOutputError)
from cspn_ros.core.rig import CameraChannel, RigCompleter, SweepBatcher, sensor_topic
from cspn_ros.core.selfcheck import PendingScore
from cspn_ros.core.sync import ApproximateTimeMatcher, MatchedSet
from cspn_ros.core.topics import COLOUR_TRANSPORTS, DEPTH_TRANSPORTS, transport_topic
from cspn_ros.nodes.diagnostics_report import DiagnosticsReport
from cspn_ros.nodes.extrinsic_source import ExtrinsicSource
from cspn_ros.nodes.motion_source import odometry_message_type
from cspn_ros.nodes.outputs import CameraOutputs
from cspn_ros.nodes.parameters import (RELIABILITIES, ParameterReader, StartupError,
                                       declare_parameters, declare_rig_parameters,
                                       parameter_problem, sensor_names)
from cspn_ros.nodes.raw_io import create_decoding_subscription
from cspn_ros.nodes.spin import freeze_long_lived_objects, run

#: Seconds between two log lines about the same problem.
THROTTLE_S = 5.0


class CompletionCore:
    """Model, matchers, worker, publishers, subscriptions and diagnostics of a completion node.

    node: the rclpy Node (plain or lifecycle) whose parameters (declare_parameters) it reads;
    create_output_publisher: node.create_publisher or node.create_lifecycle_publisher.
    configure() loads parameters, the model and the publishers; activate() subscribes and starts
    the worker; deactivate() stops both and frees GPU memory; cleanup() releases everything.
    """

    def __init__(self, node: Node, create_output_publisher: Callable[..., Any]) -> None:
        self.node = node
        self.log = node.get_logger()
        self.parameters = ParameterReader(node)
        self._create_output_publisher = create_output_publisher
        self.rig: Optional[RigCompleter] = None
        self.channels: dict[str, CameraChannel] = {}
        self.outputs: dict[str, CameraOutputs] = {}
        self.batcher: Optional[SweepBatcher] = None
        self.report: Optional[DiagnosticsReport] = None
        self.active = False
        self._inputs_node: Optional[Node] = None
        self._inputs_executor: Optional[SingleThreadedExecutor] = None
        self._messages_taken = 0
        self._worker: Optional[threading.Thread] = None
        self._scorer: Optional[BackgroundWorker] = None  # self-check scores, after publishing
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards diagnostics (callbacks, worker and timer)
        self._loggers: dict[tuple, Any] = {}
        self._warmup_size: Optional[tuple[int, int]] = None
        self._timer = None
        self._extrinsic: Optional[ExtrinsicSource] = None
        node.add_on_set_parameters_callback(self._check_parameters)
        node.add_post_set_parameters_callback(self._apply_parameters)

    @property
    def completer(self) -> Any:
        """The model every camera runs (None before configure)."""
        return None if self.rig is None else self.rig.completer

    # ---------------------------------------------------------------- lifecycle steps
    def configure(self) -> None:
        """Read parameters, load and warm up the model, create publishers and the 1 Hz
        diagnostics timer. Raises StartupError (or the loader's error) on bad parameters."""
        read = self.parameters
        self.depth_source = read.choice('depth_source', DEPTH_SOURCES)
        self.tof_registered = read.value('tof.registered')
        cameras, lidars = sensor_names(self.node, 'cameras'), sensor_names(self.node, 'lidars')
        if self.depth_source == 'tof' and cameras + lidars != ('', ''):
            raise StartupError('cameras and lidars take depth_source lidar (a ToF camera '
                               'serves one colour camera)')
        declare_rig_parameters(self.node, cameras + lidars)
        self.motion = read.motion_source(self.depth_source, cameras, lidars)
        completer, self.model_source = read.load_completer(read.value('require_gpu'),
                                                           torch.cuda.is_available())
        self._default_steps = completer.steps
        self._extrinsic = None
        if self.depth_source == 'lidar' or not self.tof_registered:
            self._extrinsic = ExtrinsicSource(self.node, read.value('extrinsic.from_tf'),
                                              lambda: read.rig_extrinsics(cameras, lidars))
        values = read.run_time_values()
        problem = parameter_problem(values, completer.config.propagation)
        if problem:
            raise StartupError(problem)
        max_image_size = read.max_image_size()
        self.lidars = lidars
        self.inputs = self._input_types(cameras, lidars)
        self.channels = {camera: self._channel(camera, completer, values, max_image_size)
                         for camera in cameras}
        self.rig = RigCompleter({camera: channel.pipeline
                                 for camera, channel in self.channels.items()},
                                read.value('require_gpu'), self.log.warning)
        self.batcher = SweepBatcher(cameras, self.channels[cameras[0]].depth_keys,
                                    read.value('batch_wait'))
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                         reliability=RELIABILITIES[read.choice('output_reliability',
                                                               tuple(RELIABILITIES))],
                         durability=DurabilityPolicy.VOLATILE)
        self.outputs = {camera: CameraOutputs(camera, self._create_output_publisher, qos,
                                              read.value) for camera in cameras}
        self.report = DiagnosticsReport(self.node, self._lock, self._log_throttled, read.value)
        self._timer = self.node.create_timer(1.0, self._report,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._warmed_up = False
        warmup_size = read.warmup_size(max_image_size)
        if warmup_size is not None:
            self._warm_up(*warmup_size)

    def _input_types(self, cameras: tuple[str, ...], lidars: tuple[str, ...]) -> dict[str, Any]:
        """Relative input topic -> (message type, transport) of every subscription."""
        read = self.parameters
        colour = read.choice('image_transport', COLOUR_TRANSPORTS)
        inputs = {}
        for camera in cameras:
            inputs[sensor_topic(camera, 'image')] = (
                Image if colour == 'raw' else CompressedImage, colour)
            inputs[sensor_topic(camera, 'camera_info')] = (CameraInfo, 'raw')
        if self.depth_source == 'lidar':
            inputs.update({sensor_topic(lidar, 'points'): (PointCloud2, 'raw')
                           for lidar in lidars})
        else:
            depth = read.choice('tof.image_transport', DEPTH_TRANSPORTS)
            inputs['tof/depth'] = (Image if depth == 'raw' else CompressedImage, depth)
            if not self.tof_registered:
                inputs['tof/camera_info'] = (CameraInfo, 'raw')
        self._resolved = {topic: transport_topic(self.node.resolve_topic_name(topic), transport)
                          for topic, (_, transport) in inputs.items()}
        return inputs

    def _channel(self, camera: str, completer: Any, values: Mapping[str, Any],
                 max_image_size: tuple[int, int]) -> CameraChannel:
        """The pipeline, matcher, self-check and diagnostics of one camera."""
        read = self.parameters
        self_check = read.self_check()
        pipeline = CompletionPipeline(
            completer, depth_source=self.depth_source, min_depth=values['min_depth'],
            max_depth=values['max_depth'], min_confidence=read.value('min_confidence'),
            tof_registered=self.tof_registered, rectified=read.value('rectified'),
            min_input_pixels=read.value('min_input_pixels'),
            max_input_distance=read.value('max_input_distance'), max_image_size=max_image_size,
            occlusion=read.occlusion(self.depth_source), holdout=self_check.holdout(),
            motion=self.motion and self.motion.compensation.sharing_track())
        keys = ['image', 'camera_info']
        depth_keys = ([sensor_topic(lidar, 'points') for lidar in self.lidars]
                      if self.depth_source == 'lidar' else ['tof/depth'])
        keys += depth_keys + (['tof/camera_info'] if 'tof/camera_info' in self.inputs else [])
        matcher = ApproximateTimeMatcher(keys, slop_s=read.value('slop'),
                                         queue_size=read.value('queue_size'), reference='image')
        topics = {key: self._resolved[self._relative(camera, key)] for key in keys}
        diagnostics = CompletionDiagnostics(tuple(topics.values()),
                                            timeout_s=read.value('input_timeout'))
        return CameraChannel(camera, pipeline, matcher, self_check, diagnostics, topics,
                             depth_keys)

    @staticmethod
    def _relative(camera: str, key: str) -> str:
        """The relative topic of a camera's matcher key (its own image and camera_info, the
        shared clouds / ToF inputs)."""
        return sensor_topic(camera, key) if key in ('image', 'camera_info') else key

    def activate(self) -> None:
        """Subscribe to the inputs and start the worker thread."""
        with self._lock:
            for channel in self.channels.values():
                channel.matcher.reset()
                channel.diagnostics.forget_inputs()
                channel.last_match = time.monotonic()
        input_qos = QoSProfile(**{k: getattr(qos_profile_sensor_data, k) for k in (
            'history', 'depth', 'durability')}, reliability=RELIABILITIES[self.parameters.choice(
                'input_reliability', tuple(RELIABILITIES))])
        # The helper ignores the process's arguments (a `__node` remap would rename it too) and
        # subscribes to the names this node resolves, node-specific remappings included.
        self._inputs_node = Node(f'_{self.node.get_name()}_inputs',
                                 namespace=self.node.get_namespace(),
                                 context=self.node.context, start_parameter_services=False,
                                 use_global_arguments=False)
        for topic, (msg_type, _) in self.inputs.items():  # serialized in, decoded by core.wire
            create_decoding_subscription(self._inputs_node, msg_type, self._resolved[topic],
                                         self._callback_for(topic), input_qos,
                                         lambda text, topic=topic: self._input_failed(topic,
                                                                                      text))
        if self.motion is not None:  # every pose between two frames is kept
            self._inputs_node.create_subscription(
                odometry_message_type(self.parameters.value('motion.odometry_type')),
                self.node.resolve_topic_name(self.parameters.value('motion.odometry_topic')),
                self.motion.callback, QoSProfile(**{**{k: getattr(input_qos, k) for k in (
                    'history', 'durability', 'reliability')}, 'depth': 200}))
        self._inputs_executor = SingleThreadedExecutor(context=self.node.context)
        self._inputs_executor.add_node(self._inputs_node)
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name='completion_worker', daemon=True)
        self._worker.start()
        self._scorer = BackgroundWorker('self_check_scorer', lambda error: self._log_throttled(
            LoggingSeverity.ERROR, f'self-check scoring failed: {type(error).__name__}: {error}'))
        self.active = True
        self.log.info(f'waiting for {", ".join(self._resolved.values())}; publishing depth '
                      f'from {self.depth_source}')

    def deactivate(self) -> None:
        """Unsubscribe, stop the worker, drop pending frames and free cached GPU memory."""
        if not self.active:
            return
        self.active = False
        self._stop.set()
        self._worker.join(timeout=10.0)
        self._scorer.stop()
        self._inputs_executor.shutdown(timeout_sec=1.0)
        self._inputs_node.destroy_node()
        self._inputs_node = self._inputs_executor = None
        self.batcher.clear()
        self.rig.free_device_memory()

    def cleanup(self) -> None:
        """Deactivate if needed, then release the model, publishers, timer and tf listener."""
        self.deactivate()
        if self._extrinsic is not None:
            self._extrinsic.close()
            self._extrinsic = None
        if self.rig is None:
            return
        for camera, channel in self.channels.items():
            self.log.info(f'{camera + ": " if camera else ""}processed '
                          f'{channel.frames_processed} frames, skipped '
                          f'{channel.diagnostics.failed} bad ones, dropped '
                          f'{self.stale_dropped(camera)} stale ones; pairing '
                          f'{channel.matcher.stats}')
        if self._timer is not None:
            self.node.destroy_timer(self._timer)
        for outputs in self.outputs.values():
            outputs.destroy(self.node.destroy_publisher)
        if self.report is not None:
            self.report.destroy()
        self._timer = self.report = None
        self.outputs = {}
        self.rig.free_device_memory()
        self.rig, self.channels, self.batcher = None, {}, None

    # ---------------------------------------------------------------- parameters at run time
    def _check_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Reject run-time values that do not fit together or with the loaded model (ranges,
        types and read-only flags are checked by rclpy from the descriptors)."""
        values = self.parameters.run_time_values()
        values.update({p.name: p.value for p in parameters if p.name in values})
        propagation = None if self.completer is None else self.completer.config.propagation
        problem = parameter_problem(values, propagation)
        return SetParametersResult(successful=not problem, reason=problem)

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        """Apply accepted run-time parameters to the model and the pipelines."""
        if self.rig is None:
            return  # read at configure
        for parameter in parameters:
            if parameter.name in ('min_depth', 'max_depth', 'min_confidence',
                                  'max_input_distance', 'min_input_pixels'):
                cast = int if parameter.name == 'min_input_pixels' else float
                for channel in self.channels.values():
                    setattr(channel.pipeline, parameter.name, cast(parameter.value))
            elif parameter.name == 'precision':
                self.completer.precision = parameter.value
            elif parameter.name == 'propagation_steps' and self.completer.model is not None:
                steps = parameter.value
                self.completer.steps = self._default_steps if steps < 0 else steps
            else:
                continue
            self.log.info(f'{parameter.name} set to {parameter.value}')

    def _warm_up(self, height: int, width: int) -> None:
        """Run the model on random height x width batches once, so the first frame is fast."""
        self._warmed_up = True
        try:
            seconds = self.rig.warm_up(height, width)
        except Exception as error:  # a failed warm-up costs speed only; frames will tell more
            self.log.warning(f'warm-up at {width}x{height} failed: {type(error).__name__}: '
                             f'{error}')
            return
        self.log.info(f'model warmed up at {width}x{height} in {seconds:.2f} s')
        freeze_long_lived_objects()

    # ---------------------------------------------------------------- callbacks (worker)
    def _callback_for(self, topic: str):
        resolved = self._resolved[topic]
        readers = [(channel, key) for channel in self.channels.values()
                   for key in channel.matcher.topics
                   if self._relative(channel.name, key) == topic]

        def callback(msg: Any, info: Mapping[str, Any]) -> None:
            self._messages_taken += 1
            stamp_ns = stamp_to_ns(msg.header.stamp)
            now = time.monotonic()
            for channel, key in readers:
                if key == 'image':
                    channel.count_skipped_images(repr(info.get('publisher_gid')),
                                                 info.get('publication_sequence_number'))
                with self._lock:
                    channel.diagnostics.received(resolved, now)
                if (key == 'camera_info' and not self._warmed_up and self._warmup_size is None
                        and not channel.pipeline.camera_info_problem(msg)):  # checked sizes
                    self._warmup_size = (int(msg.height), int(msg.width))  # the worker warms up
                if channel.matcher.detect_jump_back(key, stamp_ns):
                    self.log.warning('input stamps jumped back (bag loop or simulator restart): '
                                     'pairing restarted')
                    channel.matcher.reset()
                for matched in channel.matcher.add(key, stamp_ns, msg):
                    channel.last_match = now
                    self.batcher.put(channel.name, matched, now)
        return callback

    def stale_dropped(self, camera: str) -> int:
        """Frames of camera dropped for a newer one: matched sets replaced before their batch
        left + reference images never taken (overwritten in DDS while the worker was busy)."""
        return self.batcher.dropped[camera] + self.channels[camera].images_skipped

    def _report(self) -> None:
        """1 Hz: publish /diagnostics (one status per camera)."""
        self.report.publish(self.channels, {camera: self.stale_dropped(camera)
                                            for camera in self.channels},
                            self.completer, self.model_source, self.active)

    # ---------------------------------------------------------------- worker thread
    def _work(self) -> None:
        while not self._stop.is_set() and self.node.context.ok():
            if self._warmup_size is not None and not self._warmed_up:
                self._warm_up(*self._warmup_size)
            waiting = self.batcher.seconds_to_wait(time.monotonic())
            try:
                self._take_inputs(first_wait_s=0.1 if waiting is None else min(0.1, waiting))
            except Exception as error:  # the context went down under us: shutting down
                if self.node.context.ok():
                    raise
                self.log.debug(f'worker stops: {error}')
                return
            batch = self.batcher.take(time.monotonic())
            if batch:
                self._process(batch)

    def _take_inputs(self, first_wait_s: float) -> None:
        """Wait up to first_wait_s for an input message, then take every message already
        waiting (their callbacks feed the matchers and the batcher)."""
        self._inputs_executor.spin_once(timeout_sec=first_wait_s)
        while True:
            taken = self._messages_taken
            self._inputs_executor.spin_once(timeout_sec=0)
            if self._messages_taken == taken:
                return

    def _process(self, batch: Mapping[str, MatchedSet]) -> None:
        """Complete the matched sets of one sweep (one per camera) and publish each camera's.
        Per camera the timings gain `wait`: image stamp -> this batch's start (s), the time in
        transit and queued before any work."""
        started_ns = self.node.get_clock().now().nanoseconds
        frames = {}
        for camera, matched in batch.items():
            try:
                frames[camera] = self._frame(self.channels[camera], matched)
            except InputError as error:
                self._frame_failed(camera, f'frame skipped, bad input: {error}')
        try:
            results = self.rig.complete(frames)
        except Exception as error:  # out of memory with require_gpu: the whole batch
            results = {camera: error for camera in frames}
        to_score = []
        for camera, outcome in results.items():
            channel = self.channels[camera]
            channel.last_batch = len(results)
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                result, pending = channel.self_check.before_publish(outcome)
                header = batch[camera].messages['image'].header
                timings = {'wait': (started_ns - batch[camera].stamp_ns) / 1e9,
                           **result.timings, **self.outputs[camera].publish(
                    header, result, channel.pipeline.min_depth, channel.pipeline.max_depth)}
                if pending is not None:
                    to_score.append((channel, pending))
                latency_s = (self.node.get_clock().now().nanoseconds
                             - batch[camera].stamp_ns) / 1e9
                with self._lock:
                    channel.diagnostics.published_frame(time.monotonic(), latency_s, timings)
                channel.frames_processed += 1
            except InputError as error:
                self._frame_failed(camera, f'frame skipped, bad input: {error}')
            except ModelOutputError as error:
                self._frame_failed(camera, f'frame failed: {error}')
            except Exception as error:  # keep running; the type says where to look
                self._frame_failed(camera, f'frame skipped, unexpected {type(error).__name__}: '
                                           f'{error}')
        if to_score and not self._scorer.submit(functools.partial(self._score, to_score)):
            for channel, _ in to_score:
                channel.self_check.skip()

    def _score(self, to_score: list[tuple[CameraChannel, PendingScore]]) -> None:
        """On the scorer thread, after publishing: the self-check scores of a sweep's frames."""
        for channel, pending in to_score:
            switched = channel.self_check.score(pending)
            if switched:
                self.log.warning(f'{channel.name}: {switched}' if channel.name else switched)

    def _frame(self, channel: CameraChannel, matched: MatchedSet) -> tuple:
        """The pipeline arguments of one camera's matched set, its extrinsic(s) and the
        motion compensation set for it; InputError while tf lacks an extrinsic."""
        messages = matched.messages
        image_frame = messages['image'].header.frame_id
        if self._extrinsic is not None:
            transforms = [self._extrinsic.for_frames(image_frame,
                                                     messages[key].header.frame_id,
                                                     (channel.name, lidar))
                          for key, lidar in zip(channel.depth_keys, self.lidars)]
            channel.pipeline.T_cam_from_sensor = (transforms[0] if len(transforms) == 1
                                                  else np.stack(transforms))
        if self.motion is not None:
            self.motion.prepare(channel.pipeline.motion, image_frame,
                                [messages[key].header.frame_id for key in channel.depth_keys],
                                channel.pipeline.T_cam_from_sensor,
                                self._extrinsic.for_frames if self._extrinsic.kind == 'tf'
                                else None)
        return channel.frame_messages(messages)

    def _frame_failed(self, camera: str, text: str) -> None:
        """Count the failure and log it (throttled per kind of problem)."""
        text = f'{camera}: {text}' if camera else text
        with self._lock:
            self.channels[camera].diagnostics.error(text, time.monotonic())
        self._log_throttled(LoggingSeverity.ERROR, text)

    def _input_failed(self, topic: str, text: str) -> None:
        """Bytes on the input topic that do not decode: an error of each camera reading it."""
        for channel in self.channels.values():
            if any(self._relative(channel.name, key) == topic for key in channel.matcher.topics):
                self._frame_failed(channel.name, text)

    def _log_throttled(self, severity: LoggingSeverity, text: str) -> None:
        """Log text at most every THROTTLE_S per kind of problem (numbers ignored), so one
        problem repeating every frame does not flood the log nor hide another."""
        kind = (severity, re.sub(r'[-+.\d]+', '#', text))
        if kind not in self._loggers:
            if len(self._loggers) > 64:
                self._loggers.clear()
            self._loggers[kind] = self.log.get_child('input')
        self._loggers[kind].log(text, severity, throttle_duration_sec=THROTTLE_S)


class CompletionNode(Node):
    """Dense depth from colour cameras and a LiDAR or ToF sensor (see the module docstring);
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
