"""cspn_ros.model.propagation."""
