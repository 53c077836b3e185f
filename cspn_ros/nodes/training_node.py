"""training_node: train a completion model from rosbag2 files, as a CLI or as a ROS node.

    training_node --bag PATH [--bag PATH ...] --out DIR [--epochs N]
                  [--supervision dense|tof|lidar-holdout|photometric] [--config MODEL_CONFIG]
                  [--depth-source lidar|tof|both] [--batch-size B] [--crop HxW] [--resume]
                  [--init CHECKPOINT] [--trainable REGEX] [--confidence-weight W]
                  [--depth-loss l1_l2|frame_rmse] [--no-flip] [--precise-bn N] ...

Frames are paired and converted exactly as the completion node does it (same topics, matcher
and `CompletionPipeline.prepare`). Supervision: dense (a ground-truth depth topic), tof (the
ToF depth is the target, a random subset of it the input), lidar-holdout (a random share of the
projected LiDAR points is the target, the rest the input; --accumulate-sweeps N adds the
sweeps of the N previous and next frames, moved with the odometry on --pose-topic, to the
target), photometric (neighbouring frames + odometry on --pose-topic, e.g. /odom).
--depth-source both (dense or photometric) reads bags with a cloud and a ToF topic: every frame
gives a LiDAR-input and a ToF-input sample. The sensors' extrinsics come from the bag's
/tf_static (or /tf) unless --extrinsic-* are given. The last frames of each bag (--val-fraction
of them) are held out for validation. --init fine-tunes: training starts from a checkpoint's
weights, with that checkpoint's model config (a fresh optimizer and schedule; --resume, which
continues a run in --out, takes precedence). --trainable REGEX trains only the parameters whose
names match (the others, and their BatchNorm statistics, stay fixed): `--init CKPT --trainable
confidence_head` trains the confidence alone and leaves the depth output bit-identical.
--precise-bn N: after the last epoch the BatchNorm running statistics are recomputed as plain
averages over N training batches (training augmentation), then validated; `--init CKPT
--epochs 0 --precise-bn N` does that to a checkpoint (--epochs 0 trains nothing: it validates
the starting weights and writes them as DIR/last and best). --procedural STEPS trains on
sensor-agnostic scenes ray cast on the device; with --bag as well, --bag-share of its batches
come from the bags (dense supervision): a robot's own recordings join the sensor-agnostic
scenes instead of replacing them. Supervised modes add
--confidence-weight x the confidence loss (BCE to 'the depth is within max(5 %, 5 cm)').
Writes DIR/last.safetensors, DIR/best.safetensors (loadable by DepthCompleter.from_checkpoint
and the node's `checkpoint` parameter), DIR/last_state.pt (for --resume) and DIR/tb/.
Several processes (DistributedDataParallel; nccl on CUDA, gloo on the CPU):
`torchrun --standalone --nproc_per_node N -m cspn_ros.nodes.training_node --bag ...`; each process
trains on its share of the frames with --batch-size of its own, rank 0 writes and prints.

Run with `--ros-args` (or without --bag) it is a ROS node: every option is a parameter of the
same name with '_' for '-' (bag is a string array; extrinsic.translation, extrinsic.rotation and
tof.registered as in the completion node) and progress is published as
diagnostic_msgs/DiagnosticArray on /diagnostics.
"""
from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
from typing import Callable, Optional, Sequence

import numpy as np

from cspn_ros.config import ModelConfig
from cspn_ros.core.pipeline import CompletionPipeline
from cspn_ros.data.augment import Augmenter
from cspn_ros.data.bag_arguments import DEPTH_SOURCES, add_bag_arguments, frames_from_args
from cspn_ros.data.bag_reader import BagError
from cspn_ros.data.bag_samples import (SUPERVISIONS, BagTrainingSamples, ConcatenatedSamples,
                                       SupervisionOptions)
