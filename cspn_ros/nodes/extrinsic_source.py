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
    """`for_frames(camera_frame, sensor_frame) -> T_cam_from_sensor (4,4)` from tf or the
    parameters (`core.extrinsic.extrinsic_choice`); `close()` unsubscribes from tf."""

    def __init__(self, node: Node, from_tf: bool,
                 parameter_extrinsic: Callable[[], np.ndarray]) -> None:
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
        self._source = FixedExtrinsic(parameter_extrinsic())
        message = (f'extrinsic from parameters ({why}): T_cam_from_sensor = '
                   f'{self._source.T_cam_from_sensor.round(4).tolist()}')
        if from_tf:
            log.warning(message)
        else:
            log.info(message)

    def for_frames(self, camera_frame: str, sensor_frame: str) -> np.ndarray:
        """T_cam_from_sensor for one frame; raises core InputError while tf lacks it."""
        return self._source.for_frames(camera_frame, sensor_frame)

    def close(self) -> None:
        """Unsubscribe the tf listener (no-op for parameters)."""
        if self._listener is not None:
            self._listener.unregister()
            self._listener = None
