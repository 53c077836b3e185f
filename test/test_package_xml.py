"""package.xml: every dependency key resolves with rosdep on Jazzy and Kilted, and every module
the package imports is declared (or is one of the pip-only libraries README's install section
names).

The keys are checked against the rosdistro snapshot in ../shared/data/rosdistro (its README.txt
says how a key resolves); those tests skip where ../shared is absent.
"""
from __future__ import annotations

import ast
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ROSDISTRO = ROOT.parent / 'shared' / 'data' / 'rosdistro'
DISTROS = ('jazzy', 'kilted')
DEPEND_TAGS = ('depend', 'build_depend', 'exec_depend', 'test_depend', 'buildtool_depend')
#: Imported module -> rosdep key, where they differ (ROS packages import under their own name).
MODULE_KEYS = {'torch': 'python3-torch', 'numpy': 'python3-numpy', 'cv2': 'python3-opencv',
               'yaml': 'python3-yaml', 'tqdm': 'python3-tqdm', 'matplotlib': 'python3-matplotlib',
               'h5py': 'python3-h5py', 'rosbags': 'python3-rosbags-pip',
               'onnxruntime': 'python3-onnxruntime-pip', 'pytest': 'python3-pytest',
               'tf2_ros': 'tf2_ros_py'}
#: Imported modules without a rosdep key (README "Install" says how to get them): safetensors
#: and onnx from pip; triton comes with the CUDA build of torch and is imported only on CUDA.
PIP_ONLY = {'safetensors', 'onnx', 'triton'}


def package_keys() -> dict[str, str]:
    """rosdep key -> tag of every dependency in package.xml."""
    root = ElementTree.parse(ROOT / 'package.xml').getroot()
    return {element.text.strip(): element.tag for tag in DEPEND_TAGS
            for element in root.iter(tag)}


def released_packages(distro: str) -> tuple[set[str], list[str]]:
    """(ROS packages released in distro, its Ubuntu releases) from distribution.yaml."""
    data = yaml.safe_load((ROSDISTRO / distro / 'distribution.yaml').read_text())
    packages = set()
    for name, repository in data['repositories'].items():
        release = repository.get('release')
        if release is not None and release.get('version'):
            packages.update(release.get('packages', [name]))
    return packages, data['release_platforms']['ubuntu']


def rosdep_rules() -> dict:
    rules: dict = {}
    for path in sorted((ROSDISTRO / 'rosdep').glob('*.yaml')):
        rules.update(yaml.safe_load(path.read_text()))
    return rules


def resolves_on_ubuntu(rule: dict, release: str) -> bool:
    """Whether a rosdep rule installs something on Ubuntu `release` (apt list or a pip/apt
    installer entry, per release or for all of them)."""
    entry = rule.get('ubuntu', rule.get('*'))
    if isinstance(entry, dict) and not ({'pip', 'apt', 'source'} & set(entry)):
        entry = entry.get(release, entry.get('*'))
    return bool(entry)


@pytest.mark.skipif(not ROSDISTRO.is_dir(), reason='../shared/data/rosdistro is absent')
@pytest.mark.parametrize('distro', DISTROS)
def test_every_key_resolves_with_rosdep(distro):
    packages, ubuntu_releases = released_packages(distro)
    rules = rosdep_rules()
    for release in ubuntu_releases:
        unresolved = sorted(key for key in package_keys() if key not in packages and not (
            key in rules and resolves_on_ubuntu(rules[key], release)))
        assert not unresolved, f'{distro} (Ubuntu {release}): rosdep cannot resolve {unresolved}'


@pytest.mark.skipif(not ROSDISTRO.is_dir(), reason='../shared/data/rosdistro is absent')
def test_the_resolver_rejects_the_keys_rosdep_rejects():
    """The keys issue 15 found failing, and a key with a null rule for the release."""
    packages, _ = released_packages('jazzy')
    rules = rosdep_rules()
    for key in ('python3-torch-pip', 'python3-safetensors-pip', 'python3-onnx-pip'):
        assert key not in packages and key not in rules
    assert not resolves_on_ubuntu(rules['python3-torch'], 'focal')
    assert resolves_on_ubuntu(rules['python3-torch'], 'noble')


def imported_modules() -> set[str]:
    """Top-level modules imported anywhere in cspn_ros/ and launch/ (lazy imports included)."""
    modules = set()
    for path in [*(ROOT / 'cspn_ros').rglob('*.py'), *(ROOT / 'launch').glob('*.py')]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split('.')[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split('.')[0])
    return modules - set(sys.stdlib_module_names) - {'cspn_ros', '__future__'}


def test_every_imported_module_is_declared_or_pip_only():
    keys = package_keys()
    undeclared = sorted(module for module in imported_modules() - PIP_ONLY
                        if MODULE_KEYS.get(module, module) not in keys)
    assert not undeclared, f'imported but not in package.xml: {undeclared}'
    readme = (ROOT / 'README.md').read_text()
    assert all(f'`{module}`' in readme for module in PIP_ONLY - {'triton'})


def test_every_ros_package_declared_is_used():
    """A ROS message/library package in package.xml that nothing imports is a stale key
    (geometry_msgs was one); tools started by launch files are used without an import."""
    started_by_launch = {'launch', 'launch_ros', 'rviz2', 'ros2bag'}
    ros_keys = {key for key, tag in package_keys().items()
                if not key.startswith('python3-') and tag == 'exec_depend'}
    used = {MODULE_KEYS.get(module, module) for module in imported_modules()}
    assert ros_keys - used - started_by_launch == set()