from cspn_ros.data.procedural import PATTERNS, ProceduralBatches, parse_pattern_weights
from cspn_ros.model.checkpoint import load_checkpoint, load_weights
from cspn_ros.train.batching import MixedBatches
from cspn_ros.train.runtime import distributed_ranks, is_main_process, training_device
from cspn_ros.train.trainer import DEPTH_LOSSES, Trainer, TrainingError, TrainOptions

LOGGER = logging.getLogger('training_node')
#: argparse dest -> ROS parameter name, where the completion node spells it differently.
ROS_NAMES = {'extrinsic_translation': 'extrinsic.translation',
             'extrinsic_rotation': 'extrinsic.rotation', 'tof_registered': 'tof.registered'}
#: Supervisions that work with --depth-source both (the others need one particular sensor).
BOTH_SUPERVISIONS = ('dense', 'photometric')
#: (height, width) of --procedural scenes without --crop, pixels.
PROCEDURAL_SIZE = (256, 320)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='training_node', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--bag', action='append', default=[], help='rosbag2 folder; repeatable')
    parser.add_argument('--out', default='', help='output folder for checkpoints and logs')
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--supervision', choices=SUPERVISIONS, default='dense')
    parser.add_argument('--config', default='',
                        help="model config: YAML/JSON file, propagation name or a JSON object "
                             "such as '{\"width\": 8, \"steps\": 2}' ('' = defaults)")
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--crop', default='', help="random training crop 'HxW' ('' = none)")
    parser.add_argument('--max-scale', type=float, default=1.0,
                        help='random rescale in [1, max-scale] before cropping')
    parser.add_argument('--no-flip', action='store_true',
                        help='no random left-right flips: a flip moves a sensor mounted beside '
                             'the camera to its other side, and its occlusion shadows with it')
    parser.add_argument('--resume', action='store_true', help='continue from DIR/last.*')
    parser.add_argument('--init', default='',
                        help='fine-tune: start from the weights and model config of this '
                             'checkpoint (.safetensors/.pt)')
    parser.add_argument('--trainable', default='',
                        help="regex on parameter names: only those are trained, e.g. "
                             "'confidence_head' ('' = all)")
    parser.add_argument('--confidence-weight', type=float, default=0.1,
                        help='weight of the confidence loss (dense, tof, lidar-holdout)')
    parser.add_argument('--depth-loss', choices=DEPTH_LOSSES, default='l1_l2',
                        help='dense, tof, lidar-holdout: l1_l2 = --l1-weight x L1 + --l2-weight '
                             'x L2 over all pixels of a batch; frame_rmse = the mean of the '
                             "samples' RMSEs (what evaluate scores; every sample pulls equally, "
                             'a 3 m room as hard as a 60 m street)')
    parser.add_argument('--l1-weight', type=float, default=1.0, help='with --depth-loss l1_l2')
    parser.add_argument('--l2-weight', type=float, default=1.0, help='with --depth-loss l1_l2')
    parser.add_argument('--precise-bn', type=int, default=0, metavar='N',
                        help='after the last epoch, BatchNorm statistics = the plain average over '
                             'N training batches instead of the running average (0 = off)')
    parser.add_argument('--bounded-loss', action='store_true',
                        help="score the depth after the model config's input_bound, as the "
                             'completer outputs it (needs input_bound > 0 in --config or the '
                             '--init checkpoint)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda')
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--weight-decay', type=float, default=1e-2)
    parser.add_argument('--clip-grad-norm', type=float, default=1.0)
    parser.add_argument('--checkpoint-every', type=int, default=500, help='steps')
    parser.add_argument('--val-fraction', type=float, default=0.1,
                        help="share of each bag's frames, its last ones, held out for validation")
    parser.add_argument('--gt-topic', default='/ground_truth/depth',
                        help='ground-truth depth topic (dense supervision)')
    parser.add_argument('--pose-topic', default='',
                        help='nav_msgs/Odometry or geometry_msgs/PoseStamped of the camera '
                             '(photometric supervision, --accumulate-sweeps)')
    parser.add_argument('--holdout', type=float, default=0.2,
                        help='share of LiDAR points held out as targets (lidar-holdout)')
    parser.add_argument('--accumulate-sweeps', type=int, default=0,
                        help='lidar-holdout: the LiDAR sweeps of this many previous and next '
                             'frames, moved with the poses of --pose-topic, densify the targets')
    parser.add_argument('--tof-input-points', type=int, default=500,
                        help='ToF pixels fed as input (tof supervision)')
    parser.add_argument('--procedural', type=int, default=0, metavar='STEPS',
                        help='train on STEPS batches per epoch of sensor-agnostic procedural '
                             'scenes made on the device (data.procedural; --crop is their size, '
                             'default 256x320); with --bag, --bag-share of the batches are the '
                             "bags' (every bag frame trains; validation on procedural scenes)")
    parser.add_argument('--bag-share', type=float, default=0.5, metavar='SHARE',
                        help='with --procedural and --bag: share of the training batches drawn '
                             'from the bags (0-1)')
    parser.add_argument('--procedural-val', type=int, default=8, metavar='BATCHES',
                        help='with --procedural: fixed validation batches (another seed)')
    parser.add_argument('--procedural-patterns', type=parse_pattern_weights, default=None,
                        metavar='PATTERN=WEIGHT,...',
                        help='with --procedural: sensor pattern sampling weights replacing the '
                             f'defaults {PATTERNS} (normalised; e.g. rows=0.2)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--workers', type=int, default=0, help='DataLoader worker processes')
    parser.add_argument('--no-amp', action='store_true', help='train in float32 on CUDA')
    parser.add_argument('--no-progress', action='store_true', help='no tqdm bar')
    add_bag_arguments(parser, (*DEPTH_SOURCES, 'both'))
    return parser


