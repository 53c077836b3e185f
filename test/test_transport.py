"""The shipped Fast DDS profile for MB-sized messages: well-formed, opt-out, and carrying real
multi-MB messages between processes."""
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from sensor_msgs.msg import Image, PointCloud2

from cspn_ros.core.conversions import image_to_depth, pointcloud2_to_xyz
from cspn_ros.nodes.transport import LARGE_DATA_PROFILE, large_data_environment

NS = {'dds': 'http://www.eprosima.com'}


def test_profile_is_a_default_participant_profile_with_large_shared_memory_segments():
    root = ET.parse(LARGE_DATA_PROFILE).getroot()
    participant = root.find('dds:profiles/dds:participant', NS)
    assert participant.get('is_default_profile') == 'true'
    transports = {d.findtext('dds:transport_id', namespaces=NS): d for d in
                  root.findall('dds:profiles/dds:transport_descriptors/dds:transport_descriptor',
                               NS)}
    used = [t.text for t in participant.findall('dds:rtps/dds:userTransports/dds:transport_id',
                                                  NS)]
    assert used and set(used) <= set(transports)
    shm = [d for d in transports.values() if d.findtext('dds:type', namespaces=NS) == 'SHM']
    assert int(shm[0].findtext('dds:segment_size', namespaces=NS)) >= 8 * 2**20


def test_environment_sets_the_profile_unless_the_user_has_one():
    assert large_data_environment({})['FASTDDS_DEFAULT_PROFILES_FILE'] == str(LARGE_DATA_PROFILE)
    mine = {'FASTRTPS_DEFAULT_PROFILES_FILE': '/etc/my.xml'}
    assert large_data_environment(mine) == mine


@pytest.fixture
def large_data_transport(monkeypatch):
    """This test's processes (and its in-process node) use the shipped profile."""
    for name, value in large_data_environment({}).items():
        monkeypatch.setenv(name, value)


def test_multi_megabyte_messages_cross_processes_intact(large_data_transport, start_node,
                                                        ros_node):
    start_node('synthetic_source_node', rate=5.0, width=640, height=480, lidar_beams=64,
               publish_tof=False)
    truth = ros_node.inbox(Image, 'ground_truth/depth')
    points = ros_node.inbox(PointCloud2, 'points')
    depth_msg = truth.wait_for(timeout=30.0)
    cloud_msg = points.wait_for(timeout=30.0)
    assert depth_msg is not None and cloud_msg is not None
    assert len(depth_msg.data) == 640 * 480 * 4  # 1.2 MB
    assert len(cloud_msg.data) > 1_000_000
    assert (image_to_depth(depth_msg) > 0).mean() > 0.5
    assert np.isfinite(pointcloud2_to_xyz(cloud_msg)).all()
