# Source on the GPU machine (device tool) from the repo root: makes the image's python3 (CUDA torch)
# import cspn_ros from the working tree, rosbags (wheels carried in .gpu/whl) and, when the ROS 2
# cp312 wheels are carried in .whl (../shared/gpu/fetch-ros-wheels.sh), rclpy.
#   carry: [".gpu", ".whl"]   command: source bench/gpu_env.sh; python3 bench/...
if [ -d .gpu/whl ]; then
  python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site-extra .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site-extra${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d .whl ] && [ -f .gpu/ros-env.sh ]; then
  source .gpu/ros-env.sh
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
