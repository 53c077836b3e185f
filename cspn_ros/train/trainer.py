"""Training loop: AdamW + warm-up/cosine schedule, AMP on CUDA, gradient clipping, checkpoints
(last every N steps and at each epoch end, best on validation RMSE), exact resume, TensorBoard
logs and tqdm progress; DistributedDataParallel when launched by torchrun (RANK / WORLD_SIZE /
LOCAL_RANK; nccl on CUDA, gloo on the CPU): a DistributedSampler gives each process its share of
the samples, DDP's join absorbs uneven step counts (batches of skipped samples), losses and
sample counts are summed over processes, rank 0 alone validates and writes (checkpoints, logs).
`trainable` (a regex on parameter names) fine-tunes part of the model: the other parameters are
frozen and their BatchNorm layers stay in eval mode, so their outputs do not change at all.
Precise BatchNorm (`precise_bn_batches`): after the last epoch the running statistics are
recomputed as plain averages over that many training batches, before the last validation.

Datasets yield sample dicts of numpy arrays (data/augment.py describes the keys) or None for a
frame that could not be used; None samples are counted and reported, never silently trained on.
A dataset with `set_epoch` (random draws per epoch) is indexed with (epoch, position) keys
(`train.batching.EpochKeys`): the DataLoader workers persist across epochs, keeping their open
bags, and never see the main process's set_epoch.
Out dir: last.safetensors + last_state.pt (optimizer, scheduler, step: what resume needs),
best.safetensors, tb/ (TensorBoard).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import (DataLoader, Dataset, DistributedSampler, IterableDataset,
                              RandomSampler)

from cspn_ros.config import ModelConfig
from cspn_ros.core.colorize import colorize_depth
from cspn_ros.model.checkpoint import load_checkpoint, load_weights, save_checkpoint
from cspn_ros.model.input_bound import bound_by_inputs
from cspn_ros.model.network import CompletionNet
from cspn_ros.train.batching import EpochKeys, collate_samples, whole_batch
from cspn_ros.train.losses import (confidence_loss, depth_loss, edge_aware_smoothness,
                                   frame_rmse, masked_l1, photometric_loss, scaled_frame_loss)
from cspn_ros.train.metrics import compute_metrics, geometric_mean_rmse, mean_metrics
from cspn_ros.train.runtime import (distributed_ranks, seed_everything, training_device,
                                    warmup_cosine)

LOGGER = logging.getLogger(__name__)
STATE_FILE = 'last_state.pt'
#: Depth losses of the supervised modes (TrainOptions.depth_loss).
DEPTH_LOSSES = ('l1_l2', 'frame_rmse', 'scaled')


class TrainingError(RuntimeError):
    """Training cannot go on (no usable samples, resume state missing, ...)."""


@dataclasses.dataclass
class TrainOptions:
    """epochs, batch_size (per process), AdamW learning_rate / weight_decay, warmup_fraction of
    the steps, clip_grad_norm (0 = off), checkpoint_every (steps), depth_loss of the supervised
    modes ('l1_l2': l1_weight x L1 + l2_weight x L2 pooled over the batch's pixels;
    'frame_rmse': the mean of each sample's RMSE, see losses.frame_rmse; 'scaled': the same
    with L1 on depths divided by each frame's median target, see losses.scaled_frame_loss),
    init_weight x the
    same loss on depth_init, confidence_weight on the confidence's BCE to the good-pixel
    indicator (supervised modes); photometric mode: smoothness_weight, sparse_weight on the
    input points; trainable (regex searched in parameter names: only matching ones are
    trained; '' = all), amp (CUDA only), precise_bn_batches (after the last epoch, the
    BatchNorm statistics are averaged over this many training batches: 0 = off, see
    Trainer.recalibrate_batchnorm), device ('auto' | 'cpu' | 'cuda[:i]'), bounded_loss (the
    supervised losses score the depth after the model's input bound, as DepthCompleter outputs
    it, so the network learns what the bound leaves to it; needs ModelConfig.input_bound > 0).
    Validation always scores the depth as DepthCompleter outputs it (bounded when
    input_bound > 0)."""

    epochs: int = 10
    batch_size: int = 4
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    warmup_fraction: float = 0.05
    clip_grad_norm: float = 1.0
    checkpoint_every: int = 500
    depth_loss: str = 'l1_l2'
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    init_weight: float = 0.2
    confidence_weight: float = 0.1
    smoothness_weight: float = 1e-3
    sparse_weight: float = 1.0
    supervision: str = 'dense'
    trainable: str = ''
    amp: bool = True
    precise_bn_batches: int = 0
    num_workers: int = 0
    seed: int = 0
    device: str = 'auto'
    progress: bool = True
    bounded_loss: bool = False


class Trainer:
    """Trains `CompletionNet(config)` on `train_set`, scores `val_set` after every epoch (the
    geometric mean of the frames' RMSE picks the best, see `validate`) and writes checkpoints
    to out_dir. `on_progress(dict)` is called after every step and epoch (the ROS node
    publishes it as diagnostics)."""

    def __init__(self, config: ModelConfig, options: TrainOptions, train_set: Dataset,
                 val_set: Optional[Dataset], out_dir: str | Path, resume: bool = False,
                 on_progress: Optional[Callable[[dict], None]] = None) -> None:
        if len(train_set) == 0:
            raise TrainingError('the training set is empty: 0 samples')
        if options.depth_loss not in DEPTH_LOSSES:
            raise TrainingError(f'depth_loss must be one of {DEPTH_LOSSES}, got '
                                f'{options.depth_loss!r}')
        if options.bounded_loss and not config.input_bound > 0:
            raise TrainingError('bounded_loss needs ModelConfig.input_bound > 0 (the bound it '
                                'trains through), got 0')
        if options.precise_bn_batches < 0:
            raise TrainingError(f'precise_bn_batches must be >= 0, got '
                                f'{options.precise_bn_batches}')
        self.options, self.train_set, self.val_set = options, train_set, val_set
        self.out_dir = Path(out_dir)
        self.on_progress = on_progress or (lambda _: None)
        self.rank, self.world, local_rank = distributed_ranks()
        self.device = training_device(options.device, local_rank, self.world)
        if self.device.type == 'cuda':
            torch.cuda.set_device(self.device)
        self.owns_process_group = self.world > 1 and not dist.is_initialized()
        if self.owns_process_group:
            dist.init_process_group('nccl' if self.device.type == 'cuda' else 'gloo')
        seed_everything(options.seed)
        self.step, self.epoch, self.best_score = 0, 0, math.inf
        state_dict = None
        if resume:
            state_dict, config = self._resume_weights(config)
        self.config = config
        self.model = CompletionNet(config).to(self.device)
        if state_dict is not None:
            load_weights(self.model, state_dict, self.out_dir / 'last.safetensors')
        self.frozen_batchnorms = self._freeze(options.trainable)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad],
                                           lr=options.learning_rate,
                                           weight_decay=options.weight_decay)
        # A set that makes whole batches itself (data.procedural) is iterated as it is.
        self.batch_source = isinstance(train_set, IterableDataset)
        self.sampler = (DistributedSampler(train_set, seed=options.seed)
                        if self.world > 1 and not self.batch_source else None)
        self.generator = torch.Generator()
        self.epoch_keys, sampler = None, None
        if not self.batch_source:
            sampler = self.sampler or RandomSampler(train_set, generator=self.generator)
            self.epoch_keys = EpochKeys(sampler) if hasattr(train_set, 'set_epoch') else None
        self.loader = self._loader(train_set, self.epoch_keys or sampler)
        self.val_loader = self._loader(val_set, None) if val_set is not None else None
        total_steps = options.epochs * len(self.loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(total_steps, options.warmup_fraction))
        self.amp_dtype = None
        if options.amp and self.device.type == 'cuda':
            self.amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported()
                              else torch.float16)
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp_dtype == torch.float16)
        if resume:
            self._resume_state()
        self.net = self.model
        if self.world > 1:  # the loss leaves some heads unused (e.g. confidence with CSPN)
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                find_unused_parameters=True)
        self.writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(self.out_dir / 'tb'))

    def _loader(self, dataset: Dataset, sampler: Optional[Any]) -> DataLoader:
        """Batches of `dataset` (samples collated by collate_samples, in `sampler`'s order),
        or its own whole batches when it is an IterableDataset that makes them."""
        if isinstance(dataset, IterableDataset):
            return DataLoader(dataset, batch_size=None, collate_fn=whole_batch)
        workers = self.options.num_workers
        # Workers are spawned, not forked: a fork copies locks that other threads (DDS of the
        # ROS node, OpenCV / torch thread pools) may hold, and the child can hang on them.
        return DataLoader(dataset, batch_size=self.options.batch_size,
                          collate_fn=collate_samples, sampler=sampler, num_workers=workers,
                          persistent_workers=workers > 0, drop_last=False,
                          multiprocessing_context='spawn' if workers > 0 else None)

    def _freeze(self, trainable: str) -> list[torch.nn.Module]:
        """Freeze the parameters whose names do not match the regex `trainable` ('' = train
        all); returns the BatchNorm layers without a trained parameter (kept in eval mode)."""
        if not trainable:
            return []
        try:
            pattern = re.compile(trainable)
        except re.error as error:
            raise TrainingError(f'--trainable {trainable!r} is not a regex: {error}') from None
        trained = []
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(bool(pattern.search(name)))
            if parameter.requires_grad:
                trained.append(name)
        if not trained:
            raise TrainingError(f'--trainable {trainable!r} matches no parameter name (e.g. '
                                f'{next(self.model.named_parameters())[0]!r})')
        LOGGER.info('training %d of %d parameter tensors (%s)', len(trained),
                    len(list(self.model.parameters())), trainable)
        return [module for module in self.model.modules()
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
                and not any(p.requires_grad for p in module.parameters(recurse=False))]

    def _resume_weights(self, config: ModelConfig) -> tuple[dict, ModelConfig]:
        path = self.out_dir / 'last.safetensors'
        if not path.is_file() or not (self.out_dir / STATE_FILE).is_file():
            raise TrainingError(f'cannot resume: {path} or {self.out_dir / STATE_FILE} missing')
        state_dict, saved_config, _ = load_checkpoint(path)
        if saved_config != config:
            LOGGER.warning('resuming with the checkpoint config %s (not %s)', saved_config, config)
        return state_dict, saved_config

    def _resume_state(self) -> None:
        path = self.out_dir / STATE_FILE
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
            self.optimizer.load_state_dict(state['optimizer'])
            self.scheduler.load_state_dict(state['scheduler'])
            self.scaler.load_state_dict(state['scaler'])
            self.step, self.epoch = int(state['step']), int(state['epoch'])
        except Exception as error:  # torch raises many types (zip, pickle, EOF, key errors)
            raise TrainingError(
                f'cannot resume: {path} is corrupt or truncated ({type(error).__name__}: '
                f'{error}); to restart from the last weights with a fresh optimizer and '
                f'schedule, run with --init {self.out_dir / "last.safetensors"} instead of '
                '--resume (and a new --out)') from None
        self.best_score = float(state.get('best_score', math.inf))  # older states: re-picked
        LOGGER.info('resumed at step %d, epoch %d', self.step, self.epoch)

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; returns dict(step, epoch, best_score, samples, skipped,
        epoch_seconds, val) with the last validation metrics. samples / skipped: samples trained
        on / dropped, summed over the epochs and processes (DistributedSampler pads each
        process's share to equal length, so with N processes a count is rounded up to N x).
        With options.epochs 0 nothing is trained: the starting weights (after precise BatchNorm
        if options.precise_bn_batches) are validated and saved as last, and as best when there
        is a validation set to score them."""
        summary: dict[str, Any] = {'samples': 0, 'skipped': 0, 'epoch_seconds': [], 'val': None}
        if self.epoch == self.options.epochs == 0:
            self._end_epoch(math.nan, 0, time.perf_counter(), summary)
        while self.epoch < self.options.epochs:
            start = time.perf_counter()
            used, skipped, mean_loss = self._train_epoch()
            summary['samples'] += used
            summary['skipped'] += skipped
            if used == 0:
                raise TrainingError(f'epoch {self.epoch}: all {skipped} samples were skipped (see '
                                    'the warnings above for the reasons); nothing to train on')
            if skipped:
                LOGGER.warning('epoch %d: skipped %d of %d samples', self.epoch, skipped,
                               used + skipped)
            self.epoch += 1
            self._end_epoch(mean_loss, skipped, start, summary)
        if self.writer is not None:
            self.writer.flush()
        if self.world > 1:  # no rank tears its connections down while rank 0 still saves
            dist.barrier()  # (gloo aborted a rank that left early: seen once in CI)
        summary.update(step=self.step, epoch=self.epoch, best_score=self.best_score)
        return summary

    def _end_epoch(self, mean_loss: float, skipped: int, start: float,
                   summary: dict[str, Any]) -> None:
        """After the last epoch precise BatchNorm (options.precise_bn_batches); then validate,
        log, keep the best score and save the checkpoints."""
        if self.epoch == self.options.epochs and self.options.precise_bn_batches:
            self.recalibrate_batchnorm(self.options.precise_bn_batches)
        val = None
        if self.val_set is not None:
            val = self._from_rank_zero(self.validate() if self.rank == 0 else None)
        score = val['rmse_geomean'] if val is not None and val['frames'] else mean_loss
        summary['epoch_seconds'].append(time.perf_counter() - start)
        if self.rank == 0:
            LOGGER.info('epoch %d: mean loss %.5f, validation RMSE %s m (geometric mean %s m), '
                        '%.1f s', self.epoch, mean_loss,
                        *(f'{val[k]:.4f}' if val and val['frames'] else '-'
                          for k in ('rmse', 'rmse_geomean')),
                        summary['epoch_seconds'][-1])
        summary['val'] = val
        improved = score < self.best_score  # the same in every process
        self.best_score = min(score, self.best_score)
        if self.rank == 0:
            if val is not None:
                for key, value in val.items():
                    self.writer.add_scalar(f'val/{key}', value, self.step)
            if improved:
                self._save('best')
            self._save('last')
            self._save_state()
        self.on_progress({'epoch': self.epoch, 'step': self.step, 'loss': mean_loss,
                          'skipped': skipped, 'val': val})

    @torch.no_grad()
    def recalibrate_batchnorm(self, batches: int) -> int:
        """Precise BatchNorm: reset the running mean / variance of the trained BatchNorm layers
        and set them to the plain average of their batch statistics over the next `batches`
        training batches (at most one pass; training augmentation and train mode, no gradients,
        no weight changes). The running averages of training (momentum 0.1) are ruled by the
        last few small batches. Frozen layers (`trainable`) keep theirs. Under torchrun each
        process averages over its own share and rank 0's statistics are saved. Returns the
        number of batches used."""
        layers = [module for module in self.model.modules()
                  if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
                  and module not in self.frozen_batchnorms]
        momenta = [layer.momentum for layer in layers]
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over the batches
        self._start_pass()
        used = 0
        for batch, _ in self.loader:
            if used == batches:
                break
            if batch is None:
                continue
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                self.model(batch['rgb'].to(self.device), batch['sparse'].to(self.device))
            used += 1
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        if used == 0:
            raise TrainingError('precise BatchNorm: all training samples were skipped')
        LOGGER.info('precise BatchNorm: statistics of %d layers averaged over %d batches',
                    len(layers), used)
        return used

    def close(self) -> None:
        """Close the logs and leave the process group this trainer joined (torchrun runs)."""
        if self.writer is not None:
            self.writer.close()
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()

    def _sum_over_processes(self, *values: float) -> list[float]:
        """Each value summed over all processes (the values themselves in one process)."""
        if self.world == 1:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.tolist()

    def _from_rank_zero(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object) in every process."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _train_epoch(self) -> tuple[int, int, float]:
        """One pass over the loader -> (samples used, samples skipped, mean loss), over all
        processes."""
        from tqdm import tqdm
        self._start_pass()
        used = skipped = 0
        losses = []
        bar = tqdm(self.loader, desc=f'epoch {self.epoch + 1}/{self.options.epochs}',
                   disable=not self.options.progress or self.rank != 0, leave=False)
        # A process whose batches were all skipped runs out of steps early: join lets it
        # shadow the others' gradient all-reduces instead of hanging them.
        with self.net.join() if self.world > 1 else contextlib.nullcontext():
            for batch, dropped in bar:
                skipped += dropped
                if batch is None:
                    continue
                used += batch['rgb'].shape[0]
                loss = self._train_step({k: v.to(self.device) for k, v in batch.items()})
                losses.append(loss)
                bar.set_postfix(loss=f'{loss:.4f}')
                self.on_progress({'epoch': self.epoch, 'step': self.step, 'loss': loss})
        used, skipped, loss_sum, loss_count = self._sum_over_processes(
            used, skipped, sum(losses), len(losses))
        return int(used), int(skipped), loss_sum / loss_count if loss_count else math.inf

    def _start_pass(self) -> None:
        """Train mode and this epoch's random draws (augmentation, order, process shares)."""
        if self.epoch_keys is not None:
            self.epoch_keys.epoch = self.epoch
        if self.batch_source:
            self.train_set.set_epoch(self.epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
        self.generator.manual_seed(self.options.seed + self.epoch)
        self.net.train()
        for module in self.frozen_batchnorms:  # running statistics of frozen layers stay put
            module.eval()

    def _train_step(self, batch: dict[str, torch.Tensor]) -> float:
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            outputs = self.net(batch['rgb'], batch['sparse'])
        loss = self.loss(outputs, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.options.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        value = float(loss.detach())
        if self.rank == 0:
            self.writer.add_scalar('train/loss', value, self.step)
            self.writer.add_scalar('train/lr', self.scheduler.get_last_lr()[0], self.step)
            if self.step % self.options.checkpoint_every == 0:
                self._save('last')
                self._save_state()
        return value

    def loss(self, outputs: dict[str, torch.Tensor],
             batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Supervised: the depth loss (options.depth_loss) on depth (and init_weight x on
        depth_init) against target, + confidence_weight x the confidence's BCE to the
        good-pixel indicator of the (detached) depth. Photometric: min-reprojection photometric
        loss over the source views + edge-aware smoothness + L1 to the input points."""
        o = self.options
        depth, init = outputs['depth'].float(), outputs['depth_init'].float()
        if o.supervision != 'photometric':
            target = batch['target']
            if o.bounded_loss:
                depth = self._bounded(depth, batch['sparse'])
            return (self._depth_loss(depth, target) + o.init_weight * self._depth_loss(init, target)
                    + o.confidence_weight * confidence_loss(outputs['confidence'], depth, target))
        sources = batch['source_rgbs'].unbind(1)
        poses = batch['T_sources_from_target'].unbind(1)
        return (photometric_loss(batch['rgb'], list(sources), depth, batch['K'], list(poses))
                + o.smoothness_weight * edge_aware_smoothness(depth, batch['rgb'])
                + o.sparse_weight * masked_l1(depth, batch['sparse']))

    def _depth_loss(self, depth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        o = self.options
        if o.depth_loss == 'frame_rmse':
            return frame_rmse(depth, target)
        if o.depth_loss == 'scaled':
            return scaled_frame_loss(depth, target)
        return depth_loss(depth, target, o.l1_weight, o.l2_weight)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean over validation frames of compute_metrics(depth, target), plus rmse_geomean
        (`metrics.geometric_mean_rmse`), the score that picks the best checkpoint: the
        arithmetic mean is ruled by the metre-scale errors of outdoor LiDAR frames. Logs
        pictures of the first batch to TensorBoard."""
        self.model.eval()
        frames = []
        for batch, _ in self.val_loader:
            if batch is None:
                continue
            batch = {key: value.cpu() for key, value in batch.items()}
            sparse = batch['sparse'].to(self.device)
            depth = self.model(batch['rgb'].to(self.device), sparse)['depth'].float()
            depth = self._bounded(depth, sparse).cpu()
            for pred, target in zip(depth[:, 0].numpy(), batch['target'][:, 0].numpy()):
                frames.append(compute_metrics(pred, target))
            if len(frames) == depth.shape[0] and self.writer is not None:
                self._log_pictures(batch, depth)
        return {**mean_metrics(frames), 'rmse_geomean': geometric_mean_rmse(frames)}

    def _bounded(self, depth: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """depth (B,1,H,W) as DepthCompleter outputs it: bounded by the network's inputs when
        config.input_bound > 0 (differentiable where not clamped)."""
        if self.config.input_bound <= 0:
            return depth
        return bound_by_inputs(depth, sparse, self.config.input_bound)

    def _log_pictures(self, batch: dict[str, torch.Tensor], depth: torch.Tensor) -> None:
        """rgb | sparse | prediction of the first validation frame."""
        target = batch['target'][0, 0].numpy()
        top = float(np.percentile(target[target > 0], 99)) if np.any(target > 0) else 10.0
        rgb = (batch['rgb'][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        panels = [rgb] + [colorize_depth(d, 0.0, top)[..., ::-1]
                          for d in (batch['sparse'][0, 0].numpy(), depth[0, 0].numpy())]
        self.writer.add_image('val/rgb_sparse_prediction', np.concatenate(panels, axis=1),
                              self.step, dataformats='HWC')

    def _save(self, name: str) -> None:
        save_checkpoint(self.out_dir / f'{name}.safetensors', self.model.state_dict(), self.config,
                        {'step': self.step, 'epoch': self.epoch,
                         'supervision': self.options.supervision,
                         'trainable': self.options.trainable or 'all'})

    def _save_state(self) -> None:
        torch.save({'optimizer': self.optimizer.state_dict(),
                    'scheduler': self.scheduler.state_dict(), 'scaler': self.scaler.state_dict(),
                    'step': self.step, 'epoch': self.epoch, 'best_score': self.best_score},
                   self.out_dir / STATE_FILE)
