"""Lazy paired-frame reading from synthetic rosbag2 files (sqlite3 and mcap)."""
import argparse
import pickle
import shutil

import numpy as np
import pytest

from cspn_ros.core.occlusion import OcclusionFilter
from cspn_ros.core.pipeline import CompletionPipeline
from cspn_ros.core.projection import (project_to_sparse_depth, quaternion_from_rotation,
                                      register_depth, transform_from_translation_quaternion)
from cspn_ros.core.topics import BAG_TOPICS, FRAME_IDS, TF_STATIC_TOPIC, TF_TOPIC
from cspn_ros.data.bag_arguments import add_bag_arguments, frames_from_args
from cspn_ros.data.bag_frames import BagFrames
from cspn_ros.data.bag_reader import (BagError, BagTopics, FrameRef, MessageRef, chain_transform,
                                      header_stamp_ns)
from cspn_ros.data.bag_samples import (BagTrainingSamples, ConcatenatedSamples,
                                       SupervisionOptions, holdout_split)
from cspn_ros.data.synthetic import (DEFAULT_LIDAR_ROTATION, DEFAULT_LIDAR_TRANSLATION,
                                     SyntheticScene)
from cspn_ros.data.synthetic_bag import write_synthetic_bag

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
            topics.tof_camera_info) == tuple(BAG_TOPICS[k] for k in (
                'image', 'camera_info', 'points', 'tof_depth', 'tof_camera_info'))


def test_frames_are_paired_indexed_lazily_and_decoded_like_the_scene(bag):
    path, seed = bag
    frames = BagFrames([path], BagTopics(ground_truth=BAG_TOPICS['ground_truth']))
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
            if connection.topic == TF_STATIC_TOPIC:  # TFMessage: no header of its own
                continue
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


def test_validation_takes_the_last_frames_of_every_bag(bag, tmp_path):
    path, seed = bag
    short = write_synthetic_bag(tmp_path / 'short', 'mcap', num_frames=1, seed=seed + 1, **SCENE)
    other = write_synthetic_bag(tmp_path / 'other', 'mcap', num_frames=FRAMES + 2, seed=seed + 2,
                                **SCENE)
    frames = BagFrames([path, short, other])
    per_bag = [[i for i, f in enumerate(frames.frames) if f.bag_index == b] for b in range(3)]
    assert [len(indices) for indices in per_bag] == [FRAMES, 1, FRAMES + 2]
    training, validation = frames.validation_split(0.25)
    # ceil(4 / 4) = 1 and ceil(6 / 4) = 2 last frames; a one-frame bag only trains.
    assert validation == per_bag[0][-1:] + per_bag[2][-2:]
    assert sorted(training + validation) == list(range(len(frames)))
    assert frames.validation_split(0.0) == (list(range(len(frames))), [])


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


# --- extrinsics from tf, flags, mixed sensors --------------------------------------------------

def _random_transform(rng):
    return transform_from_translation_quaternion(rng.uniform(-1, 1, 3), rng.normal(size=4))


def _bag_args(*argv):
    parser = argparse.ArgumentParser()
    add_bag_arguments(parser, ('lidar', 'tof', 'both'))
    return parser.parse_args(list(argv))


def test_quaternion_from_rotation_inverts_the_rotation_matrix():
    rng = np.random.default_rng()
    for _ in range(200):
        T = _random_transform(rng)
        q = quaternion_from_rotation(T[:3, :3])
        assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(transform_from_translation_quaternion(T[:3, 3], q), T,
                                   atol=1e-12)


def test_chain_transform_composes_edges_in_either_direction():
    rng = np.random.default_rng()
    T_base_from_cam, T_base_from_mount, T_mount_from_lidar = (_random_transform(rng)
                                                              for _ in range(3))
    edges = [('base', 'camera', T_base_from_cam), ('base', 'mount', T_base_from_mount),
             ('mount', 'lidar', T_mount_from_lidar), ('base', 'wheel', _random_transform(rng))]
    rng.shuffle(edges)
    reference = np.linalg.inv(T_base_from_cam) @ T_base_from_mount @ T_mount_from_lidar
    np.testing.assert_allclose(chain_transform(edges, 'camera', 'lidar'), reference, atol=1e-12)
    np.testing.assert_allclose(chain_transform(edges, 'lidar', 'camera'),
                               np.linalg.inv(reference), atol=1e-12)
    np.testing.assert_array_equal(chain_transform(edges, 'camera', 'camera'), np.eye(4))
    assert chain_transform(edges, 'camera', 'tof') is None


@pytest.fixture(scope='module')
def rig_bag(tmp_path_factory):
    """A 'both' bag whose sensors sit at fresh random poses (written to /tf_static)."""
    rng = np.random.default_rng()
    lidar_t = np.asarray(DEFAULT_LIDAR_TRANSLATION) + rng.uniform(-0.02, 0.02, 3)
    tof_t = rng.uniform(-0.05, 0.05, 3)
    tof_q = np.r_[rng.uniform(-0.01, 0.01, 3), 1.0]
    scene = dict(SCENE, seed=int(rng.integers(1000)), scene='indoor', lidar_translation=lidar_t,
                 tof_translation=tof_t, tof_rotation=tof_q)
    path = write_synthetic_bag(tmp_path_factory.mktemp('rig') / 'bag', 'sqlite3',
                               num_frames=3, **scene)
    return path, SyntheticScene(**scene)


