"""The demo as a launch file: synthetic_source_node + completion_node + rviz2.

ros2 launch cspn_ros demo.launch.py depth_source:=lidar checkpoint:=classical rviz:=true
The completion node reads config/completion.yaml and takes the extrinsic from tf: the synthetic
source broadcasts its rig on /tf_static ('camera_optical' <- 'lidar' / 'tof_optical'), as a
robot's static_transform_publisher or robot_state_publisher would.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from cspn_ros.nodes.transport import large_data_environment


def completion_node(context):
    """completion_node for the synthetic sensor chosen by depth_source (extrinsic from tf)."""
    share = get_package_share_directory('cspn_ros')
    depth_source = LaunchConfiguration('depth_source').perform(context)
    overrides = {'depth_source': depth_source,
                 'device': LaunchConfiguration('device'),
                 'checkpoint': LaunchConfiguration('checkpoint'),
                 'use_sim_time': LaunchConfiguration('use_sim_time'),
                 'input_reliability': 'reliable',
                 'publish_points': True,
                 'publish_sparse': True}
    if depth_source == 'tof':
        overrides.update({'tof.registered': False, 'max_depth': 10.0})
    return [Node(package='cspn_ros', executable='completion_node', name='completion_node',
                 output='screen',
                 parameters=[os.path.join(share, 'config', 'completion.yaml'), overrides])]


def generate_launch_description():
    share = get_package_share_directory('cspn_ros')
    use_sim_time = LaunchConfiguration('use_sim_time')
    return LaunchDescription([
        DeclareLaunchArgument('depth_source', default_value='lidar', description='lidar or tof'),
        DeclareLaunchArgument('device', default_value='auto', description='cpu, cuda or auto'),
        DeclareLaunchArgument('checkpoint', default_value='',
                              description="'' packaged default, 'classical', or a path"),
        DeclareLaunchArgument('use_sim_time', default_value='false', description='use /clock'),
        DeclareLaunchArgument('rviz', default_value='true', description='start rviz2'),
        DeclareLaunchArgument('rate', default_value='5.0', description='source frame rate (Hz)'),
        # Fast DDS: 32 MB shared-memory segments for MB-sized images and clouds (the 512 KB
        # default drops and re-sends them: hundreds of ms), unless a profile file is already set.
        *(SetEnvironmentVariable(name, value) for name, value in
          large_data_environment().items() if name not in os.environ),
        Node(package='cspn_ros', executable='synthetic_source_node',
             name='synthetic_source_node', output='screen',
             parameters=[{'rate': LaunchConfiguration('rate'),
                          'use_sim_time': use_sim_time}]),
        OpaqueFunction(function=completion_node),
        Node(package='rviz2', executable='rviz2', name='rviz2', output='screen',
             arguments=['-d', os.path.join(share, 'config', 'cspn.rviz')],
             parameters=[{'use_sim_time': use_sim_time}],
             condition=IfCondition(LaunchConfiguration('rviz'))),
    ])
