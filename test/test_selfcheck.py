"""Self-check core: held-out points (numpy == torch, seeded, share), frame scores, rolling
statistics, the fallback switch with hysteresis, and evaluate's self-check on a bag scored
without ground truth."""
import functools
import json
import math
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cspn_ros.core.background import BackgroundWorker
from cspn_ros.core.selfcheck import HeldOutPoints, SelfCheck, SelfCheckConfig, score_frame
from cspn_ros.data.synthetic import DEFAULT_LIDAR_ROTATION, DEFAULT_LIDAR_TRANSLATION
from cspn_ros.data.synthetic_bag import write_synthetic_bag
from cspn_ros.model.completer import DepthCompleter
from cspn_ros.nodes.evaluate import main as evaluate_main


def random_sparse(rng, shape=(60, 80), density=0.3):
    return np.where(rng.random(shape) < density, rng.uniform(0.5, 30, shape), 0).astype(
        np.float32)


def test_held_out_points_are_a_seeded_share_of_the_valid_points_alike_in_numpy_and_torch():
    rng = np.random.default_rng()
    sparse = random_sparse(rng, (240, 320))
    holdout = HeldOutPoints(0.05, seed=int(rng.integers(1000)))
    stamp = int(rng.integers(1 << 62))
    kept, held = holdout.split(sparse, stamp)
    kept_t, held_t = holdout.split(torch.from_numpy(sparse), stamp)
    np.testing.assert_array_equal(kept_t.numpy(), kept)
    np.testing.assert_array_equal(held_t.numpy(), held)
    np.testing.assert_array_equal(kept + held, sparse)
    assert not np.any((kept > 0) & (held > 0))
    share = np.count_nonzero(held) / np.count_nonzero(sparse)
    assert 0.04 < share < 0.06
    again, _ = holdout.split(sparse, stamp)
    np.testing.assert_array_equal(again, kept)
    other_frame, _ = holdout.split(sparse, stamp + 1)
    other_seed, _ = HeldOutPoints(0.05, seed=holdout.seed + 1).split(sparse, stamp)
    assert not np.array_equal(other_frame, kept) and not np.array_equal(other_seed, kept)
    rows = np.nonzero(held)[0]  # spread over the image, not a block
    assert rows.min() < 30 and rows.max() > 210
    with pytest.raises(ValueError):
        HeldOutPoints(0.0)


def test_score_frame_sums_errors_at_the_held_out_points_only():
    held = np.zeros((4, 5), np.float32)
    held[1, 2], held[3, 0] = 2.0, 4.0
    model = np.full((4, 5), 3.0, np.float32)
    classical = np.zeros((4, 5), np.float32)
    classical[1, 2] = 2.5
    score = score_frame(held, model, classical)
    assert score.count == 2
    assert score.model_se == pytest.approx(1 + 1) and score.model_ae == pytest.approx(2)
    assert score.classical_se == pytest.approx(0.25 + 16)  # missing output: the whole depth
    assert score.model_wins


def frame(held, model_depth, sparse=None):
    """A FrameResult-like frame: held-out points, the model's (H,W) output and its input."""
    return SimpleNamespace(held_out=held, dense_unblanked=model_depth, dense=model_depth,
                           rgb=np.zeros(held.shape + (3,), np.uint8),
                           sparse=np.zeros_like(held) if sparse is None else sparse)