def _crop(text: str) -> Optional[tuple[int, int]]:
    if not text:
        return None
    try:
        height, width = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ValueError(f"--crop must look like 'HxW' (e.g. 352x1216), got {text!r}") from None
    return height, width


def training_augmenter(args: argparse.Namespace) -> Augmenter:
    """The training samples' augmentation from parsed options: random rescale in [1,
    --max-scale], random --crop, colour jitter and, unless --no-flip, left-right flips."""
    return Augmenter(_crop(args.crop), (1.0, max(1.0, args.max_scale)), flip=not args.no_flip,
                     jitter=0.2)


def _model_config(text: str) -> ModelConfig:
    if text.strip().startswith('{'):
        return ModelConfig.from_dict(json.loads(text))
    return ModelConfig.load(text or None)


def train(args: argparse.Namespace,
          on_progress: Optional[Callable[[dict], None]] = None) -> dict:
    """Build datasets from the bags (or procedural scenes) and train; returns the Trainer
    summary."""
    if not args.bag and not args.procedural:
        raise ValueError('no --bag given (or --procedural STEPS)')
    if not args.out:
        raise ValueError('no --out folder given')
    supervision = args.supervision
    if args.depth_source == 'both' and supervision not in BOTH_SUPERVISIONS:
        raise ValueError(f'--depth-source both trains with supervision {BOTH_SUPERVISIONS}, '
                         f'not {supervision!r}')
    config = _model_config(args.config)
    initial_weights = None
    if args.init and not args.resume:
        initial_weights, config = _initial_checkpoint(args.init, args.config, config)
    if args.procedural and supervision != 'dense':
        raise ValueError('--procedural scenes are supervised with their true depth: '
                         f'--supervision dense, not {supervision!r}')
    if args.procedural and not args.bag:
        return _train(args, config, initial_weights, *procedural_sets(args), on_progress)
    if args.procedural and not args.crop:  # mixed-in bag samples take the scenes' size
        args.crop = 'x'.join(map(str, PROCEDURAL_SIZE))
    sources = frames_from_args(args, args.bag,
                               ground_truth=args.gt_topic if supervision == 'dense' else None,
                               pose=args.pose_topic or None)
    try:
        train_set, val_set = bag_sets(args, sources)
        if args.procedural:
            procedural, val_set = procedural_sets(args)
            train_set = MixedBatches(procedural, train_set, args.bag_share, args.batch_size,
                                     seed=procedural.seed)
        return _train(args, config, initial_weights, train_set, val_set, on_progress)
    finally:
        for frames, _ in sources.values():
            frames.close()


