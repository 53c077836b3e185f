"""The one way every cspn_ros executable starts, spins and stops."""
from __future__ import annotations

from typing import Optional

import rclpy
from rclpy.executors import ExternalShutdownException


def run(node_class: type, name: str, args: Optional[list[str]] = None) -> int:
    """Init rclpy, construct node_class, spin until Ctrl-C or shutdown; exit code 0, or 1 with
    one clear line (no traceback) when the node cannot start."""
    rclpy.init(args=args)
    try:
        node = node_class()
    except Exception as error:  # a start-up problem: one clear line, no traceback
        rclpy.logging.get_logger(name).fatal(f'cannot start: {type(error).__name__}: {error}')
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
