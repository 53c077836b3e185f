"""completion_node (or its lifecycle variant) with a parameter file, optionally rviz2.

ros2 launch cspn_ros completion.launch.py namespace:=front params_file:=/path/to/mine.yaml \
    image:=/front/color/image_raw camera_info:=/front/color/camera_info points:=/lidar/points
ros2 launch cspn_ros completion.launch.py depth_source:=tof tof_depth:=/tof/depth/image_raw \
    tof_camera_info:=/tof/depth/camera_info device:=cuda rviz:=true

The node runs in `namespace` (its outputs are <namespace>/depth, ...; the shipped parameter file
is keyed `/**`, so it applies there too). `depth_source`, `device` and `checkpoint` override
the parameter file only when given. `lifecycle:=true` starts lifecycle_completion_node
unconfigured (drive it with `ros2 lifecycle set <namespace>/completion_node configure`, then
`activate`). rviz2 shows the namespaced topics in `fixed_frame`.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from cspn_ros.launch_support import (INPUT_TOPIC_ARGUMENTS, OVERRIDE_ARGUMENTS, given_overrides,
                                     input_remappings, write_rviz_config)
from cspn_ros.nodes.transport import large_data_environment


def nodes(context):
    """completion_node (plain or lifecycle) and, with rviz:=true, rviz2, from the arguments."""
    share = get_package_share_directory('cspn_ros')
    value = {name: LaunchConfiguration(name).perform(context) for name in (
        'namespace', 'params_file', 'depth_source', 'device', 'checkpoint', 'use_sim_time',
        'lifecycle', 'rviz', 'fixed_frame', *INPUT_TOPIC_ARGUMENTS)}
    overrides = {'use_sim_time': value['use_sim_time'].lower() == 'true'}
    overrides.update(given_overrides({name: value[name] for name in (
        'depth_source', *OVERRIDE_ARGUMENTS)}))
    namespace, remappings = value['namespace'], input_remappings(value)
    if value['lifecycle'] == 'true':
        started = [LifecycleNode(package='cspn_ros', executable='lifecycle_completion_node',
                                 name='completion_node', namespace=namespace, output='screen',
                                 parameters=[value['params_file'], overrides],
                                 remappings=remappings)]
    else:
        started = [Node(package='cspn_ros', executable='completion_node', name='completion_node',
                        namespace=namespace, output='screen',
                        parameters=[value['params_file'], overrides], remappings=remappings)]
    if value['rviz'] == 'true':
        config = write_rviz_config(os.path.join(share, 'config', 'cspn.rviz'),
                                   namespace, value['fixed_frame'])
        started.append(Node(package='rviz2', executable='rviz2', name='rviz2', output='screen',
                            arguments=['-d', config], parameters=[{
                                'use_sim_time': value['use_sim_time'].lower() == 'true'}]))
    return started


def generate_launch_description():
    share = get_package_share_directory('cspn_ros')
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node and its topics'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'completion.yaml'),
                              description='parameter file (keyed /** or the full node name)'),
        DeclareLaunchArgument('depth_source', default_value='',
                              description="lidar or tof; '' = the parameter file's"),
        *(DeclareLaunchArgument(name, default_value='', description=text)
          for name, text in OVERRIDE_ARGUMENTS.items()),
        *(DeclareLaunchArgument(name, default_value=topic,
                                description=f'topic remapped to the node input `{topic}`')
          for name, topic in INPUT_TOPIC_ARGUMENTS.items()),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='use /clock (bag replay, simulators)'),
        DeclareLaunchArgument('lifecycle', default_value='false',
                              description='start lifecycle_completion_node (unconfigured)'),
        DeclareLaunchArgument('rviz', default_value='false', description='start rviz2'),
        DeclareLaunchArgument('fixed_frame', default_value='camera_optical',
                              description="rviz2's fixed frame (your camera's optical frame)"),
        # Fast DDS: 32 MB shared-memory segments for MB-sized images and clouds (the 512 KB
        # default drops and re-sends them: hundreds of ms), unless a profile file is already set.
        *(SetEnvironmentVariable(name, value) for name, value in
          large_data_environment().items() if name not in os.environ),
        OpaqueFunction(function=nodes),
    ])
