"""Live replay: play a bag on the simulated clock through the completion node and record it.

    ros2 launch cspn_ros replay_eval.launch.py bag:=/data/run1 \
        checkpoint:=/data/model/best.safetensors points:=/velodyne_points

Starts lifecycle_completion_node (use_sim_time, the shipped parameter file or `params_file`,
inputs remapped to the bag's topics), configures it (loads the model) and activates it, and only
then starts `ros2 bag play --clock` (the bag's time drives /clock), so no frame is played to a
node still loading; `ros2 bag record` keeps the dense depth, its camera_info and /diagnostics
next to the played inputs in `record`. The launch ends when the bag has played. The offline
score of the same bag comes from `evaluate --bag BAG --checkpoint CKPT`, which runs the
identical pipeline frame by frame; the live replay shows what the node does in real time
(dropped frames, latency).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, EmitEvent, ExecuteProcess, OpaqueFunction,
                            RegisterEventHandler, SetEnvironmentVariable, Shutdown)
from launch.event_handlers import OnProcessExit
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from cspn_ros.core.topics import BAG_TOPICS
from cspn_ros.launch_support import (INPUT_TOPIC_ARGUMENTS, given_overrides, input_remappings)
from cspn_ros.nodes.transport import large_data_environment


def replay(context):
    """The node, its configure/activate transitions, then playback and recording."""
    value = {name: LaunchConfiguration(name).perform(context) for name in (
        'bag', 'params_file', 'checkpoint', 'depth_source', 'device', 'rate', 'record',
        *INPUT_TOPIC_ARGUMENTS)}
    overrides = {'use_sim_time': True}
    overrides.update(given_overrides({name: value[name] for name in (
        'checkpoint', 'depth_source', 'device')}))
    node = LifecycleNode(package='cspn_ros', executable='lifecycle_completion_node',
                         name='completion_node', namespace='', output='screen',
                         parameters=[value['params_file'], overrides],
                         remappings=input_remappings(value))

    def transition(transition_id: int) -> EmitEvent:
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                           transition_id=transition_id))

    play = ExecuteProcess(cmd=['ros2', 'bag', 'play', value['bag'], '--clock',
                               '--rate', value['rate']], output='screen')
    outputs = ['/depth', '/depth/camera_info', '/diagnostics']
    inputs = [value[name] if value[name].startswith('/') else '/' + value[name]
              for name in INPUT_TOPIC_ARGUMENTS]
    record = ExecuteProcess(cmd=['ros2', 'bag', 'record', '--use-sim-time', '-o',
                                 value['record'], *outputs, *inputs], output='screen')
    return [
        node,
        RegisterEventHandler(OnStateTransition(target_lifecycle_node=node, goal_state='inactive',
                                               entities=[transition(
                                                   Transition.TRANSITION_ACTIVATE)])),
        RegisterEventHandler(OnStateTransition(target_lifecycle_node=node, goal_state='active',
                                               entities=[record, play])),
        RegisterEventHandler(OnProcessExit(target_action=play,
                                           on_exit=[Shutdown(reason='bag finished')])),
        transition(Transition.TRANSITION_CONFIGURE),
    ]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory('cspn_ros')
    return LaunchDescription([
        DeclareLaunchArgument('bag', description='rosbag2 folder to replay'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'completion.yaml'),
                              description='completion node parameter file'),
        DeclareLaunchArgument('checkpoint', default_value='',
                              description="weights or 'classical'; '' = the parameter file's"),
        DeclareLaunchArgument('depth_source', default_value='',
                              description="lidar | tof; '' = the parameter file's"),
        DeclareLaunchArgument('device', default_value='',
                              description="cpu | cuda | auto; '' = the parameter file's"),
        DeclareLaunchArgument('rate', default_value='1.0', description='playback rate'),
        DeclareLaunchArgument('record', default_value='replay_depth',
                              description='output bag with the completed depth'),
        *(DeclareLaunchArgument(name, default_value=BAG_TOPICS[name],
                                description=f"the bag's topic for the node input `{topic}`")
          for name, topic in INPUT_TOPIC_ARGUMENTS.items()),
        # Fast DDS: 32 MB shared-memory segments for MB-sized images and clouds (the 512 KB
        # default drops and re-sends them: hundreds of ms), unless a profile file is already set.
        *(SetEnvironmentVariable(name, value) for name, value in
          large_data_environment().items() if name not in os.environ),
        OpaqueFunction(function=replay),
    ])
