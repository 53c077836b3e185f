"""Train from rosbag2 files as a ROS node (progress on /diagnostics).

    ros2 launch cspn_ros training.launch.py bag:=/data/run1 out:=/data/model supervision:=dense

Same as `training_node --bag ... --out ...`; every other option can be given as a parameter
through `params_file:=` (names as in `training_node --help`, '_' for '-').
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument('bag', description='rosbag2 folder to train on'),
        DeclareLaunchArgument('out', description='output folder (last/best checkpoints, tb/)'),
        DeclareLaunchArgument('supervision', default_value='dense',
                              description='dense | tof | lidar-holdout | photometric'),
        DeclareLaunchArgument('depth_source', default_value='lidar', description='lidar | tof'),
        DeclareLaunchArgument('epochs', default_value='10'),
        DeclareLaunchArgument('batch_size', default_value='4'),
        DeclareLaunchArgument('crop', default_value='', description="'HxW' or '' for none"),
        DeclareLaunchArgument('config', default_value='', description='model config file/name'),
        DeclareLaunchArgument('device', default_value='auto'),
        DeclareLaunchArgument('resume', default_value='false'),
        DeclareLaunchArgument('params_file', default_value='',
                              description='optional YAML with further training_node parameters'),
    ]
    parameters = {
        'bag': [[LaunchConfiguration('bag')]],  # a one-element string array, not a string
        'out': LaunchConfiguration('out'),
        'supervision': LaunchConfiguration('supervision'),
        'depth_source': LaunchConfiguration('depth_source'),
        'epochs': ParameterValue(LaunchConfiguration('epochs'), value_type=int),
        'batch_size': ParameterValue(LaunchConfiguration('batch_size'), value_type=int),
        'crop': LaunchConfiguration('crop'),
        'config': LaunchConfiguration('config'),
        'device': LaunchConfiguration('device'),
        'resume': ParameterValue(LaunchConfiguration('resume'), value_type=bool),
    }
    given = PythonExpression(["'", LaunchConfiguration('params_file'), "' != ''"])
    return LaunchDescription(arguments + [
        Node(package='cspn_ros', executable='training_node', name='training_node',
             output='screen', parameters=[parameters, LaunchConfiguration('params_file')],
             condition=IfCondition(given)),
        Node(package='cspn_ros', executable='training_node', name='training_node',
             output='screen', parameters=[parameters], condition=UnlessCondition(given)),
    ])
