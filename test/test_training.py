"""Augmentation geometry, and the training loop end to end on tiny synthetic bags."""
import numpy as np
import pytest

from cspn_ros.data.augment import Augmenter, crop, hflip, rebin_depth, rescale


def _project(K, points):
    uvw = points @ K.T
    return uvw[:, :2] / uvw[:, 2:]


def _random_sample(rng, height=24, width=32):
    K = np.array([[rng.uniform(20, 40), 0, rng.uniform(10, 20)],
                  [0, rng.uniform(20, 40), rng.uniform(8, 14)], [0, 0, 1]])
    sparse = np.where(rng.random((height, width)) < 0.2,
                      rng.uniform(1, 10, (height, width)), 0).astype(np.float32)
    return {'rgb': rng.integers(0, 256, (height, width, 3), dtype=np.uint8), 'sparse': sparse,
            'target': sparse.copy(), 'K': K}


def test_flip_and_crop_keep_points_on_their_pixels():
    rng = np.random.default_rng()
    sample = _random_sample(rng)
    points = np.column_stack([rng.uniform(-1, 1, 20), rng.uniform(-1, 1, 20),
                              rng.uniform(2, 5, 20)])
    uv = _project(sample['K'], points)
    flipped = hflip(sample)
    mirrored = points * [-1, 1, 1]
    np.testing.assert_allclose(_project(flipped['K'], mirrored)[:, 0], 31 - uv[:, 0])
    np.testing.assert_array_equal(flipped['sparse'][:, ::-1], sample['sparse'])
    top, left = int(rng.integers(0, 8)), int(rng.integers(0, 10))
    cropped = crop(sample, top, left, 16, 20)
    np.testing.assert_allclose(_project(cropped['K'], points), uv - [left, top])
    np.testing.assert_array_equal(cropped['sparse'], sample['sparse'][top:top + 16,
                                                                     left:left + 20])
    with pytest.raises(ValueError, match='does not fit'):
        crop(sample, 10, 0, 20, 20)


def test_rescale_updates_intrinsics_and_rebins_depth_without_interpolation():
    rng = np.random.default_rng()
    sample = _random_sample(rng)
    half = rescale(sample, 0.5)
    assert half['rgb'].shape == (12, 16, 3) and half['sparse'].shape == (12, 16)
    # Pixel-centre convention: pixel (u, v) of the full image is (u+0.5)/2-0.5 in the half one.
    np.testing.assert_allclose(half['K'][:2, :2], sample['K'][:2, :2] * 0.5)
    np.testing.assert_allclose(half['K'][:2, 2], (sample['K'][:2, 2] + 0.5) / 2 - 0.5)
    # Loop reference: each 2x2 block keeps its nearest valid depth.
    for v in range(12):
        for u in range(16):
            block = sample['sparse'][2 * v:2 * v + 2, 2 * u:2 * u + 2]
            expected = block[block > 0].min() if np.any(block > 0) else 0
            assert half['sparse'][v, u] == expected
    assert set(np.unique(half['sparse'])) <= set(np.unique(sample['sparse']))
    double = rebin_depth(sample['sparse'], 48, 64)
    np.testing.assert_array_equal(double[1::2, 1::2], sample['sparse'])
    assert np.count_nonzero(double) == np.count_nonzero(sample['sparse'])


def test_augmenter_is_deterministic_per_generator_state():
    rng = np.random.default_rng()
    sample = _random_sample(rng)
    augment = Augmenter(crop_size=(16, 16), scale_range=(1.0, 1.5), jitter=0.3)
    seed = int(rng.integers(1 << 31))
    first = augment(sample, np.random.default_rng(seed))
    second = augment(sample, np.random.default_rng(seed))
    assert first['rgb'].shape == (16, 16, 3) and first['sparse'].shape == (16, 16)
    for key in ('rgb', 'sparse', 'target', 'K'):
        np.testing.assert_array_equal(first[key], second[key])


# --- training from bags through the training_node CLI ------------------------------------------

import json  # noqa: E402

import torch  # noqa: E402