def test_fallback_switches_to_the_classical_fill_and_back_with_hysteresis():
    rng = np.random.default_rng()
    truth = rng.uniform(1, 10, (20, 30)).astype(np.float32)
    held = np.where(rng.random(truth.shape) < 0.2, truth, 0).astype(np.float32)
    classical = truth + 0.5  # 0.5 m off everywhere
    check = SelfCheck(SelfCheckConfig(holdout_share=0.1, fallback='classical', window=4,
                                      min_frames=3, hysteresis=0.2, classical_every=1),
                      classical=None)
    published, events = [], []

    def step(model_error):
        out, event = check.check(_replaceable(frame(held, truth + model_error)),
                                 classical_depth=classical)
        published.append(out.dense)
        events.append(event)

    for _ in range(2):
        step(2.0)  # worse, but fewer than min_frames scored
    assert not check.fallback_active and events == ['', '']
    step(2.0)
    assert check.fallback_active and 'worse than the classical fill' in events[-1]
    np.testing.assert_array_equal(published[-1], classical)
    assert check.summary()['publishing'] == 'classical fill'
    for _ in range(6):  # better than the fill, but not by the hysteresis margin
        step(0.45)
    assert check.fallback_active and not any(events[3:])
    step(0.1)  # pooled over the window: 0.39 m < 0.8 x 0.5 m
    assert not check.fallback_active and 'recovered' in events[-1]
    np.testing.assert_array_equal(published[-1], truth + 0.1)
    for _ in range(3):
        step(0.1)
    summary = check.summary()
    assert summary['model_rmse'] == pytest.approx(0.1, rel=1e-4)
    assert summary['classical_rmse'] == pytest.approx(0.5, rel=1e-4)
    assert summary['model_wins_share'] == 1.0 and summary['switches'] == 2
    values = check.diagnostic_values()
    assert values['self-check publishing'] == 'model'
    assert float(values['self-check classical RMSE (m)']) == pytest.approx(0.5, abs=1e-4)


def _replaceable(namespace):
    """A dataclass copy of a SimpleNamespace frame (SelfCheck replaces fields with
    dataclasses.replace)."""
    import dataclasses
    fields = dict(vars(namespace), confidence=np.ones_like(namespace.held_out), dense_32fc1=None)
    cls = dataclasses.make_dataclass('Frame', list(fields))
    return cls(**fields)


def test_classical_fill_runs_every_nth_frame_unless_the_fallback_is_active():
    rng = np.random.default_rng()
    sparse = random_sparse(rng)
    kept, held = HeldOutPoints(0.1).split(sparse, 1)
    far_off = np.full_like(sparse, 100.0)  # a model 100 m everywhere
    classical = DepthCompleter.from_config('classical')
    check = SelfCheck(SelfCheckConfig(holdout_share=0.1, classical_every=3), classical)
    for _ in range(9):
        result, _ = check.check(_replaceable(frame(held, far_off, kept)))
    assert check.frames_scored == 3 and not check.fallback_active  # fallback 'none'
    model, fill = check.rolling('model'), check.rolling('classical')
    assert math.isfinite(model['rmse']) and math.isfinite(fill['rmse'])
    active = SelfCheck(SelfCheckConfig(holdout_share=0.1, classical_every=3, fallback='classical',
                                       min_frames=1), classical)
    for _ in range(4):
        result, _ = active.check(_replaceable(frame(held, far_off, kept)))
    assert active.fallback_active and active.frames_scored == 4  # frame 1, then every frame
    np.testing.assert_array_equal(result.dense,
                                  classical.complete(result.rgb, result.sparse).depth)


class CountingFill:
    """The real classical fill, counting its runs."""

    def __init__(self):
        self.fill = DepthCompleter.from_config('classical')
        self.runs = 0

    def complete(self, rgb, sparse):
        self.runs += 1
        return self.fill.complete(rgb, sparse)


def test_the_model_is_published_without_a_classical_fill_and_scored_after():
    rng = np.random.default_rng()
    sparse = random_sparse(rng)
    kept, held = HeldOutPoints(0.1).split(sparse, 1)
    far_off = np.full_like(sparse, 100.0)  # a model 100 m everywhere
    fill = CountingFill()
    check = SelfCheck(SelfCheckConfig(holdout_share=0.1, classical_every=1, fallback='classical',
                                      min_frames=2), fill)
    events = []
    for _ in range(2):
        result = _replaceable(frame(held, far_off, kept))
        published, pending = check.before_publish(result)
        assert published is result and fill.runs == len(events)  # no fill before publishing
        events.append(check.score(pending))
        assert fill.runs == len(events)  # the fill runs when scored
    assert events[0] == '' and 'worse than the classical fill' in events[1]
    assert check.fallback_active  # from the next frame on: the second one published the model
    published, pending = check.before_publish(_replaceable(frame(held, far_off, kept)))
    expected = fill.fill.complete(published.rgb, kept).depth
    np.testing.assert_array_equal(published.dense, expected)  # the fallback's output
    np.testing.assert_array_equal(pending.frame.dense_unblanked, far_off)  # scores the model
    assert fill.runs == 3
    assert check.score(pending) == '' and fill.runs == 3  # the published fill is reused
    assert check.frames_scored == 3


