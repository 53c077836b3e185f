"""cspn_ros.data."""