from cspn_ros.data.synthetic_bag import write_synthetic_bag  # noqa: E402
from cspn_ros.model.checkpoint import load_checkpoint  # noqa: E402
from cspn_ros.model.completer import DepthCompleter  # noqa: E402
from cspn_ros.model.network import CompletionNet  # noqa: E402
from cspn_ros.nodes.training_node import build_parser, training_augmenter  # noqa: E402
from cspn_ros.nodes.training_node import main as training_main  # noqa: E402

TINY = json.dumps({'width': 8, 'steps': 2})
SCENE = dict(width=80, height=60, lidar_beams=16, tof_width=40, tof_height=30)


def _args(bag, out, supervision, *extra, source=None):
    """CLI arguments; the extrinsics come from the bag's /tf_static."""
    source = source or ('tof' if supervision == 'tof' else 'lidar')
    return ['--bag', str(bag), '--out', str(out), '--supervision', supervision,
            '--config', TINY, '--crop', '48x64', '--batch-size', '2', '--epochs', '1',
            '--device', 'cpu', '--depth-source', source, '--no-progress', '--val-fraction', '0.25',
            *extra]


@pytest.fixture(scope='module')
def lidar_bag(tmp_path_factory):
    seed = int(np.random.default_rng().integers(99))
    return write_synthetic_bag(tmp_path_factory.mktemp('lidar') / 'bag', 'mcap', num_frames=4,
                               depth_source='lidar', seed=seed, **SCENE)


@pytest.mark.parametrize('supervision', ['dense', 'lidar-holdout', 'tof'])
def test_training_writes_loadable_checkpoints_and_resumes(supervision, lidar_bag, tmp_path,
                                                          capsys):
    bag = lidar_bag
    if supervision == 'tof':
        bag = write_synthetic_bag(tmp_path / 'tof', 'sqlite3', num_frames=4, depth_source='tof',
                                  scene='indoor', **SCENE)
    out = tmp_path / 'run'
    assert training_main(_args(bag, out, supervision)) == 0
    state, config, meta = load_checkpoint(out / 'last.safetensors')
    assert config.width == 8 and config.steps == 2
    assert meta['step'] == 2 and meta['epoch'] == 1  # 3 training frames, batch 2
    completer = DepthCompleter.from_checkpoint(out / 'best.safetensors')
    rng = np.random.default_rng()
    sparse = np.where(rng.random((48, 64)) < 0.1, rng.uniform(1, 20, (48, 64)), 0)
    depth = completer(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), sparse.astype(np.float32))
    assert depth.shape == (48, 64) and np.all(np.isfinite(depth))
    assert (out / 'last_state.pt').is_file() and any((out / 'tb').iterdir())
    # Resume: weights, optimizer, scheduler and the step count go on from the last checkpoint.
    assert training_main(_args(bag, out, supervision, '--epochs', '2', '--resume')) == 0
    resumed_state, _, resumed_meta = load_checkpoint(out / 'last.safetensors')
    assert resumed_meta['step'] == 4 and resumed_meta['epoch'] == 2
    assert any(not torch.equal(state[k], resumed_state[k]) for k in state)
    saved = torch.load(out / 'last_state.pt', weights_only=True)
    assert saved['step'] == 4 and saved['scheduler']['last_epoch'] == 4
    if supervision == 'dense':  # a truncated state file: a clear error naming the way out
        state_file = out / 'last_state.pt'
        state_file.write_bytes(state_file.read_bytes()[:1000])
        assert training_main(_args(bag, out, supervision, '--epochs', '3', '--resume')) == 1
        error = capsys.readouterr().err
        assert f'cannot resume: {state_file} is corrupt or truncated' in error, error
        assert f'--init {out / "last.safetensors"}' in error and 'Traceback' not in error


def _window_of(part, whole):
    """Whether `part` (h,w) is a window of `whole`."""
    h, w = part.shape
    return any(np.array_equal(part, whole[top:top + h, left:left + w])
               for top in range(whole.shape[0] - h + 1) for left in range(whole.shape[1] - w + 1))


