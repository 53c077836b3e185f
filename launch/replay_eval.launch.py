"""Live replay: play a bag on the simulated clock through completion_node and record the output.

    ros2 launch cspn_ros replay_eval.launch.py bag:=/data/run1 \
        checkpoint:=/data/model/best.safetensors

Starts `ros2 bag play --clock` (the bag's time drives /clock), completion_node with
use_sim_time (same topics and parameters as on the robot) and `ros2 bag record` of the dense
depth next to the played topics into `record`. The offline score of the same bag comes from
`evaluate --bag BAG --checkpoint CKPT`, which runs the identical pipeline frame by frame; the
live replay shows what the node does in real time (dropped frames, latency).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, RegisterEventHandler, Shutdown
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    bag = LaunchConfiguration('bag')
    arguments = [
        DeclareLaunchArgument('bag', description='rosbag2 folder to replay'),
        DeclareLaunchArgument('checkpoint', default_value='',
                              description="weights; '' = packaged default, 'classical'"),
        DeclareLaunchArgument('depth_source', default_value='lidar', description='lidar | tof'),
        DeclareLaunchArgument('rate', default_value='1.0', description='playback rate'),
        DeclareLaunchArgument('device', default_value='auto'),
        DeclareLaunchArgument('record', default_value='replay_depth',
                              description='output bag with the completed depth'),
    ]
    play = ExecuteProcess(
        cmd=['ros2', 'bag', 'play', bag, '--clock', '--rate', LaunchConfiguration('rate')],
        output='screen')
    node = Node(
        package='cspn_ros', executable='completion_node', name='completion_node',
        output='screen',
        parameters=[{'use_sim_time': True,
                     'checkpoint': LaunchConfiguration('checkpoint'),
                     'depth_source': LaunchConfiguration('depth_source'),
                     'device': LaunchConfiguration('device'),
                     'slop': 0.05}])
    record = ExecuteProcess(
        cmd=['ros2', 'bag', 'record', '--use-sim-time', '-o', LaunchConfiguration('record'),
             '/depth', '/image', '/camera_info', '/points', '/tof/depth', '/diagnostics'],
        output='screen')
    stop_when_played = RegisterEventHandler(OnProcessExit(
        target_action=play, on_exit=[Shutdown(reason='bag finished')]))
    return LaunchDescription(arguments + [node, record, play, stop_when_played])