def bag_sets(args: argparse.Namespace, sources: dict
             ) -> tuple[ConcatenatedSamples, Optional[ConcatenatedSamples]]:
    """Training and validation samples of the bags' paired frames (`frames_from_args`'s
    sources); with --procedural every frame trains (the procedural scenes validate)."""
    supervision, crop = args.supervision, _crop(args.crop)
    options = SupervisionOptions(supervision, args.holdout, args.tof_input_points,
                                 args.slop, np.eye(4), args.accumulate_sweeps)
    augment = training_augmenter(args)
    val_fraction = 0.0 if args.procedural else args.val_fraction
    train_parts, val_parts = [], []
    for part, (frames, pipeline_options) in enumerate(sources.values()):
        pipeline = CompletionPipeline(None, **pipeline_options)  # prepare only: no completer
        train_indices, val_indices = frames.validation_split(val_fraction)
        train_parts.append(BagTrainingSamples(  # seed + part: a frame's two samples differ
            frames, pipeline, options, train_indices, augment, args.seed + part))
        if val_indices:
            val_mode = (supervision if supervision != 'photometric'
                        else 'lidar-holdout' if pipeline.depth_source == 'lidar' else 'tof')
            val_parts.append(BagTrainingSamples(
                frames, pipeline,
                SupervisionOptions(val_mode, args.holdout, args.tof_input_points),
                val_indices, Augmenter(crop, flip=False, jitter=0.0), args.seed))
        LOGGER.info('%s: %d paired frames in %d bag(s), %d for validation', pipeline.depth_source,
                    len(frames), len(frames.paths), len(val_indices))
    return (ConcatenatedSamples(train_parts),
            ConcatenatedSamples(val_parts) if val_parts else None)


def procedural_sets(args: argparse.Namespace) -> tuple[ProceduralBatches, ProceduralBatches]:
    """Training and validation batch sources for --procedural, on the training device (each
    torchrun process draws its own scenes)."""
    height, width = _crop(args.crop) or PROCEDURAL_SIZE
    rank, world, local_rank = distributed_ranks()
    device = training_device(args.device, local_rank, world)  # the trainer's device
    patterns = getattr(args, 'procedural_patterns', None)
    train_set = ProceduralBatches(args.procedural, args.batch_size, height, width, device,
                                  seed=args.seed + 7919 * rank, patterns=patterns)
    val_set = ProceduralBatches(args.procedural_val, args.batch_size, height, width, device,
                                seed=args.seed + 1_000_003)  # the default mix: comparable runs
    return train_set, val_set


def _train(args: argparse.Namespace, config: ModelConfig, initial_weights: Optional[dict],
           train_set, val_set, on_progress: Optional[Callable[[dict], None]]) -> dict:
    """Train `config` on the sets with the parsed options; returns the Trainer summary."""
    trainer = Trainer(
        config,
        TrainOptions(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                     weight_decay=args.weight_decay, clip_grad_norm=args.clip_grad_norm,
                     checkpoint_every=args.checkpoint_every, supervision=args.supervision,
                     confidence_weight=args.confidence_weight, depth_loss=args.depth_loss,
                     l1_weight=args.l1_weight, l2_weight=args.l2_weight,
                     trainable=args.trainable, precise_bn_batches=args.precise_bn,
                     amp=not args.no_amp, num_workers=args.workers, seed=args.seed,
                     device=args.device, progress=not args.no_progress,
                     bounded_loss=args.bounded_loss),
        train_set, val_set, args.out, resume=args.resume, on_progress=on_progress)
    try:
        if initial_weights is not None:
            load_weights(trainer.model, initial_weights, args.init)
        return trainer.fit()
    finally:
        trainer.close()


