"""The completion node's extrinsic source: tf2_ros (where installed) or the parameters.

The policy (precedence, waiting, following a changed /tf_static) is `core.extrinsic`; this
module only connects it to tf2_ros: a `tf2_ros.Buffer` filled by a `tf2_ros.TransformListener`
on the node (/tf and /tf_static, the latter transient-local so a late node still receives it),
looked up at the latest time.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from rclpy.node import Node
from rclpy.time import Time

from cspn_ros.core.extrinsic import FixedExtrinsic, TfExtrinsic, extrinsic_choice

try:  # a real ROS 2 install has tf2_ros; the PyPI wheels used in .venv do not
    import tf2_ros
except ImportError:
    tf2_ros = None


class ExtrinsicSource:
    """`for_frames(camera_frame, sensor_frame, sensors) -> T_cam_from_sensor (4,4)` from tf or
    the parameters (`core.extrinsic.extrinsic_choice`); `close()` unsubscribes from tf.

    parameter_extrinsics() -> {(camera name, sensor name): T_cam_from_sensor}: the parameter
    extrinsics of every camera and sensor of the rig ('' names the unnamed ones)."""

    def __init__(self, node: Node, from_tf: bool,
                 parameter_extrinsics: Callable[[], dict[tuple[str, str], np.ndarray]]
                 ) -> None:
        log = node.get_logger()
        self.kind, why = extrinsic_choice(from_tf, tf2_ros is not None)
        self._listener: Any = None
        if self.kind == 'tf':
            buffer = tf2_ros.Buffer()
            self._listener = tf2_ros.TransformListener(buffer, node)
            self._source: Any = TfExtrinsic(
                lambda target, source: buffer.lookup_transform(target, source, Time()),
                log.info)
            log.info(f'extrinsic from tf ({why}); frames wait until tf has '
                     'image frame <- sensor frame')
            return
        self._fixed = {pair: FixedExtrinsic(T) for pair, T in parameter_extrinsics().items()}
        message = f'extrinsic from parameters ({why}): T_cam_from_sensor = ' + '; '.join(
            (f'{camera or "camera"} <- {sensor or "sensor"}: ' if len(self._fixed) > 1 else '')
            + str(fixed.T_cam_from_sensor.round(4).tolist())
            for (camera, sensor), fixed in self._fixed.items())
        if from_tf:
            log.warning(message)
        else:
            log.info(message)

    def for_frames(self, camera_frame: str, sensor_frame: str,
                   sensors: tuple[str, str] = ('', '')) -> np.ndarray:
        """T_cam_from_sensor for one frame of the camera and sensor named `sensors`; raises
        core InputError while tf lacks it."""
        if self.kind == 'tf':
            return self._source.for_frames(camera_frame, sensor_frame)
        return self._fixed[sensors].for_frames(camera_frame, sensor_frame)

    def close(self) -> None:
        """Unsubscribe the tf listener (no-op for parameters)."""
        if self._listener is not None:
            self._listener.unregister()
            self._listener = None
