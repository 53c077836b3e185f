#!/usr/bin/env bash
# Create (or refresh) the virtual environment at .venv with every pinned dependency and cspn_ros
# installed in editable mode, so `.venv/bin/completion_node` etc. exist. Idempotent: a stamp of
# requirements.txt + setup.py skips the work when nothing changed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
stamp=.venv/.cspn_ros-setup
want="$(cat requirements.txt setup.py setup.cfg | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# This machine's pip configuration names local mirror folders that may not exist; pip warns about
# each one on every look-up. Keep those lines out of the log, keep every other message.
quiet_mirrors() { "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2); }
quiet_mirrors "${pip[@]}" "setuptools<80" wheel
# torch first, alone and exact: the CPU wheel from the machine's find-links, never a CUDA download.
quiet_mirrors "${pip[@]}" "torch==2.13.0"
quiet_mirrors "${pip[@]}" -r requirements.txt
quiet_mirrors "${pip[@]}" --no-deps --no-build-isolation --use-pep517 -e .
.venv/bin/python -c "import torch, rclpy, cspn_ros; print('cspn_ros set-up ok: torch', torch.__version__)"
echo "$want" > "$stamp"
