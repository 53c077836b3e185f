"""Lazy paired-frame reading from synthetic rosbag2 files (sqlite3 and mcap)."""
import pickle
import shutil

import numpy as np
import pytest

from cspn_ros.core.pipeline import CompletionPipeline
from cspn_ros.core.projection import project_to_sparse_depth, transform_from_translation_quaternion
from cspn_ros.data.bags import (BagError, BagFrames, BagTopics, BagTrainingSamples, FrameRef,
                                MessageRef, SupervisionOptions, header_stamp_ns, holdout_split)
from cspn_ros.data.synthetic import (DEFAULT_LIDAR_ROTATION, DEFAULT_LIDAR_TRANSLATION,
                                     SyntheticScene)
from cspn_ros.data.synthetic_bag import DEFAULT_TOPICS, write_synthetic_bag

SCENE = dict(width=64, height=48, lidar_beams=16, tof_width=32, tof_height=24)
FRAMES = 4
T_CAM_FROM_LIDAR = transform_from_translation_quaternion(DEFAULT_LIDAR_TRANSLATION,
                                                         DEFAULT_LIDAR_ROTATION)


@pytest.fixture(scope='module', params=['sqlite3', 'mcap'])
def bag(request, tmp_path_factory):
    seed = int(np.random.default_rng().integers(1000))
    path = write_synthetic_bag(tmp_path_factory.mktemp(request.param) / 'bag', request.param,
                               num_frames=FRAMES, seed=seed, **SCENE)
    return path, seed


def test_topics_default_to_the_recorded_ones():
    topics = BagTopics()
    assert (topics.image, topics.camera_info, topics.points, topics.tof_depth,
            topics.tof_camera_info) == tuple(DEFAULT_TOPICS[k] for k in (
                'image', 'camera_info', 'points', 'tof_depth', 'tof_camera_info'))


def test_frames_are_paired_indexed_lazily_and_decoded_like_the_scene(bag):
    path, seed = bag
    frames = BagFrames([path], BagTopics(ground_truth=DEFAULT_TOPICS['ground_truth']))
    scene = SyntheticScene(seed=seed, **SCENE)
    assert len(frames) == FRAMES
    assert frames.matcher_stats[0]['matched'] == FRAMES
    pipeline = CompletionPipeline(None, T_cam_from_sensor=T_CAM_FROM_LIDAR)
    for index in np.random.default_rng().permutation(FRAMES):
        truth = scene.frame(int(index))
        ref = frames.frames[index]
        # The index keeps only numbers: where the messages are, never their data.
        assert isinstance(ref, FrameRef) and ref.stamp_ns == truth.stamp_ns
        assert all(isinstance(m, MessageRef) and m.stamp_ns == truth.stamp_ns
                   for m in ref.messages.values())
        messages = frames.read(int(index))
        inputs = frames.prepare(pipeline, messages)
        np.testing.assert_array_equal(inputs.rgb, truth.rgb)
        expected = project_to_sparse_depth(truth.lidar_points, T_CAM_FROM_LIDAR, truth.camera,
                                           min_depth=pipeline.min_depth)
        np.testing.assert_array_equal(inputs.sparse, expected)
        np.testing.assert_array_equal(frames.ground_truth(messages, inputs.sparse.shape),
                                      truth.depth)


