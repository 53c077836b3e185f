"""Sensor-agnostic procedural batches (data.procedural) and training on them end to end."""
import math

import numpy as np
import pytest
import torch

from cspn_ros.data import procedural
from cspn_ros.data.procedural import PATTERNS, ProceduralBatches
from cspn_ros.data.procedural_scene import SceneSampler, cast


def test_batches_are_seeded_shaped_and_metric():
    source = ProceduralBatches(steps=2, batch_size=3, height=48, width=64, seed=5)
    batch = source.batch(0, 1)
    again = ProceduralBatches(steps=2, batch_size=3, height=48, width=64, seed=5).batch(0, 1)
    other = source.batch(1, 1)
    assert batch['rgb'].shape == (3, 3, 48, 64) and batch['rgb'].dtype == torch.float32
    assert batch['sparse'].shape == batch['target'].shape == (3, 1, 48, 64)
    for key in batch:
        torch.testing.assert_close(batch[key], again[key], rtol=0, atol=0)
    assert not torch.equal(batch['target'], other['target'])
    assert 0 <= float(batch['rgb'].min()) and float(batch['rgb'].max()) <= 1
    assert float(batch['target'].min()) >= 0 and float(batch['target'].max()) < 400
    assert float(batch['sparse'].min()) >= 0
    assert len(list(source)) == 2


@pytest.mark.parametrize('pattern', sorted(PATTERNS))
def test_every_sensor_pattern_measures_the_scene(pattern):
    batch = ProceduralBatches(steps=1, batch_size=4, height=40, width=56, seed=11,
                              patterns={pattern: 1.0}).batch(0, 0)
    sparse, target = batch['sparse'], batch['target']
    counts = (sparse > 0).flatten(1).sum(1)
    assert int(counts.max()) > 0, f'{pattern}: no sample has a single measurement'
    both = (sparse > 0) & (target > 0)
    # Noise, parallax and grazing hits aside, most measurements agree with the true depth.
    close = (sparse[both] - target[both]).abs() <= 0.1 * target[both] + 0.1
    assert float(close.float().mean()) > 0.6


def test_pattern_weights_replace_the_defaults_and_are_checked():
    weights = procedural.parse_pattern_weights('rows=0.5, tof=0')
    assert 'tof' not in weights and sum(weights.values()) == pytest.approx(1.0)
    assert weights['rows'] / weights['spinning'] == pytest.approx(0.5 / PATTERNS['spinning'])
    for bad in ('laser=1', 'rows', 'rows=-1'):
        with pytest.raises(ValueError):
            procedural.parse_pattern_weights(bad)
    with pytest.raises(ValueError):
        ProceduralBatches(steps=1, batch_size=1, height=8, width=8, patterns={'rows': 0.0})
    # rows only: the measured rows are dense (a random pattern touches rows sparsely)
    batch = ProceduralBatches(steps=1, batch_size=2, height=40, width=56, seed=3,
                              patterns={'rows': 1.0}).batch(0, 0)
    measured = batch['sparse'][:, 0] > 0
    rows = measured.any(-1)
    assert float(measured.float().sum(-1)[rows].mean()) > 0.5 * 56


def test_cast_hits_a_sphere_and_a_plane_at_their_analytic_depths():
    source = ProceduralBatches(steps=1, batch_size=1, height=8, width=8)
    sampler = SceneSampler(np.random.default_rng(0), textures=1)
    scene = sampler.pack([{'boxes': [], 'spheres': [([0.0, 0.0, 10.0], 2.0)], 'cylinders': [],
                           'planes': [(np.array([0.0, -1.0, 0.0]), -1.5)], 'height': 1.5,
                           'margin': 0.3}], torch.device('cpu'))
    rays = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.5, 1.0], [0.0, -0.5, 1.0]]])
    t, index, normal = cast(scene, torch.zeros(1, 3), rays)
    assert float(t[0, 0]) == pytest.approx(8.0, abs=1e-4)        # sphere front at z = 8
    assert float(t[0, 1]) == pytest.approx(3.0, abs=1e-4)        # floor y = 1.5 at z = 3
    assert math.isinf(float(t[0, 2]))                            # sky
    torch.testing.assert_close(normal[0, 0], torch.tensor([0.0, 0.0, -1.0]))
    assert source.steps == 1


