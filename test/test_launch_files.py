"""launch/*.launch.py, config/completion.yaml and config/cspn.rviz agree with the nodes.

launch_ros is not installed here, so the launch files are read with `ast`: every cspn_ros
executable exists in setup.py, every parameter they or the YAML set is declared by the node
(instantiated in-process), and every rviz topic is published by one of the nodes. With a real ROS 2
install (launch_ros importable) the launch descriptions are also built for real.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import rclpy
import yaml
from rclpy.parameter import Parameter

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))


def console_scripts() -> set[str]:
    """Executable names of setup.py's console_scripts entry points."""
    tree = ast.parse((ROOT / 'setup.py').read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == 'console_scripts':
                    return {ast.literal_eval(item).split('=')[0].strip() for item in value.elts}
    raise AssertionError('setup.py has no console_scripts')


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def launched_nodes(path: Path) -> list[tuple[str, str, set[str]]]:
    """(package, executable, parameter keys set in the launch file) for each Node(...) call.

    Parameter dicts are taken from literals in `parameters=[...]` and, for names in that list,
    from the literals assigned to the name or passed to its `.update(...)`.
    """
    tree = ast.parse(path.read_text())
    dicts_by_name: dict[str, list[ast.Dict]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    dicts_by_name.setdefault(target.id, []).append(node.value)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == 'update' and isinstance(node.func.value, ast.Name)):
            dicts_by_name.setdefault(node.func.value.id, []).extend(
                a for a in node.args if isinstance(a, ast.Dict))
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call)
                and getattr(node.func, 'id', None) in ('Node', 'LifecycleNode')):
            continue
        package, executable = (ast.literal_eval(_keyword(node, k)) for k in ('package',
                                                                            'executable'))
        keys: set[str] = set()
        parameters = _keyword(node, 'parameters')
        for item in (parameters.elts if parameters is not None else []):
            dicts = ([item] if isinstance(item, ast.Dict)
                     else dicts_by_name.get(item.id, []) if isinstance(item, ast.Name) else [])
            keys |= {ast.literal_eval(k) for d in dicts for k in d.keys}
        found.append((package, executable, keys))
    return found


@pytest.fixture
def live_nodes(ros_domain):
    """completion_node and synthetic_source_node instantiated in-process (classical, tiny)."""
    from cspn_ros.nodes.completion_node import CompletionNode
    from cspn_ros.nodes.synthetic_source_node import SyntheticSourceNode
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain)
    nodes = {
        'completion_node': CompletionNode(context=context, parameter_overrides=[
            Parameter('checkpoint', value='classical'),
            Parameter('publish_points', value=True)]),
        'synthetic_source_node': SyntheticSourceNode(context=context, parameter_overrides=[
            Parameter('width', value=32), Parameter('height', value=24),
            Parameter('lidar_beams', value=16), Parameter('num_frames', value=1)]),
    }
    yield nodes
    for node in nodes.values():
        node.destroy_node()
    rclpy.shutdown(context=context)


def declared(node) -> set[str]:
    return set(node.list_parameters([], 0).names)


def test_launch_files_start_existing_executables_with_declared_parameters(live_nodes):
    """Parameters are checked for the nodes instantiated here (completion_node,
    synthetic_source_node), in every launch file that starts them."""
    scripts = console_scripts()
    started = set()
    for path in LAUNCH_FILES:
        for package, executable, keys in launched_nodes(path):
            if package != 'cspn_ros':
                assert (package, executable) == ('rviz2', 'rviz2')
                continue
            assert executable in scripts, f'{path.name}: {executable} not in setup.py'
            if executable in live_nodes:
                undeclared = keys - declared(live_nodes[executable])
                assert not undeclared, f'{path.name} sets undeclared {executable} {undeclared}'
            started.add((path.name, executable))
    assert {('completion.launch.py', 'completion_node'), ('demo.launch.py', 'completion_node'),
            ('demo.launch.py', 'synthetic_source_node')} <= started


def readme_parameter_table() -> dict[str, tuple[str, str]]:
    """README's completion_node parameter table: name -> (default column, meaning column)."""
    text = (ROOT / 'README.md').read_text()
    table = text[text.index('### completion_node parameters'):]
    rows = {}
    for line in table.splitlines()[4:]:
        if not line.startswith('| `'):
            break
        cells = [cell.strip() for cell in line.strip('|').split(' | ')]
        rows[cells[0].strip('`')] = (cells[2], cells[5])
    return rows


def test_one_set_of_defaults_in_the_node_the_yaml_and_the_readme(live_nodes):
    """config/completion.yaml sets every declared parameter to its declared default (keyed
    `/**`, so it applies under any namespace), and README's table lists the same defaults and
    descriptions."""
    from cspn_ros.nodes.parameters import PARAMETERS
    shipped = yaml.safe_load((ROOT / 'config' / 'completion.yaml').read_text())
    assert list(shipped) == ['/**']
    parameters = shipped['/**']['ros__parameters']
    defaults = {name: spec[0] for name, spec in PARAMETERS.items()
                if not isinstance(spec[0], Parameter.Type)}  # extrinsic.matrix: unset
    assert parameters == defaults
    node = live_nodes['completion_node']
    for name, value in parameters.items():  # the declared type (rclpy rejects any other)
        assert type(node.get_parameter(name).value) is type(value), name
    table = readme_parameter_table()
    assert set(table) == set(PARAMETERS)
    for name, (default, description, _, _) in PARAMETERS.items():
        shown = table[name][0]
        if isinstance(default, Parameter.Type):
            assert shown == '(unset)', name
        else:
            assert ast.literal_eval(shown) == default, name
        assert table[name][1] == description, name


