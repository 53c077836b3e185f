"""lifecycle_completion_node: completion_node as a managed (lifecycle) node.

Same parameters, topics and behaviour as `completion_node` (one shared `CompletionCore`);
the lifecycle services (`<node>/change_state`, `<node>/get_state`, ...) drive it:
configure loads parameters and the model (and creates the publishers and /diagnostics),
activate subscribes and starts the worker (outputs flow), deactivate stops both and frees GPU
memory, cleanup releases everything, shutdown works from any state.
"""
from __future__ import annotations

from typing import Any, Optional

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from cspn_ros.nodes.completion_node import CompletionCore
from cspn_ros.nodes.parameters import declare_parameters
from cspn_ros.nodes.spin import run


class LifecycleCompletionNode(LifecycleNode):
    """The completion node, starting unconfigured (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('completion_node', **kwargs)
        declare_parameters(self)
        self.core = CompletionCore(self, self.create_lifecycle_publisher)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.core.configure()
        except Exception as error:  # bad parameters or model: stay unconfigured, say why
            self.get_logger().error(f'configure failed: {type(error).__name__}: {error}')
            self.core.cleanup()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.activate()
        return super().on_activate(state)  # activates the lifecycle publishers

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.cleanup()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Release the core (whatever the state), then the node."""
        core = getattr(self, 'core', None)  # None when declaring the parameters failed
        if core is not None:
            core.cleanup()
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of `lifecycle_completion_node`."""
    return run(LifecycleCompletionNode, 'completion_node', args)


if __name__ == '__main__':
    raise SystemExit(main())