def test_no_flip_keeps_the_sensor_on_its_side_of_the_camera():
    # With --no-flip every training crop is a window of the frame as recorded; by default about
    # half of them are mirrored (a ToF camera right of the colour camera moved to its left).
    rng = np.random.default_rng()
    sample = _random_sample(rng, 20, 24)
    for flag, expect_mirrored in (([], True), (['--no-flip'], False)):
        args = build_parser().parse_args(['--crop', '12x16', *flag])
        augment = training_augmenter(args)
        mirrored = [not _window_of(augment(sample, np.random.default_rng(seed))['sparse'],
                                   sample['sparse']) for seed in rng.integers(1 << 31, size=24)]
        assert any(mirrored) == expect_mirrored


def test_persistent_data_loader_workers_draw_each_epoch_like_the_main_process(lidar_bag,
                                                                             tmp_path):
    # lidar-holdout draws its held-out points and crops per epoch. Worker processes persist
    # across epochs, so the epoch must reach them with every key: two epochs with two workers
    # end on the very weights of two epochs loaded in the main process.
    states = []
    for workers in ('0', '2'):
        out = tmp_path / f'workers{workers}'
        assert training_main(_args(lidar_bag, out, 'lidar-holdout', '--epochs', '2',
                                   '--workers', workers)) == 0
        states.append(load_checkpoint(out / 'last.safetensors')[0])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_frame_rmse_depth_loss_trains_from_the_cli(lidar_bag, tmp_path, capsys):
    out = tmp_path / 'frame_rmse'
    assert training_main(_args(lidar_bag, out, 'dense', '--depth-loss', 'frame_rmse')) == 0
    _assert_trained(out, 2)
    with pytest.raises(SystemExit):
        training_main(_args(lidar_bag, tmp_path / 'x', 'dense', '--depth-loss', 'l3'))
    assert "invalid choice: 'l3'" in capsys.readouterr().err
    bounded = json.dumps({**json.loads(TINY), 'input_bound': 0.25})
    out = tmp_path / 'bounded'
    assert training_main(_args(lidar_bag, out, 'dense', '--depth-loss', 'frame_rmse',
                               '--config', bounded, '--bounded-loss')) == 0
    _assert_trained(out, 2)
    assert training_main(_args(lidar_bag, tmp_path / 'y', 'dense', '--bounded-loss')) == 1
    assert 'bounded_loss needs' in capsys.readouterr().err


def test_training_fails_clearly_without_usable_samples(lidar_bag, tmp_path, capsys):
    # No LiDAR point within [90, 100] m: every frame is skipped -> error, not an empty training.
    assert training_main(_args(lidar_bag, tmp_path / 'a', 'dense', '--min-depth', '90')) == 1
    assert 'all 3 samples were skipped' in capsys.readouterr().err
    assert training_main(_args(lidar_bag, tmp_path / 'b', 'photometric')) == 1
    assert 'Odometry' in capsys.readouterr().err
    assert training_main(_args(lidar_bag, tmp_path / 'c', 'dense', '--gt-topic', '/gt')) == 1
    assert "topic(s) ['/gt'] not in the bag" in capsys.readouterr().err
    assert not (tmp_path / 'a' / 'last.safetensors').exists()


def _assert_trained(out, steps):
    state, _, meta = load_checkpoint(out / 'last.safetensors')
    assert meta['step'] == steps
    assert all(torch.isfinite(value).all() for value in state.values())


def test_photometric_training_on_the_recorded_odometry(lidar_bag, tmp_path, capsys):
    # 3 training frames; only frames 1 and 2 have a neighbour on both sides -> 2 steps of 1.
    out = tmp_path / 'photometric'
    assert training_main(_args(lidar_bag, out, 'photometric', '--pose-topic', '/odom',
                               '--batch-size', '1')) == 0
    _assert_trained(out, 2)
    assert 'skipped samples: 0' in capsys.readouterr().out


def test_both_depth_sources_train_on_lidar_and_tof_samples_of_each_frame(tmp_path, capsys):
    bag = write_synthetic_bag(tmp_path / 'both', 'sqlite3', num_frames=4, scene='indoor',
                              seed=int(np.random.default_rng().integers(99)), **SCENE)
    out = tmp_path / 'run'
    assert training_main(_args(bag, out, 'dense', '--batch-size', '3', source='both')) == 0
    _assert_trained(out, 2)  # 3 frames x 2 sensors = 6 samples, batch 3
    assert 'skipped samples: 0' in capsys.readouterr().out
    assert training_main(_args(bag, tmp_path / 'x', 'lidar-holdout', source='both')) == 1
    assert '--depth-source both trains with supervision' in capsys.readouterr().err


