"""evaluate end to end on a tiny synthetic bag: outputs, keys, determinism, bad input."""
import csv
import json

import numpy as np
import pytest
import torch

from cspn_ros.config import ModelConfig
from cspn_ros.data.synthetic import DEFAULT_LIDAR_ROTATION, DEFAULT_LIDAR_TRANSLATION
from cspn_ros.data.synthetic_bag import write_synthetic_bag
from cspn_ros.model.checkpoint import save_checkpoint
from cspn_ros.model.network import CompletionNet
from cspn_ros.nodes.evaluate import CONFIDENCE_THRESHOLDS, ConfidenceReport
from cspn_ros.nodes.evaluate import main as evaluate_main
from cspn_ros.train.metrics import METRIC_KEYS, MIN_PREDICTED_DEPTH_M

EXTRINSIC = ['--extrinsic-translation', *(f'{v:.6f}' for v in DEFAULT_LIDAR_TRANSLATION),
             '--extrinsic-rotation', *(f'{v:.6f}' for v in DEFAULT_LIDAR_ROTATION)]


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('evaluate')
    bag = write_synthetic_bag(root / 'bag', 'sqlite3', num_frames=3, width=64, height=48,
                              lidar_beams=16, depth_source='lidar',
                              seed=int(np.random.default_rng().integers(99)))
    config = ModelConfig(width=8, steps=2)
    torch.manual_seed(int(np.random.default_rng().integers(1000)))
    checkpoint = save_checkpoint(root / 'tiny.safetensors', CompletionNet(config).state_dict(),
                                 config)
    return root, bag, checkpoint


@pytest.mark.parametrize('target', [['--gt-topic', '/ground_truth/depth'], ['--holdout', '0.3']])
def test_evaluate_writes_summary_and_frames_and_is_deterministic(setup, target, capsys):
    root, bag, checkpoint = setup
    outputs = []
    for run in ('first', 'second'):
        out = root / f'{target[0][2:]}_{run}'
        assert evaluate_main(['--bag', str(bag), '--checkpoint', str(checkpoint), *target,
                              '--out', str(out), *EXTRINSIC]) == 0
        outputs.append(out)
    printed = capsys.readouterr().out
    assert 'RMSE m' in printed and 'baseline' in printed
    summary = json.loads((outputs[0] / 'summary.json').read_text())
    for method in ('model', 'baseline'):
        assert set(METRIC_KEYS) | {'frames'} <= set(summary[method])
        assert summary[method]['frames'] == 3
        assert all(np.isfinite(summary[method][k]) for k in METRIC_KEYS)
    with open(outputs[0] / 'frames.csv') as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 3
    for key in METRIC_KEYS:  # the summary is the mean over frames of the per-frame metrics
        assert summary['model'][key] == pytest.approx(np.mean([float(r[f'model_{key}'])
                                                               for r in rows]))
    # Confidence report: threshold 0 keeps every scored pixel; its RMSE pools all frames.
    report = summary['confidence']
    assert [row['min_confidence'] for row in report] == list(CONFIDENCE_THRESHOLDS)
    counts = np.array([float(r['model_count']) for r in rows])
    rmses = np.array([float(r['model_rmse']) for r in rows])
    assert report[0]['coverage'] == 1.0
    assert report[0]['rmse'] == pytest.approx(np.sqrt(np.sum(counts * rmses ** 2) / counts.sum()))
    assert all(a['coverage'] >= b['coverage'] for a, b in zip(report, report[1:]))
    assert (outputs[0] / 'summary.json').read_text() == (outputs[1] / 'summary.json').read_text()
    assert (outputs[0] / 'frames.csv').read_text() == (outputs[1] / 'frames.csv').read_text()
    assert list(outputs[0].glob('frame_*.png'))
    assert (outputs[0] / 'error_vs_distance.png').stat().st_size > 0


def test_holdout_scores_only_points_the_model_did_not_see(setup):
    root, bag, _ = setup
    out = root / 'classical'
    # No --extrinsic-* flags: the LiDAR extrinsic comes from the bag's /tf_static.
    assert evaluate_main(['--bag', str(bag), '--checkpoint', 'classical', '--holdout', '0.5',
                          '--out', str(out)]) == 0
    with open(out / 'frames.csv') as file:
        rows = list(csv.DictReader(file))
    for row in rows:  # half of the projected points are the input, half the target
        assert abs(int(row['model_count']) - int(row['input_points'])) <= 1
        assert float(row['model_rmse']) > 0  # the target points were really held out


def test_evaluate_reports_bad_input(setup, capsys):
    root, bag, checkpoint = setup
    assert evaluate_main(['--bag', str(bag), '--checkpoint', str(checkpoint),
                          '--points-topic', '/velodyne', '--out', str(root / 'bad')]) == 1
    error = capsys.readouterr().err
    assert '/velodyne' in error and '/points' in error
    assert evaluate_main(['--bag', str(root / 'missing'), '--out', str(root / 'bad')]) == 1
    assert 'missing' in capsys.readouterr().err
    # A holdout share too small to leave any target point: no frame can be scored.
    assert evaluate_main(['--bag', str(bag), '--checkpoint', 'classical', '--holdout', '1e-5',
                          '--out', str(root / 'bad')]) == 1
    assert 'none of the 3 paired frames could be scored' in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one depth source per evaluation
        evaluate_main(['--bag', str(bag), '--depth-source', 'both', '--out', str(root / 'bad')])
    assert "invalid choice: 'both'" in capsys.readouterr().err


def test_confidence_report_matches_a_loop_reference():
    rng = np.random.default_rng()
    thresholds = (0.0, 0.4, 0.8, 1.0)
    report = ConfidenceReport(thresholds)
    frames = []
    for _ in range(3):
        gt = np.where(rng.random((6, 7)) < 0.7, rng.uniform(1, 10, (6, 7)), 0).astype(np.float32)
        prediction = (gt + rng.normal(0, 0.5, gt.shape)).astype(np.float32)
        confidence = rng.random(gt.shape).astype(np.float32)
        report.add(prediction, confidence, gt)
        frames.append((prediction, confidence, gt))
    for row, threshold in zip(report.rows(), thresholds):
        scored, errors = 0, []
        for prediction, confidence, gt in frames:
            for p, c, g in zip(prediction.flat, confidence.flat, gt.flat):
                if g > 0:
                    scored += 1
                    if c >= threshold:  # scored as compute_metrics scores a prediction
                        errors.append((max(float(p), MIN_PREDICTED_DEPTH_M) - float(g)) ** 2)
        assert row['min_confidence'] == threshold
        assert row['coverage'] == pytest.approx(len(errors) / scored)
        if errors:
            assert row['rmse'] == pytest.approx(np.sqrt(np.mean(errors)))
        else:
            assert row['rmse'] is None
