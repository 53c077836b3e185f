"""The one way every cspn_ros executable starts, spins and stops."""
from __future__ import annotations

import gc
import signal
from typing import Optional

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

#: Seconds the main thread waits in the executor at most, so Ctrl-C is seen that quickly.
SIGNAL_CHECK_S = 0.2


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(node_class: type, name: str, args: Optional[list[str]] = None) -> int:
    """Init rclpy, construct node_class, spin until Ctrl-C (SIGINT), SIGTERM or shutdown; exit
    code 0, or 1 with one clear line (no traceback) when the node cannot start.

    rclpy's own signal handlers are off: they shut the context down at once, under the node's
    worker threads (a frame in progress then fails, and its log line cannot reach /rosout).
    Here a signal only ends the spin; the node is destroyed (its workers stopped) while the
    context is still valid, and the context is shut down last."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    # Also when started with SIGINT ignored (inherited by a background job's children, e.g.
    # `nohup ... &` in a script): ros2 launch and supervisors stop nodes with SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    node = None
    try:
        node = node_class()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok():
            executor.spin_once(timeout_sec=SIGNAL_CHECK_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as error:  # a start-up problem: one clear line, no traceback
        if node is not None:
            raise
        rclpy.logging.get_logger(name).fatal(f'cannot start: {type(error).__name__}: {error}')
        rclpy.try_shutdown()
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def freeze_long_lived_objects() -> None:
    """Move every object alive now (modules, model, rclpy) out of the garbage collector's view.

    A full collection walks all of them: about 130 ms on the 2-core VM with the model loaded,
    a pause that showed up as latency outliers (p99) of the running node; after the freeze
    it takes microseconds. Objects made later are collected as usual."""
    gc.collect()
    gc.freeze()