def test_init_fine_tunes_from_a_checkpoint_with_its_config(lidar_bag, tmp_path, capsys):
    # A first run gives a checkpoint; --init starts a new run from its weights and config.
    first = tmp_path / 'first'
    assert training_main(_args(lidar_bag, first, 'dense')) == 0
    start_state, start_config, _ = load_checkpoint(first / 'last.safetensors')
    args = _args(lidar_bag, tmp_path / 'tuned', 'dense', '--lr', '1e-9',
                 '--init', str(first / 'last.safetensors'))
    del args[args.index('--config'):args.index('--config') + 2]  # config from the checkpoint
    assert training_main(args) == 0
    tuned_state, tuned_config, meta = load_checkpoint(tmp_path / 'tuned' / 'last.safetensors')
    assert tuned_config == start_config and meta['step'] == 2  # a fresh run: its own 2 steps
    # A vanishing learning rate keeps the weights (not BatchNorm's running statistics, which
    # training updates) at the start: they came from --init, a run without it differs.
    weights = [name for name, _ in CompletionNet(start_config).named_parameters()]
    for name in weights:
        torch.testing.assert_close(tuned_state[name], start_state[name], rtol=1e-4, atol=1e-6)
    fresh_state, _, _ = load_checkpoint(_fresh_run(lidar_bag, tmp_path / 'fresh'))
    assert any(not torch.allclose(fresh_state[name], start_state[name], rtol=1e-4, atol=1e-6)
               for name in weights)
    other = json.dumps({'width': 16, 'steps': 2})
    assert training_main(_args(lidar_bag, tmp_path / 'x', 'dense', '--config', other,
                               '--init', str(first / 'last.safetensors'))) == 1
    assert 'leave --config out when fine-tuning' in capsys.readouterr().err


def _fresh_run(bag, out):
    """Same run as the --init one, without --init: last.safetensors."""
    assert training_main(_args(bag, out, 'dense', '--lr', '1e-9')) == 0
    return out / 'last.safetensors'


def test_lidar_holdout_trains_with_accumulated_sweeps_given_odometry(lidar_bag, tmp_path, capsys):
    out = tmp_path / 'accumulated'
    assert training_main(_args(lidar_bag, out, 'lidar-holdout', '--accumulate-sweeps', '1',
                               '--pose-topic', '/odom')) == 0
    _assert_trained(out, 2)  # 3 training frames, batch 2
    assert 'skipped samples: 0' in capsys.readouterr().out
    assert training_main(_args(lidar_bag, tmp_path / 'x', 'lidar-holdout',
                               '--accumulate-sweeps', '1')) == 1
    assert 'accumulating 1 neighbouring sweeps needs the relative pose' in capsys.readouterr().err


from cspn_ros.config import ModelConfig  # noqa: E402
from cspn_ros.model.checkpoint import save_checkpoint  # noqa: E402
from cspn_ros.train.losses import confidence_loss, frame_rmse  # noqa: E402
from cspn_ros.train.losses import depth_loss as depth_loss_l1_l2  # noqa: E402
from cspn_ros.train.metrics import compute_metrics  # noqa: E402
from cspn_ros.model.input_bound import bound_by_inputs  # noqa: E402
from cspn_ros.train.batching import collate_samples  # noqa: E402
from cspn_ros.train.trainer import Trainer, TrainingError, TrainOptions  # noqa: E402


def _random_samples(rng, count, height=32, width=48):
    samples = []
    for _ in range(count):
        target = rng.uniform(1, 20, (height, width)).astype(np.float32)
        sparse = np.where(rng.random((height, width)) < 0.1, target, 0).astype(np.float32)
        samples.append({'rgb': rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                        'sparse': sparse, 'target': target,
                        'K': np.array([[40.0, 0, 24], [0, 40, 16], [0, 0, 1]])})
    return samples


