#!/usr/bin/env bash
# The README's demo command: set up .venv, then run the synthetic source and the completion node as
# two ROS 2 processes over DDS, score the dense depth against ground truth and save a picture.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
exec .venv/bin/python -m cspn_ros.demo "$@"