def test_prepare_equals_the_pipeline_on_directly_read_messages(bag):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore
    path, _ = bag
    pipeline = CompletionPipeline(None, T_cam_from_sensor=T_CAM_FROM_LIDAR)
    frames = BagFrames([path])
    by_stamp = {}
    with AnyReader([path], default_typestore=get_typestore(Stores.LATEST)) as reader:
        for connection, _, raw in reader.messages():
            msg = reader.deserialize(raw, connection.msgtype)
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            assert header_stamp_ns(raw) == stamp
            by_stamp.setdefault(stamp, {})[connection.topic] = msg
    for index, ref in enumerate(frames.frames):
        direct = by_stamp[ref.stamp_ns]
        expected = pipeline.prepare(direct['/image'], direct['/camera_info'], direct['/points'])
        got = frames.prepare(pipeline, frames.read(index))
        np.testing.assert_array_equal(got.rgb, expected.rgb)
        np.testing.assert_array_equal(got.sparse, expected.sparse)
    # A copy sent to a DataLoader worker opens its own reader.
    clone = pickle.loads(pickle.dumps(frames))
    np.testing.assert_array_equal(frames.prepare(pipeline, clone.read(1)).sparse,
                                  frames.prepare(pipeline, frames.read(1)).sparse)
    frames.close()


def test_tof_frames_and_supervision_targets(tmp_path):
    seed = int(np.random.default_rng().integers(1000))
    scene = dict(SCENE, scene='indoor', seed=seed)
    path = write_synthetic_bag(tmp_path / 'tof', 'sqlite3', num_frames=3, depth_source='tof',
                               tof_encoding='16UC1', **scene)
    frames = BagFrames([path], depth_source='tof')
    assert frames.paired_topics == ('/image', '/camera_info', '/tof/depth', '/tof/camera_info')
    pipeline = CompletionPipeline(None, depth_source='tof',
                                  T_cam_from_sensor=SyntheticScene(**scene).T_cam_from_tof)
    samples = BagTrainingSamples(frames, pipeline, SupervisionOptions('tof', tof_input_points=50))
    sample = samples[2]
    registered = frames.prepare(pipeline, frames.read(2)).sparse
    assert np.count_nonzero(registered) > 100
    np.testing.assert_array_equal(sample['target'], registered)
    kept = sample['sparse'] > 0
    assert 45 <= kept.sum() <= 55
    np.testing.assert_array_equal(sample['sparse'][kept], registered[kept])
    with pytest.raises(ValueError, match="needs depth_source 'lidar'"):
        BagTrainingSamples(frames, pipeline, SupervisionOptions('lidar-holdout'))


def test_holdout_split_partitions_the_points():
    rng = np.random.default_rng()
    sparse = np.where(rng.random((30, 40)) < 0.3, rng.uniform(1, 50, (30, 40)), 0)
    sparse = sparse.astype(np.float32)
    kept, held = holdout_split(sparse, 0.25, np.random.default_rng(7))
    assert not np.any((kept > 0) & (held > 0))
    np.testing.assert_array_equal(kept + held, sparse)
    assert np.count_nonzero(held) == round(0.25 * np.count_nonzero(sparse))
    again, _ = holdout_split(sparse, 0.25, np.random.default_rng(7))
    np.testing.assert_array_equal(again, kept)


def test_missing_topic_lists_what_the_bag_has(bag):
    path, _ = bag
    with pytest.raises(BagError) as error:
        BagFrames([path], BagTopics(points='/velodyne_points'))
    text = str(error.value)
    assert '/velodyne_points' in text and str(path) in text
    assert '/points [sensor_msgs/msg/PointCloud2]' in text and '/image' in text


def test_photometric_without_odometry_says_what_is_needed(bag):
    path, _ = bag
    frames = BagFrames([path])
    with pytest.raises(BagError, match='Odometry'):
        BagTrainingSamples(frames, CompletionPipeline(None),
                           SupervisionOptions('photometric'))


def test_corrupt_bag_gives_an_error_naming_the_bag(bag, tmp_path):
    path, _ = bag
    copy = shutil.copytree(path, tmp_path / 'corrupt')
    data_file = next(f for f in copy.iterdir() if f.suffix in ('.db3', '.mcap'))
    data = data_file.read_bytes()
    data_file.write_bytes(data[:len(data) // 2])  # a recording cut off mid-write
    with pytest.raises(BagError, match=str(copy)):
        BagFrames([copy])
    with pytest.raises(BagError, match='no bag'):
        BagFrames([])