def test_trainable_confidence_head_keeps_the_depth_bit_identical(tmp_path):
    rng = np.random.default_rng()
    torch.manual_seed(int(rng.integers(1000)))
    config = ModelConfig(width=8, steps=2, initial_fill='morphological')
    options = TrainOptions(epochs=1, batch_size=2, learning_rate=1e-2, device='cpu',
                           progress=False, trainable='confidence_head', confidence_weight=1.0)
    trainer = Trainer(config, options, _random_samples(rng, 4), None, tmp_path / 'run')
    probe = _random_samples(rng, 1)[0]
    rgb = torch.from_numpy(probe['rgb']).permute(2, 0, 1)[None].float() / 255
    sparse = torch.from_numpy(probe['sparse'])[None, None]

    def outputs():
        trainer.model.eval()
        with torch.no_grad():
            return trainer.model(rgb, sparse)
    before = outputs()
    state_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert trainer.fit()['step'] == 2
    trainer.close()
    after = outputs()
    assert torch.equal(before['depth'], after['depth'])
    assert torch.equal(before['depth_init'], after['depth_init'])
    assert not torch.equal(before['confidence'], after['confidence'])
    state_after = trainer.model.state_dict()
    for name, value in state_before.items():  # parameters and BatchNorm statistics alike
        assert torch.equal(value, state_after[name]) != name.startswith('confidence_head.'), name
    _, _, meta = load_checkpoint(tmp_path / 'run' / 'last.safetensors')
    assert meta['trainable'] == 'confidence_head'


def test_trainer_loss_follows_the_depth_loss_option(tmp_path):
    rng = np.random.default_rng()
    torch.manual_seed(int(rng.integers(1000)))
    batch = collate_samples(_random_samples(rng, 3))[0]
    for depth_loss in ('l1_l2', 'frame_rmse'):
        options = TrainOptions(device='cpu', progress=False, depth_loss=depth_loss,
                               confidence_weight=0.5)
        trainer = Trainer(ModelConfig(width=8, steps=2), options, _random_samples(rng, 1), None,
                          tmp_path / depth_loss)
        outputs = trainer.model(batch['rgb'], batch['sparse'])
        depth, init, target = outputs['depth'], outputs['depth_init'], batch['target']
        measure = frame_rmse if depth_loss == 'frame_rmse' else depth_loss_l1_l2
        expected = (measure(depth, target) + 0.2 * measure(init, target)
                    + 0.5 * confidence_loss(outputs['confidence'], depth, target))
        torch.testing.assert_close(trainer.loss(outputs, batch), expected)
        trainer.close()
    with pytest.raises(TrainingError, match="depth_loss must be one of"):
        Trainer(ModelConfig(width=8, steps=2), TrainOptions(device='cpu', depth_loss='l3'),
                _random_samples(rng, 1), None, tmp_path / 'bad')


def test_bounded_loss_scores_the_depth_the_completer_outputs(tmp_path):
    """bounded_loss: the depth loss and the confidence loss see the depth after the input
    bound (gradients reach the network where it is not clamped); validation scores the
    bounded depth whenever the config has an input bound; without one, bounded_loss is an
    error."""
    rng = np.random.default_rng()
    torch.manual_seed(int(rng.integers(1000)))
    config = ModelConfig(width=8, steps=2, input_bound=0.25)
    batch = collate_samples(_random_samples(rng, 3))[0]
    options = TrainOptions(device='cpu', progress=False, depth_loss='frame_rmse',
                           confidence_weight=0.5, bounded_loss=True)
    val = _random_samples(rng, 2)
    trainer = Trainer(config, options, _random_samples(rng, 1), val, tmp_path / 'bounded')
    outputs = trainer.model(batch['rgb'], batch['sparse'])
    depth, init, target = outputs['depth'], outputs['depth_init'], batch['target']
    bounded = bound_by_inputs(depth, batch['sparse'], 0.25)
    assert not torch.equal(bounded, depth)
    expected = (frame_rmse(bounded, target) + 0.2 * frame_rmse(init, target)
                + 0.5 * confidence_loss(outputs['confidence'], bounded, target))
    loss = trainer.loss(outputs, batch)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in trainer.model.parameters())
    trainer.model.eval()
    validation = trainer.validate()
    with torch.no_grad():
        val_batch = collate_samples(val)[0]
        scored = bound_by_inputs(trainer.model(val_batch['rgb'], val_batch['sparse'])['depth'],
                                 val_batch['sparse'], 0.25)
    rmse = np.mean([compute_metrics(p, t)['rmse'] for p, t in
                    zip(scored[:, 0].numpy(), val_batch['target'][:, 0].numpy())])
    assert validation['rmse'] == pytest.approx(rmse, rel=1e-5)
    trainer.close()
    with pytest.raises(TrainingError, match='bounded_loss needs'):
        Trainer(ModelConfig(width=8, steps=2), options, _random_samples(rng, 1), None,
                tmp_path / 'bad')


