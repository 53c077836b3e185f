"""`colcon build` and `colcon test` on the package, as a ROS 2 user runs them (colcon from PyPI here)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLCON = Path(sys.executable).with_name('colcon')
EXECUTABLES = ('completion_node', 'synthetic_source_node', 'training_node', 'evaluate')

pytestmark = pytest.mark.skipif(not COLCON.exists(), reason='colcon is not installed next to python')


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """A fresh colcon workspace whose src/ links to this repository, built once."""
    ws = tmp_path_factory.mktemp('ws')
    (ws / 'src').mkdir()
    (ws / 'src' / 'cspn_ros').symlink_to(ROOT)
    env = dict(os.environ, PATH=f'{COLCON.parent}{os.pathsep}{os.environ["PATH"]}')
    result = subprocess.run([str(COLCON), 'build', '--packages-select', 'cspn_ros'], cwd=ws,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    yield ws, env
    shutil.rmtree(ws / 'build', ignore_errors=True)


def test_build_installs_executables_where_ros2_run_finds_them(workspace):
    ws, _ = workspace
    lib = ws / 'install' / 'cspn_ros' / 'lib' / 'cspn_ros'
    for name in EXECUTABLES:
        assert os.access(lib / name, os.X_OK), f'{name} missing in {lib}'


def test_build_installs_share_files_and_ament_index(workspace):
    ws, _ = workspace
    share = ws / 'install' / 'cspn_ros' / 'share'
    assert (share / 'ament_index' / 'resource_index' / 'packages' / 'cspn_ros').exists()
    for relative in ('package.xml', 'launch/completion.launch.py', 'launch/demo.launch.py',
                     'config/completion.yaml', 'config/cspn.rviz'):
        assert (share / 'cspn_ros' / relative).is_file(), relative


def test_installed_package_imports_from_the_install_space(workspace):
    ws, env = workspace
    site = next((ws / 'install' / 'cspn_ros' / 'lib').glob('python3*/site-packages'))
    code = 'import cspn_ros, cspn_ros.config; print(cspn_ros.__file__)'
    result = subprocess.run([sys.executable, '-c', code], cwd=ws, capture_output=True, text=True,
                            env=dict(env, PYTHONPATH=str(site)), timeout=60)
    assert result.returncode == 0, result.stderr
    assert str(site) in result.stdout


def test_colcon_test_runs_pytest_on_the_package(workspace):
    ws, env = workspace
    result = subprocess.run([str(COLCON), 'test', '--packages-select', 'cspn_ros',
                             '--pytest-args', 'test/test_config.py'],
                            cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = subprocess.run([str(COLCON), 'test-result', '--all'], cwd=ws, env=env,
                             capture_output=True, text=True, timeout=60)
    assert ' 0 errors, 0 failures' in summary.stdout and ' 0 tests' not in summary.stdout, \
        summary.stdout
