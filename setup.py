"""ament_python package cspn_ros: `colcon build` installs it; `pip install -e .` does too."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'cspn_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'bench']),
    package_data={PACKAGE: ['weights/*.safetensors', 'fastdds_large_data.xml']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.launch.py')),
        (f'share/{PACKAGE}/config', glob('config/*.yaml') + glob('config/*.rviz')),
    ],
    install_requires=['setuptools'],
    extras_require={'test': ['pytest']},
    zip_safe=False,
    maintainer='cspn_ros developers',
    maintainer_email='cspn-ros@example.com',
    description='Real-time depth completion (CSPN family) for ROS 2',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'completion_node = cspn_ros.nodes.completion_node:main',
            'lifecycle_completion_node = cspn_ros.nodes.lifecycle_completion_node:main',
            'synthetic_source_node = cspn_ros.nodes.synthetic_source_node:main',
            'training_node = cspn_ros.nodes.training_node:main',
            'evaluate = cspn_ros.nodes.evaluate:main',
        ],
    },
)