@pytest.mark.parametrize('pattern, message', [('no_such_layer', 'matches no parameter'),
                                              ('conf(', 'is not a regex')])
def test_trainable_pattern_must_match_a_parameter(pattern, message, tmp_path):
    options = TrainOptions(device='cpu', progress=False, trainable=pattern)
    with pytest.raises(TrainingError, match=message):
        Trainer(ModelConfig(width=8, steps=2), options,
                _random_samples(np.random.default_rng(), 1), None, tmp_path)


def test_cli_fine_tunes_only_the_trainable_parameters_from_init(lidar_bag, tmp_path):
    torch.manual_seed(int(np.random.default_rng().integers(1000)))
    config = ModelConfig(width=8, steps=2)
    start = save_checkpoint(tmp_path / 'start.safetensors', CompletionNet(config).state_dict(),
                            config)
    args = _args(lidar_bag, tmp_path / 'tuned', 'dense', '--init', str(start),
                 '--trainable', 'confidence_head', '--confidence-weight', '1.0')
    del args[args.index('--config'):args.index('--config') + 2]
    assert training_main(args) == 0
    start_state, _, _ = load_checkpoint(start)
    tuned_state, _, meta = load_checkpoint(tmp_path / 'tuned' / 'last.safetensors')
    assert meta['trainable'] == 'confidence_head'
    for name, value in start_state.items():
        assert torch.equal(value, tuned_state[name]) != name.startswith('confidence_head.'), name


def test_best_checkpoint_is_picked_by_the_geometric_mean_of_frame_rmse(tmp_path):
    # Validation frames a metre-scale street and a centimetre-scale room apart: the score is the
    # geometric mean of their RMSEs (each frame's relative error counts alike), and best.* is
    # the epoch with the lowest score.
    rng = np.random.default_rng()
    torch.manual_seed(int(rng.integers(1000)))
    val = _random_samples(rng, 3)
    val[0]['target'] = val[0]['target'] * 3  # up to 60 m
    val[1]['target'] = val[1]['target'] / 5  # up to 4 m
    options = TrainOptions(epochs=3, batch_size=2, learning_rate=1e-2, device='cpu',
                           progress=False)
    epochs = []
    trainer = Trainer(ModelConfig(width=8, steps=2), options, _random_samples(rng, 4), val,
                      tmp_path / 'run', on_progress=lambda p: 'val' in p and epochs.append(p))
    summary = trainer.fit()
    trainer.close()
    scores = [p['val']['rmse_geomean'] for p in epochs if p['val'] is not None]
    assert len(scores) == 3 and summary['best_score'] == min(scores)

    trainer.model.eval()
    rmses = []
    with torch.no_grad():
        for sample in val:
            batch = collate_samples([sample])[0]
            depth = trainer.model(batch['rgb'], batch['sparse'])['depth'][0, 0].numpy()
            rmses.append(compute_metrics(depth, sample['target'])['rmse'])
    last = epochs[-1]['val']
    assert last['rmse_geomean'] == pytest.approx(float(np.prod(rmses)) ** (1 / 3), rel=1e-5)
    assert last['rmse'] == pytest.approx(float(np.mean(rmses)), rel=1e-5)
    assert last['rmse_geomean'] < last['rmse']  # not the arithmetic mean in disguise
    best_epoch = scores.index(min(scores)) + 1
    _, _, meta = load_checkpoint(tmp_path / 'run' / 'best.safetensors')
    assert meta['epoch'] == best_epoch


