"""completion_node serving a ring of cameras around one LiDAR (config/multi_camera.yaml).

ros2 launch cspn_ros multi_camera.launch.py synthetic:=true            # synthetic 6-camera ring
ros2 launch cspn_ros multi_camera.launch.py params_file:=/path/to/my_rig.yaml \
    image_pattern:=/{camera}/image_raw camera_info_pattern:=/{camera}/camera_info \
    points:=/lidar/points device:=cuda

The node reads config/completion.yaml, then `params_file` (its `cameras` list names the
cameras; camera NAME reads NAME/image and NAME/camera_info, publishes NAME/depth, ...).
`image_pattern` / `camera_info_pattern` remap every camera's inputs (`{camera}` = its name);
`points` remaps the cloud. `synthetic:=true` also starts synthetic_source_node with a ring of
as many cameras (it publishes camera<k>/..., matching the shipped file's names).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from cspn_ros.launch_support import (OVERRIDE_ARGUMENTS, camera_remappings, given_overrides,
                                     parameter_file_cameras)
from cspn_ros.nodes.transport import large_data_environment


def nodes(context):
    """completion_node for the parameter file's cameras and, with synthetic:=true, the
    synthetic ring."""
    share = get_package_share_directory('cspn_ros')
    value = {name: LaunchConfiguration(name).perform(context) for name in (
        'namespace', 'params_file', 'device', 'checkpoint', 'use_sim_time', 'image_pattern',
        'camera_info_pattern', 'points', 'synthetic', 'rate', 'width', 'height')}
    cameras = parameter_file_cameras(value['params_file'])
    overrides = {'use_sim_time': value['use_sim_time'].lower() == 'true'}
    overrides.update(given_overrides({name: value[name] for name in OVERRIDE_ARGUMENTS}))
    remappings = camera_remappings(cameras, value['image_pattern'],
                                   value['camera_info_pattern'])
    if value['points'] != 'points':
        remappings.append(('points', value['points']))
    started = [Node(package='cspn_ros', executable='completion_node', name='completion_node',
                    namespace=value['namespace'], output='screen',
                    parameters=[os.path.join(share, 'config', 'completion.yaml'),
                                value['params_file'], overrides],
                    remappings=remappings)]
    if value['synthetic'] == 'true':
        source = {'cameras': len(cameras), 'rate': float(value['rate']),
                  'width': int(value['width']), 'height': int(value['height']),
                  'use_sim_time': value['use_sim_time'].lower() == 'true'}
        started.append(Node(package='cspn_ros', executable='synthetic_source_node',
                            name='synthetic_source_node', namespace=value['namespace'],
                            output='screen', parameters=[source]))
    return started


def generate_launch_description():
    share = get_package_share_directory('cspn_ros')
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node and its topics'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'multi_camera.yaml'),
                              description='the rig: cameras, poses (over completion.yaml)'),
        *(DeclareLaunchArgument(name, default_value='', description=text)
          for name, text in OVERRIDE_ARGUMENTS.items()),
        DeclareLaunchArgument('image_pattern', default_value='',
                              description="each camera's image topic, e.g. "
                              "/{camera}/image_raw; '' = NAME/image"),
        DeclareLaunchArgument('camera_info_pattern', default_value='',
                              description="each camera's CameraInfo topic, e.g. "
                              "/{camera}/camera_info; '' = NAME/camera_info"),
        DeclareLaunchArgument('points', default_value='points',
                              description='the LiDAR cloud topic'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='use /clock (bag replay, simulators)'),
        DeclareLaunchArgument('synthetic', default_value='false',
                              description='also start synthetic_source_node with the ring'),
        DeclareLaunchArgument('rate', default_value='10.0',
                              description='synthetic frame rate (Hz)'),
        DeclareLaunchArgument('width', default_value='320', description='synthetic width (px)'),
        DeclareLaunchArgument('height', default_value='240',
                              description='synthetic height (px)'),
        # Fast DDS: 32 MB shared-memory segments for MB-sized images and clouds (the 512 KB
        # default drops and re-sends them: hundreds of ms), unless a profile file is already set.
        *(SetEnvironmentVariable(name, value) for name, value in
          large_data_environment().items() if name not in os.environ),
        OpaqueFunction(function=nodes),
    ])