def test_extrinsics_come_from_tf_static_and_flags_win(rig_bag, caplog):
    path, scene = rig_bag
    sources = frames_from_args(_bag_args('--depth-source', 'both'), [path])
    assert set(sources) == {'lidar', 'tof'}
    np.testing.assert_allclose(sources['lidar'][1]['T_cam_from_sensor'], scene.T_cam_from_lidar,
                               atol=1e-12)
    np.testing.assert_allclose(sources['tof'][1]['T_cam_from_sensor'], scene.T_cam_from_tof,
                               atol=1e-12)
    caplog.set_level('INFO')
    _, options = frames_from_args(_bag_args('--depth-source', 'tof', '--extrinsic-translation',
                                            '0.1', '0.2', '0.3'), [path])['tof']
    expected = np.eye(4)
    expected[:3, 3] = [0.1, 0.2, 0.3]
    np.testing.assert_array_equal(options['T_cam_from_sensor'], expected)
    assert '--extrinsic-translation' in caplog.text
    _, options = frames_from_args(_bag_args('--depth-source', 'tof', '--tof-registered'),
                                  [path])['tof']
    np.testing.assert_array_equal(options['T_cam_from_sensor'], np.eye(4))
    with pytest.raises(ValueError, match='both'):
        frames_from_args(_bag_args('--depth-source', 'both', '--extrinsic-rotation',
                                   '0', '0', '0', '1'), [path])


def _copy_bag(source, target, tf_messages=()):
    """Copy `source` without /tf_static, adding (log time, TFMessage) on /tf."""
    from rosbags.rosbag2 import Reader, Writer
    from rosbags.typesys import Stores, get_typestore
    store = get_typestore(Stores.ROS2_HUMBLE)
    with Reader(source) as reader, Writer(target, version=8) as writer:
        connections = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=store)
                       for c in reader.connections if c.topic != TF_STATIC_TOPIC}
        for connection, log_time, raw in reader.messages():
            if connection.id in connections:
                writer.write(connections[connection.id], log_time, raw)
        if tf_messages:
            tf = writer.add_connection(TF_TOPIC, 'tf2_msgs/msg/TFMessage', typestore=store)
            for log_time, message in tf_messages:
                writer.write(tf, log_time, store.serialize_cdr(message,
                                                               'tf2_msgs/msg/TFMessage'))
    return target


def _tf_message(edges):
    from rosbags.typesys import Stores, get_typestore
    types = get_typestore(Stores.ROS2_HUMBLE).types
    transforms = []
    for parent, child, T in edges:
        q = quaternion_from_rotation(T[:3, :3])
        transforms.append(types['geometry_msgs/msg/TransformStamped'](
            header=types['std_msgs/msg/Header'](
                stamp=types['builtin_interfaces/msg/Time'](sec=0, nanosec=0), frame_id=parent),
            child_frame_id=child, transform=types['geometry_msgs/msg/Transform'](
                translation=types['geometry_msgs/msg/Vector3'](*T[:3, 3]),
                rotation=types['geometry_msgs/msg/Quaternion'](*q))))
    return types['tf2_msgs/msg/TFMessage'](transforms=transforms)


def test_extrinsic_chain_from_the_first_tf_sample_or_a_clear_error(rig_bag, tmp_path):
    path, scene = rig_bag
    rng = np.random.default_rng()
    T_base_from_cam = _random_transform(rng)
    T_base_from_lidar = T_base_from_cam @ scene.T_cam_from_lidar
    camera, lidar = FRAME_IDS['camera'], FRAME_IDS['lidar']
    tf = [(1, _tf_message([('base_link', camera, T_base_from_cam)])),
          (2, _tf_message([('base_link', lidar, T_base_from_lidar)])),
          (3, _tf_message([('base_link', lidar, _random_transform(rng))]))]  # later: ignored
    chained = _copy_bag(path, tmp_path / 'chained', tf)
    _, options = frames_from_args(_bag_args(), [chained])['lidar']
    np.testing.assert_allclose(options['T_cam_from_sensor'], scene.T_cam_from_lidar, atol=1e-9)
    bare = _copy_bag(path, tmp_path / 'bare')
    with pytest.raises(BagError) as error:
        frames_from_args(_bag_args(), [bare])
    text = str(error.value)
    assert all(word in text for word in (str(bare), "'camera_optical' <- 'lidar'", '/tf_static',
                                         '--extrinsic-translation'))
    _, options = frames_from_args(_bag_args('--extrinsic-rotation', '0', '0', '0', '1'),
                                  [bare])['lidar']
    np.testing.assert_array_equal(options['T_cam_from_sensor'], np.eye(4))


