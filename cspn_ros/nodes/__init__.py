"""cspn_ros.nodes."""
