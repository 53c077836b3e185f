"""Plain helpers the launch files share (no launch or rclpy import, so they are tested here):
the input-topic launch arguments, launch arguments that override a parameter file only when
given, and the rviz config moved into a namespace.
"""
from __future__ import annotations

import tempfile
from typing import Mapping

import yaml

from cspn_ros.core.topics import TOPICS

#: Launch argument -> completion_node input topic it remaps (`image:=/camera/color/image_raw`).
INPUT_TOPIC_ARGUMENTS = {name: TOPICS[name] for name in
                         ('image', 'camera_info', 'points', 'tof_depth', 'tof_camera_info')}


#: Launch arguments (default '') that override the parameter file only when given: name ->
#: description.
OVERRIDE_ARGUMENTS = {
    'device': "cpu, cuda or auto; '' = the parameter file's",
    'checkpoint': "a weights path or 'classical'; '' = the parameter file's (the shipped file: "
                  'the packaged default)',
}


def given_overrides(values: Mapping[str, str]) -> dict[str, str]:
    """The launch argument values that were given (non-empty): they override the parameter
    file; an empty argument leaves the file's value."""
    return {name: value for name, value in values.items() if value != ''}


def input_remappings(values: Mapping[str, str]) -> list[tuple[str, str]]:
    """(node topic, given topic) remappings from INPUT_TOPIC_ARGUMENTS' launch argument values,
    for the arguments that name another topic."""
    return [(TOPICS[name], values[name]) for name in INPUT_TOPIC_ARGUMENTS
            if values.get(name, TOPICS[name]) != TOPICS[name]]


def rviz_config_text(template: str, namespace: str, fixed_frame: str) -> str:
    """The rviz config `template` (YAML, absolute topics of the root namespace) with every
    display topic moved into `namespace` and the fixed frame set."""
    config = yaml.safe_load(template)
    prefix = '/' + namespace.strip('/') if namespace.strip('/') else ''
    manager = config['Visualization Manager']
    for display in manager['Displays']:
        display['Topic']['Value'] = prefix + display['Topic']['Value']
    manager['Global Options']['Fixed Frame'] = fixed_frame
    return yaml.safe_dump(config, sort_keys=False)


def write_rviz_config(template_path: str, namespace: str, fixed_frame: str) -> str:
    """`rviz_config_text` of the file at template_path written to a new temporary file; its
    path (for `rviz2 -d`)."""
    with open(template_path) as template:
        text = rviz_config_text(template.read(), namespace, fixed_frame)
    with tempfile.NamedTemporaryFile('w', prefix='cspn_', suffix='.rviz', delete=False) as out:
        out.write(text)
    return out.name


def parameter_file_cameras(path: str) -> list[str]:
    """The `cameras` a completion_node parameter file sets (keyed `/**` or by node name; the
    first entry that sets it), [] when none does."""
    with open(path) as stream:
        entries = yaml.safe_load(stream) or {}
    for entry in entries.values():
        cameras = (entry or {}).get('ros__parameters', {}).get('cameras')
        if cameras:
            return list(cameras)
    return []


def camera_remappings(cameras: list[str], image_pattern: str,
                      camera_info_pattern: str) -> list[tuple[str, str]]:
    """(node topic, robot topic) remappings of each camera's inputs from patterns such as
    `/{camera}/image_raw` ('' = no remapping: the node's `NAME/image`, `NAME/camera_info`)."""
    remappings = []
    for pattern, topic in ((image_pattern, 'image'), (camera_info_pattern, 'camera_info')):
        if pattern:
            remappings += [(f'{camera}/{topic}', pattern.format(camera=camera))
                           for camera in cameras]
    return remappings