def test_both_sources_give_a_lidar_and_a_tof_sample_per_frame_with_dense_targets(rig_bag):
    path, scene = rig_bag
    sources = frames_from_args(_bag_args('--depth-source', 'both'), [path],
                               ground_truth=BAG_TOPICS['ground_truth'])
    assert sources['lidar'][0].paired_topics[2:] == ('/points', '/ground_truth/depth')
    assert sources['tof'][0].paired_topics[2:] == ('/tof/depth', '/tof/camera_info',
                                                   '/ground_truth/depth')
    parts = [BagTrainingSamples(frames, CompletionPipeline(None, **options))
             for frames, options in (sources['lidar'], sources['tof'])]
    samples = ConcatenatedSamples(parts)
    count = len(sources['lidar'][0])
    assert len(samples) == 2 * count == 6
    for index in np.random.default_rng().permutation(count):
        truth = scene.frame(int(index))
        lidar, tof = samples[int(index)], samples[count + int(index)]
        np.testing.assert_array_equal(lidar['sparse'], OcclusionFilter()(project_to_sparse_depth(
            truth.lidar_points, scene.T_cam_from_lidar, truth.camera, min_depth=0.1,
            max_depth=100.0)))  # training sees the node's input: occlusion filter on
        np.testing.assert_array_equal(tof['sparse'], register_depth(
            truth.tof_depth, truth.tof_camera, scene.T_cam_from_tof, truth.camera,
            min_depth=0.1, max_depth=100.0))
        for sample in (lidar, tof):
            np.testing.assert_array_equal(sample['target'], truth.depth)
    samples.set_epoch(3)
    assert [part.epoch for part in parts] == [3, 3]
    with pytest.raises(IndexError):
        samples[6]


def test_both_skips_the_source_a_bag_does_not_record(tmp_path):
    lidar_only = write_synthetic_bag(tmp_path / 'lidar_only', 'sqlite3', num_frames=2,
                                     depth_source='lidar', **SCENE)
    both = write_synthetic_bag(tmp_path / 'both', 'sqlite3', num_frames=3, **SCENE)
    sources = frames_from_args(_bag_args('--depth-source', 'both'), [lidar_only, both])
    assert [p.name for p in sources['lidar'][0].paths] == ['lidar_only', 'both']
    assert [p.name for p in sources['tof'][0].paths] == ['both']
    assert (len(sources['lidar'][0]), len(sources['tof'][0])) == (5, 3)


# --- LiDAR sweeps accumulated with odometry ----------------------------------------------------

def _median_relative_error(depth, truth, where):
    where = where & (truth > 0)
    return float(np.median(np.abs(depth[where].astype(np.float64) - truth[where]) / truth[where]))


def test_accumulated_sweeps_densify_the_holdout_target_with_true_depths(tmp_path):
    # A static street seen from a rig moving 0.6 m per frame; /odom holds the camera poses.
    scene = dict(width=128, height=96, lidar_beams=16, seed=int(np.random.default_rng()
                                                                .integers(1000)))
    path = write_synthetic_bag(tmp_path / 'bag', 'sqlite3', num_frames=5, depth_source='lidar',
                               **scene)
    truth = SyntheticScene(**scene).frame(2)
    frames = BagFrames([path], BagTopics(pose=BAG_TOPICS['odometry']))
    pipeline = CompletionPipeline(None, T_cam_from_sensor=T_CAM_FROM_LIDAR, max_depth=100.0)
    single, accumulated = (
        BagTrainingSamples(frames, pipeline, SupervisionOptions(
            'lidar-holdout', accumulate_sweeps=sweeps), seed=3)[2] for sweeps in (0, 2))
    # The input is the same current sweep minus the same held-out points; only targets grow.
    np.testing.assert_array_equal(accumulated['sparse'], single['sparse'])
    held = single['target'] > 0
    assert np.all(accumulated['target'][held] > 0)
    assert np.all(accumulated['target'][held] <= single['target'][held])  # z-buffer: nearest
    assert not np.any((accumulated['target'] > 0) & (accumulated['sparse'] > 0))
    added = (accumulated['target'] > 0) & ~held
    assert added.sum() > 2 * held.sum()
    # Where valid, the target is the scene's depth (2 cm range noise, occlusion outliers); the
    # pixels the neighbouring sweeps add are right only with the right relative poses.
    assert _median_relative_error(accumulated['target'], truth.depth,
                                  accumulated['target'] > 0) < 0.02
    assert _median_relative_error(accumulated['target'], truth.depth, added) < 0.02


def test_accumulating_sweeps_needs_poses_and_lidar_holdout(bag):
    path, _ = bag
    frames = BagFrames([path])
    with pytest.raises(BagError, match='--pose-topic'):
        BagTrainingSamples(frames, CompletionPipeline(None),
                           SupervisionOptions('lidar-holdout', accumulate_sweeps=1))
    with pytest.raises(ValueError, match="needs supervision 'lidar-holdout'"):
        BagTrainingSamples(BagFrames([path], BagTopics(pose=BAG_TOPICS['odometry'])),
                           CompletionPipeline(None), SupervisionOptions('tof',
                                                                        accumulate_sweeps=1))
