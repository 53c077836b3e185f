"""Subscriptions that take serialized messages and decode them with `core.wire` (numpy views
over the received bytes; no rclpy message objects are built)."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from rclpy.node import Node

from cspn_ros.core.wire import WireError, decode, type_name


def create_decoding_subscription(node: Node, msg_type: Any, topic: str,
                                 callback: Callable[[Any, Mapping[str, Any]], None], qos: Any,
                                 on_error: Callable[[str], None]) -> Any:
    """node.create_subscription(msg_type, topic, ...) with raw=True: callback(message, info)
    receives the `core.wire.decode`d message and rclpy's MessageInfo; bytes that do not decode
    go to on_error(text) instead."""
    typename = type_name(msg_type)

    def receive(raw: bytes, info: Mapping[str, Any]) -> None:
        try:
            message = decode(raw, typename)
        except WireError as error:
            on_error(f'{topic}: {error}')
            return
        callback(message, info)
    return node.create_subscription(msg_type, topic, receive, qos, raw=True)