def test_training_node_trains_on_procedural_batches(tmp_path):
    from cspn_ros.model.completer import DepthCompleter
    from cspn_ros.nodes.training_node import main
    config = ('{"width": 8, "steps": 2, "initial_fill": "blend", "residual": "log", '
              '"affinity": "convex"}')
    code = main(['--procedural', '2', '--procedural-val', '1', '--batch-size', '2',
                 '--crop', '32x48', '--epochs', '1', '--out', str(tmp_path), '--config', config,
                 '--depth-loss', 'scaled', '--device', 'cpu', '--no-progress'])
    assert code == 0
    completer = DepthCompleter.from_checkpoint(tmp_path / 'best.safetensors')
    assert completer.config.initial_fill == 'blend' and completer.config.affinity == 'convex'



def test_bag_batches_are_mixed_into_procedural_ones_by_a_seeded_share(tmp_path):
    from cspn_ros.data.bag_arguments import frames_from_args
    from cspn_ros.data.synthetic_bag import write_synthetic_bag
    from cspn_ros.nodes.training_node import bag_sets, build_parser, main, procedural_sets
    from cspn_ros.train.batching import MixedBatches
    bag = write_synthetic_bag(tmp_path / 'bag', 'mcap', num_frames=3, depth_source='lidar',
                              width=96, height=72, lidar_beams=16, seed=3)
    args = build_parser().parse_args(['--procedural', '12', '--bag', str(bag), '--crop', '32x48',
                                      '--batch-size', '2', '--out', str(tmp_path / 'run')])
    sources = frames_from_args(args, args.bag, ground_truth=args.gt_topic)
    try:
        samples, val_set = bag_sets(args, sources)
        assert val_set is None and len(samples) == 3  # mixed runs train on every bag frame
        procedural, _ = procedural_sets(args)

        def epoch_batches(share):
            mixed = MixedBatches(procedural, samples, share, 2, seed=1)
            mixed.set_epoch(1)
            return mixed, list(mixed)

        mixed, batches = epoch_batches(0.5)
        from_bags = [mixed.takes_samples(step) for step in range(12)]
        assert 0 < sum(from_bags) < 12 and len(batches) == 12
        _, again = epoch_batches(0.5)
        for step, (batch, repeat) in enumerate(zip(batches, again)):
            assert sorted(batch) == ['rgb', 'sparse', 'target']
            assert batch['rgb'].shape == (2, 3, 32, 48) and batch['target'].shape == (2, 1, 32, 48)
            for key in batch:  # a pure function of (seed, epoch, step)
                torch.testing.assert_close(batch[key], repeat[key], rtol=0, atol=0)
            made_here = torch.equal(batch['target'], procedural.batch(1, step)['target'])
            assert made_here != from_bags[step]
        assert all(torch.equal(b['target'], procedural.batch(1, k)['target'])
                   for k, b in enumerate(epoch_batches(0.0)[1]))
        assert not any(torch.equal(b['target'], procedural.batch(1, k)['target'])
                       for k, b in enumerate(epoch_batches(1.0)[1]))
        with pytest.raises(ValueError, match='share'):
            MixedBatches(procedural, samples, 1.5, 2)
    finally:
        for frames, _ in sources.values():
            frames.close()
    code = main(['--procedural', '2', '--procedural-val', '1', '--bag', str(bag),
                 '--bag-share', '0.5', '--batch-size', '2', '--crop', '32x48', '--epochs', '1',
                 '--out', str(tmp_path / 'run'), '--config', '{"width": 8, "steps": 2}',
                 '--device', 'cpu', '--no-progress'])
    assert code == 0 and (tmp_path / 'run' / 'best.safetensors').is_file()

def test_jpeg_artefacts_change_some_images_a_little():
    rgb = ProceduralBatches(steps=1, batch_size=6, height=40, width=56, seed=2).batch(0, 0)['rgb']
    rng = np.random.default_rng(0)
    compressed = procedural._jpeg(rng, rgb, share=1.0)
    difference = (compressed - rgb).abs()
    assert compressed.shape == rgb.shape and compressed.dtype == rgb.dtype
    assert float(difference.max()) > 0          # every image went through the codec
    assert float(difference.mean()) < 0.05      # and still looks like itself
    torch.testing.assert_close(procedural._jpeg(rng, rgb, share=0.0), rgb, rtol=0, atol=0)