def test_precise_batchnorm_averages_the_statistics_of_the_training_batches(tmp_path):
    # Equal-size batches: the running mean becomes the mean of the layer's inputs over all
    # batches, the running variance the mean of the batches' (unbiased) variances; the weights,
    # the momentum and the statistics of frozen layers (not trained: --trainable) stay put.
    rng = np.random.default_rng()
    torch.manual_seed(int(rng.integers(1000)))
    options = TrainOptions(batch_size=2, device='cpu', progress=False)
    trainer = Trainer(ModelConfig(width=8, steps=2), options, _random_samples(rng, 6), None,
                      tmp_path / 'run')
    layer = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    inputs = []
    hook = layer.register_forward_pre_hook(lambda _, args: inputs.append(args[0].clone()))
    parameters = {k: v.clone() for k, v in trainer.model.named_parameters()}
    assert trainer.recalibrate_batchnorm(2) == 2
    hook.remove()
    assert len(inputs) == 2 and inputs[0].shape[0] == 2
    torch.testing.assert_close(layer.running_mean, torch.cat(inputs).mean((0, 2, 3)))
    torch.testing.assert_close(layer.running_var,
                               torch.stack([x.var((0, 2, 3)) for x in inputs]).mean(0))
    assert layer.momentum == 0.1 and int(layer.num_batches_tracked) == 2
    for name, value in trainer.model.named_parameters():
        assert torch.equal(value, parameters[name]), name
    trainer.close()

    options = TrainOptions(batch_size=2, device='cpu', progress=False,
                           trainable='confidence_head')
    frozen = Trainer(ModelConfig(width=8, steps=2), options, _random_samples(rng, 4), None,
                     tmp_path / 'frozen')
    before = {k: v.clone() for k, v in frozen.model.state_dict().items()}
    assert frozen.recalibrate_batchnorm(5) == 2  # at most one pass: 4 samples, batch 2
    for key, value in frozen.model.state_dict().items():  # only the trained head's statistics
        recalibrated = key.startswith('confidence_head.') and not key.endswith(('weight', 'bias'))
        assert torch.equal(value, before[key]) != recalibrated, key
    frozen.close()
    with pytest.raises(TrainingError, match='precise_bn_batches must be >= 0'):
        Trainer(ModelConfig(width=8, steps=2), TrainOptions(device='cpu', precise_bn_batches=-1),
                _random_samples(rng, 1), None, tmp_path / 'bad')


def test_cli_epochs_0_validates_or_recalibrates_a_checkpoint(lidar_bag, tmp_path, capsys):
    torch.manual_seed(int(np.random.default_rng().integers(1000)))
    config = ModelConfig(width=8, steps=2)
    start = save_checkpoint(tmp_path / 'start.safetensors', CompletionNet(config).state_dict(),
                            config)
    start_state, _, _ = load_checkpoint(start)
    scores = []
    for name, extra in (('as_is', []), ('precise', ['--precise-bn', '4'])):
        args = _args(lidar_bag, tmp_path / name, 'dense', '--init', str(start), '--epochs', '0',
                     *extra)
        del args[args.index('--config'):args.index('--config') + 2]
        assert training_main(args) == 0
        printed = capsys.readouterr().out
        assert 'trained to step 0 (epoch 0)' in printed and 'samples trained: 0' in printed
        scores.append(float(printed.split('rmse_geomean=')[1].split()[0]))
        state, _, meta = load_checkpoint(tmp_path / name / 'best.safetensors')
        assert meta['step'] == 0
        for key, value in start_state.items():  # statistics change with --precise-bn alone
            changed = extra and key.endswith(('running_mean', 'running_var', 'tracked'))
            assert torch.equal(value, state[key]) != bool(changed), key
    assert int(state['unet.stem.1.num_batches_tracked']) == 2  # 3 training frames, batch 2
    assert scores[0] != scores[1]
