"""completion_node with config/completion.yaml, optionally rviz2 with config/cspn.rviz.

ros2 launch cspn_ros completion.launch.py depth_source:=lidar device:=auto checkpoint:='' rviz:=true
Remap `image`, `camera_info`, `points` / `tof/depth` to your drivers' topics in this file or with
a namespace.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from cspn_ros.nodes.transport import large_data_environment


def generate_launch_description():
    share = get_package_share_directory('cspn_ros')
    use_sim_time = LaunchConfiguration('use_sim_time')
    return LaunchDescription([
        DeclareLaunchArgument('depth_source', default_value='lidar',
                              description='lidar (PointCloud2 on points) or tof (tof/depth)'),
        DeclareLaunchArgument('device', default_value='auto', description='cpu, cuda or auto'),
        DeclareLaunchArgument('checkpoint', default_value='',
                              description="'' packaged default, 'classical', or a path"),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='use /clock (bag replay, simulators)'),
        DeclareLaunchArgument('rviz', default_value='false', description='start rviz2'),
        # Fast DDS: 32 MB shared-memory segments for MB-sized images and clouds (the 512 KB
        # default drops and re-sends them: hundreds of ms), unless a profile file is already set.
        *(SetEnvironmentVariable(name, value) for name, value in
          large_data_environment().items() if name not in os.environ),
        Node(package='cspn_ros', executable='completion_node', name='completion_node',
             output='screen',
             parameters=[os.path.join(share, 'config', 'completion.yaml'), {
                 'depth_source': LaunchConfiguration('depth_source'),
                 'device': LaunchConfiguration('device'),
                 'checkpoint': LaunchConfiguration('checkpoint'),
                 'use_sim_time': use_sim_time}]),
        Node(package='rviz2', executable='rviz2', name='rviz2', output='screen',
             arguments=['-d', os.path.join(share, 'config', 'cspn.rviz')],
             parameters=[{'use_sim_time': use_sim_time}],
             condition=IfCondition(LaunchConfiguration('rviz'))),
    ])
