"""cspn_ros.model."""