def _initial_checkpoint(path: str, config_text: str, config: ModelConfig
                        ) -> tuple[dict, ModelConfig]:
    """(state dict, model config) of the --init checkpoint; a --config that asks for another
    model is an error."""
    state_dict, saved_config, _ = load_checkpoint(path)
    if config_text and config != saved_config:
        raise ValueError(f'--init {path} holds a model {saved_config}, but --config asks for '
                         f'{config}; leave --config out when fine-tuning')
    LOGGER.info('fine-tuning from %s (%s)', path, saved_config)
    return state_dict, saved_config


def _report(summary: dict) -> None:
    """Print the summary (rank 0 only under torchrun)."""
    if not is_main_process():
        return
    seconds = summary['epoch_seconds']
    print(f'trained to step {summary["step"]} (epoch {summary["epoch"]}); best score '
          f'{summary["best_score"]:.4f}; samples trained: {summary["samples"]}; '
          f'skipped samples: {summary["skipped"]}; '
          f'seconds per epoch: {np.mean(seconds) if seconds else float("nan"):.2f}')
    if summary['val']:
        print('validation: ' + ', '.join(f'{k}={v:.4g}' for k, v in summary['val'].items()))


def run_cli(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        _report(train(args))
    except (BagError, TrainingError, ValueError, FileNotFoundError) as error:
        print(f'training_node: error: {error}', file=sys.stderr)
        return 1
    return 0


def run_ros(argv: Sequence[str]) -> int:
    """ROS node: options as parameters, progress on /diagnostics."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rclpy.exceptions import ParameterUninitializedException
    from rclpy.parameter import Parameter

    rclpy.init(args=list(argv))
    node = rclpy.create_node('training_node')
    parser = build_parser()
    values = {}
    for action in parser._actions:
        if action.dest == 'help':
            continue
        name = ROS_NAMES.get(action.dest, action.dest)
        if action.dest == 'bag' or action.default is None:  # arrays; unset = [] / None
            node.declare_parameter(name, Parameter.Type.STRING_ARRAY if action.dest == 'bag'
                                   else Parameter.Type.DOUBLE_ARRAY)
            try:
                values[action.dest] = list(node.get_parameter(name).value)
            except ParameterUninitializedException:
                values[action.dest] = action.default
        else:
            node.declare_parameter(name, action.default)
            values[action.dest] = node.get_parameter(name).value
    args = argparse.Namespace(**values)
    publisher = node.create_publisher(DiagnosticArray, '/diagnostics', 10)

    def publish(progress: dict, level: bytes = DiagnosticStatus.OK, message: str = '') -> None:
        status = DiagnosticStatus(level=level,
                                  name=f'{node.get_fully_qualified_name()}: training',
                                  hardware_id=socket.gethostname(),
                                  message=message or f'epoch {progress.get("epoch")} step '
                                                     f'{progress.get("step")}')
        status.values = [KeyValue(key=k, value=str(v)) for k, v in progress.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = node.get_clock().now().to_msg()
        publisher.publish(array)

    code = 0
    try:
        summary = train(args, publish)
        publish({k: v for k, v in summary.items() if k != 'val'}, message='finished')
        _report(summary)
    except (BagError, TrainingError, ValueError, FileNotFoundError) as error:
        node.get_logger().error(str(error))
        publish({}, DiagnosticStatus.ERROR, str(error))
        code = 1
    node.destroy_node()
    rclpy.try_shutdown()
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_help = '-h' in argv or '--help' in argv
    as_cli = '--bag' in argv or '--procedural' in argv
    if '--ros-args' in argv or (not as_cli and not wants_help):
        return run_ros(argv)
    return run_cli(argv)


if __name__ == '__main__':
    sys.exit(main())
