# Source on the GPU machine (device tool) from the repo root: makes the image's python3 (CUDA torch)
# import cspn_ros from the working tree, rosbags (wheels carried in .gpu/whl) and, when the ROS 2
# cp312 wheels are carried in .whl (../shared/gpu/fetch-ros-wheels.sh), rclpy.
# One-time set-up here (both folders are git-ignored through .git/info/exclude):
#   bash ../shared/gpu/fetch-ros-wheels.sh            # cp312 ROS 2 wheels -> .whl/
#   mkdir -p .gpu && cp ../shared/gpu/ros-env.sh .gpu/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .gpu/whl \
#     rosbags==0.11.9 apsw lz4 ruamel.yaml backports.zstd
# Then each device call: carry [".gpu", ".whl"]; command: source bench/gpu_env.sh; python3 bench/...
if [ -d .gpu/whl ]; then
  python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site-extra .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site-extra${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d .whl ] && [ -f .gpu/ros-env.sh ]; then
  source .gpu/ros-env.sh
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