def test_the_background_scorer_skips_frames_while_busy_and_never_blocks_the_publisher():
    rng = np.random.default_rng()
    sparse = random_sparse(rng)
    kept, held = HeldOutPoints(0.1).split(sparse, 1)
    check = SelfCheck(SelfCheckConfig(holdout_share=0.1, classical_every=2),
                      DepthCompleter.from_config('classical'))
    errors = []
    scorer = BackgroundWorker('test_scorer', errors.append)
    release = threading.Event()

    def publish_and_score():
        """The completion worker's steps: decide, (publish,) hand the score to the scorer."""
        result, pending = check.before_publish(_replaceable(frame(held, sparse, kept)))
        if pending is not None and not scorer.submit(functools.partial(check.score, pending)):
            check.skip()
        return result

    try:
        assert scorer.submit(lambda: release.wait(60.0))  # the scorer is busy ...
        for _ in range(6):  # ... so the 3 due frames are published and their scores skipped
            publish_and_score()
        assert check.frames_skipped == 3 and check.frames_scored == 0
        assert check.summary()['frames_skipped'] == 3
        assert check.diagnostic_values()['self-check frames skipped (scorer busy)'] == '3'
        release.set()
        assert scorer.wait_idle(60.0)
        for _ in range(4):  # frames 7 and 9 are due and scored once the scorer is free
            publish_and_score()
            assert scorer.wait_idle(60.0)
        assert check.frames_scored == 2 and check.frames_skipped == 3
        assert check.rolling('model')['rmse'] == 0.0  # the model returned the held-out depth
        assert scorer.jobs_done == 3 and scorer.jobs_skipped == 3
        assert scorer.submit(lambda: 1 / 0) and scorer.wait_idle(60.0)
        assert isinstance(errors[0], ZeroDivisionError)  # reported, the scorer goes on
        assert scorer.submit(lambda: None) and scorer.wait_idle(60.0)
    finally:
        release.set()
        scorer.stop()
    assert not scorer.submit(lambda: None)  # stopped: refused


def test_config_rejects_a_fallback_without_held_out_points():
    with pytest.raises(ValueError, match='holdout_share'):
        SelfCheckConfig(holdout_share=0.0, fallback='classical')
    with pytest.raises(ValueError, match='fallback'):
        SelfCheckConfig(fallback='nearest')


def test_evaluate_reports_the_self_check_without_ground_truth(tmp_path, capsys):
    bag = write_synthetic_bag(tmp_path / 'bag', 'sqlite3', num_frames=3, width=64, height=48,
                              lidar_beams=32, depth_source='lidar', seed=5)
    extrinsic = ['--extrinsic-translation', *map(str, DEFAULT_LIDAR_TRANSLATION),
                 '--extrinsic-rotation', *map(str, DEFAULT_LIDAR_ROTATION)]
    summaries = {}
    for checkpoint in ('classical', None):
        out = tmp_path / str(checkpoint)
        arguments = ['--bag', str(bag), '--holdout', '0.2', '--self-check', '0.1', '--out',
                     str(out), *extrinsic] + (['--checkpoint', checkpoint] if checkpoint else [])
        assert evaluate_main(arguments) == 0
        summaries[checkpoint] = json.loads((out / 'summary.json').read_text())['self_check']
    assert 'self-check on' in capsys.readouterr().out
    same = summaries['classical']  # the model is the classical fill: the same score
    assert same['frames_scored'] == 3 and same['points_in_window'] > 0
    assert same['model_rmse'] == same['classical_rmse'] and same['model_wins_share'] == 0.0
    trained = summaries[None]
    assert trained['points_in_window'] == same['points_in_window']  # the same held-out points
    assert trained['classical_rmse'] == same['classical_rmse']
    assert math.isfinite(trained['model_rmse']) and trained['model_rmse'] != same['model_rmse']
