"""Pure core: conversions, camera model, projection, pairing, the per-frame pipeline (no rclpy)."""
