"""cspn_ros.train."""