def test_rviz_config_shows_topics_the_nodes_publish(live_nodes):
    config = yaml.safe_load((ROOT / 'config' / 'cspn.rviz').read_text())['Visualization Manager']
    published = {pub.topic_name for node in live_nodes.values() for pub in node.publishers}
    displays = {d['Topic']['Value']: d for d in config['Displays']}
    assert set(displays) == {'/image', '/depth', '/depth/colorized', '/depth/points'}
    assert set(displays) <= published
    assert displays['/depth/points']['Class'] == 'rviz_default_plugins/PointCloud2'
    assert displays['/depth/points']['Color Transformer'] == 'RGB8'
    assert config['Global Options']['Fixed Frame'] == 'camera_optical'


def test_launch_descriptions_build_with_launch_ros():
    pytest.importorskip('launch_ros', reason='launch_ros needs a ROS 2 install (not in .venv)')
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    for path in LAUNCH_FILES:
        description = PythonLaunchDescriptionSource(str(path)).get_launch_description(None)
        assert description.entities


def test_launch_arguments_for_a_robot():
    """completion.launch.py and replay_eval.launch.py take a namespace / parameter file and the
    input topics; replay starts playing once the lifecycle node is active."""
    completion = (ROOT / 'launch' / 'completion.launch.py').read_text()
    replay = (ROOT / 'launch' / 'replay_eval.launch.py').read_text()
    for text in (completion, replay):
        declared_names = {ast.literal_eval(call.args[0]) for call in ast.walk(ast.parse(text))
                          if isinstance(call, ast.Call)
                          and getattr(call.func, 'id', None) == 'DeclareLaunchArgument'
                          and isinstance(call.args[0], ast.Constant)}
        assert 'params_file' in declared_names
        assert 'for name, topic in INPUT_TOPIC_ARGUMENTS.items()' in text
        assert 'large_data_environment()' in text
    assert 'namespace' in set(re.findall(r"DeclareLaunchArgument\('(\w+)'", completion))
    assert "goal_state='active',\n" in replay and 'entities=[record, play]' in replay


def test_launch_support_overrides_remappings_and_rviz_namespace():
    from cspn_ros.launch_support import (INPUT_TOPIC_ARGUMENTS, given_overrides,
                                         input_remappings, rviz_config_text)
    assert given_overrides({'device': '', 'checkpoint': 'classical'}) == {
        'checkpoint': 'classical'}
    values = {**INPUT_TOPIC_ARGUMENTS, 'image': '/camera/color/image_raw',
              'tof_depth': '/tof/depth/image_raw'}
    assert input_remappings(values) == [('image', '/camera/color/image_raw'),
                                        ('tof/depth', '/tof/depth/image_raw')]
    template = (ROOT / 'config' / 'cspn.rviz').read_text()
    config = yaml.safe_load(rviz_config_text(template, 'front/', 'front_camera_optical'))
    manager = config['Visualization Manager']
    assert {d['Topic']['Value'] for d in manager['Displays']} == {
        '/front/image', '/front/depth', '/front/depth/colorized', '/front/depth/points'}
    assert manager['Global Options']['Fixed Frame'] == 'front_camera_optical'
    root = yaml.safe_load(rviz_config_text(template, '', 'camera_optical'))
    assert root == yaml.safe_load(template)


@pytest.mark.parametrize('name', ['multi_camera.yaml', 'two_lidars.yaml'])
def test_rig_parameter_files_start_a_node_that_declares_every_key(ros_domain, name):
    """config/multi_camera.yaml and config/two_lidars.yaml (over completion.yaml) configure a
    completion_node in-process, which then declares every key they set (the per-sensor poses
    included) and takes their extrinsics."""
    from cspn_ros.nodes.completion_node import CompletionNode
    parameters = yaml.safe_load((ROOT / 'config' / name).read_text())['/**']['ros__parameters']
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain)
    overrides = [Parameter(key, value=value) for key, value in parameters.items()]
    node = CompletionNode(context=context, parameter_overrides=[
        *overrides, Parameter('checkpoint', value='classical'),
        Parameter('extrinsic.from_tf', value=False)])
    try:
        assert set(parameters) <= declared(node)
        cameras = parameters.get('cameras', [''])
        assert list(node.core.channels) == cameras
        assert len(node.core.channels[cameras[0]].depth_keys) == len(parameters.get('lidars',
                                                                                  ['']))
        for key, value in parameters.items():
            assert node.get_parameter(key).value == value, key
        if name == 'multi_camera.yaml':  # camera0 of the synthetic ring is the scene's camera
            from cspn_ros.data.synthetic import SyntheticScene
            T = node.core._extrinsic.for_frames('camera0_optical', 'lidar', ('camera0', ''))
            np.testing.assert_allclose(T, SyntheticScene(width=32, height=24).T_cam_from_lidar,
                                       atol=1e-5)
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_multi_camera_launch_helpers(tmp_path):
    from cspn_ros.launch_support import camera_remappings, parameter_file_cameras
    assert parameter_file_cameras(str(ROOT / 'config' / 'multi_camera.yaml')) == [
        f'camera{k}' for k in range(6)]
    assert parameter_file_cameras(str(ROOT / 'config' / 'completion.yaml')) == []
    assert camera_remappings(['front', 'back'], '/{camera}/image_raw', '') == [
        ('front/image', '/front/image_raw'), ('back/image', '/back/image_raw')]
    assert camera_remappings(['front'], '', '') == []
