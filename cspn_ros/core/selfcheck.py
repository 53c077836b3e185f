"""Live self-check: is the model beating the classical fill on this robot's own data?

Each frame a small seeded share of the projected input points is held out (`HeldOutPoints`,
applied by `CompletionPipeline` before the model, so the model never sees them). `SelfCheck`
scores the model's output and the classical fill of the same (reduced) input on those points,
keeps rolling RMSE / MAE of both over the last `window` scored frames and the share of frames
the model wins, and decides the fallback: with `fallback='classical'` the published depth is
the classical fill while the model's rolling held-out RMSE is above the fill's, and the model
again once its RMSE is `hysteresis` below the fill's; a switch needs `min_frames` scored frames
since the previous one. The classical fill runs on the CPU (12-30 ms at 640x480 / 1216x352,
BENCHMARKS.md), so it is computed on every `classical_every`-th frame only, and on every frame
while the fallback is active (it is published then); only those frames are scored.

Live (`before_publish` then `score`): which depth to publish is decided from the earlier frames'
scores, so a frame publishing the model waits for no classical fill; the node scores it after
publishing, on a background thread (core.background). Offline (`check`): each frame is scored,
then published by the updated decision (`evaluate`, which reports the same score on bags
without ground truth). Thread-safe: the statistics are updated and read under one lock. Depth
(H,W) float32 metres, 0 = none.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import threading
from typing import Any, Optional

import numpy as np

from cspn_ros.core.camera import array_module

FALLBACKS = ('none', 'classical')
_PRIME = 2_147_483_647  # 2**31 - 1: hash values stay below 2**31, their squares fit in int64


class HeldOutPoints:
    """A seeded pseudo-random share of a frame's valid depth pixels, the same in numpy and
    torch (an integer hash of the pixel index, the seed and a per-frame key such as the image
    stamp), so the node, bag replay and the GPU path hold out the same points."""

    def __init__(self, share: float, seed: int = 0) -> None:
        if not 0.0 < share < 1.0:
            raise ValueError(f'held-out share must be in (0, 1), got {share}')
        self.share = float(share)
        self.seed = int(seed)

    def split(self, sparse: Any, frame_key: int) -> tuple[Any, Any]:
        """(H,W) sparse depth (numpy or torch) -> (model input, held-out points), the same kind;
        each is 0 where the other has the point."""
        xp = array_module(sparse)
        height, width = sparse.shape
        if xp is np:
            index = np.arange(height * width, dtype=np.int64)
        else:
            index = xp.arange(height * width, dtype=xp.int64, device=sparse.device)
        key = (self.seed * 1_000_003 + int(frame_key)) % _PRIME
        hashed = (index * 48271 + key) % _PRIME
        hashed = (hashed * hashed + key) % _PRIME
        hashed = (hashed * hashed + 12345) % _PRIME
        held = (hashed < int(self.share * _PRIME)).reshape(height, width) & (sparse > 0)
        zero = xp.zeros_like(sparse)
        return xp.where(held, zero, sparse), xp.where(held, sparse, zero)


@dataclasses.dataclass(frozen=True)
class FrameScore:
    """Squared and absolute error sums (m^2, m) of model and classical fill on `count` points."""

    count: int
    model_se: float
    model_ae: float
    classical_se: float
    classical_ae: float

    @property
    def model_wins(self) -> bool:
        return self.model_se < self.classical_se


def score_frame(held_out: np.ndarray, model: np.ndarray, classical: np.ndarray) -> FrameScore:
    """Errors of model and classical (H,W) depth at the held-out (H,W) points (> 0); a method's
    missing output (0) counts as an error of the whole held-out depth."""
    points = held_out > 0
    truth = held_out[points].astype(np.float64)
    model_error = model[points].astype(np.float64) - truth
    classical_error = classical[points].astype(np.float64) - truth
    return FrameScore(int(points.sum()), float((model_error ** 2).sum()),
                      float(np.abs(model_error).sum()), float((classical_error ** 2).sum()),
                      float(np.abs(classical_error).sum()))


@dataclasses.dataclass(frozen=True)
class SelfCheckConfig:
    """holdout_share: share of input points held out per frame (0 = self-check off); seed;
    window: scored frames in the rolling statistics; classical_every: the classical fill (and
    the score) on every n-th frame (every frame while the fallback is active); fallback: 'none'
    or 'classical'; min_frames: scored frames before the first switch and between switches;
    hysteresis: back to the model once its RMSE < (1 - hysteresis) * the fill's."""

    holdout_share: float = 0.03
    seed: int = 0
    window: int = 30
    classical_every: int = 5
    fallback: str = 'none'
    min_frames: int = 5
    hysteresis: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout_share < 1.0:
            raise ValueError(f'holdout_share must be in [0, 1), got {self.holdout_share}')
        if self.fallback not in FALLBACKS:
            raise ValueError(f'fallback must be one of {FALLBACKS}, got {self.fallback!r}')
        if self.fallback != 'none' and self.holdout_share <= 0:
            raise ValueError(f'fallback {self.fallback!r} needs holdout_share > 0 (it decides '
                             'on the held-out points)')
        if self.window < 1 or self.classical_every < 1 or self.min_frames < 1:
            raise ValueError('window, classical_every and min_frames must be >= 1')
        if not 0.0 <= self.hysteresis < 1.0:
            raise ValueError(f'hysteresis must be in [0, 1), got {self.hysteresis}')


@dataclasses.dataclass(frozen=True)
class PendingScore:
    """A published frame still to be scored: the model's `FrameResult` (held_out, its output
    dense_unblanked, its input rgb / sparse) and the classical fill when it was computed already
    (published by the fallback), else None (computed when scored)."""

    frame: Any
    classical_depth: Optional[np.ndarray]


class SelfCheck:
    """Rolling held-out scores of the model and the classical fill, and the fallback switch.

    classical: a completer with `.complete(rgb, sparse) -> (depth, ...)` on the host, normally
    `DepthCompleter.from_config('classical')` (evaluate's baseline, the node's fallback).
    """

    def __init__(self, config: SelfCheckConfig, classical: Any) -> None:
        self.config = config
        self.classical = classical
        self.scores: collections.deque[FrameScore] = collections.deque(maxlen=config.window)
        self.frames = 0
        self.frames_scored = 0
        self.fallback_active = False
        self.frames_skipped = 0
        self.switches = 0
        self._scored_since_switch = 0
        self._lock = threading.RLock()  # the scorer thread updates what the others read

    def holdout(self) -> Optional[HeldOutPoints]:
        """The pipeline's held-out points (None when the self-check is off)."""
        if self.config.holdout_share <= 0:
            return None
        return HeldOutPoints(self.config.holdout_share, self.config.seed)

    def before_publish(self, result: Any) -> tuple[Any, Optional[PendingScore]]:
        """One completed frame (`FrameResult` with `held_out`) -> (the frame to publish, by the
        rolling scores of the earlier frames: the result, or with the fallback active a copy
        whose depth is the classical fill, computed here; its PendingScore when the frame is to
        be scored, else None). Computes no classical fill while the model is published."""
        with self._lock:
            due = self._count_frame()
            fallback_active = self.fallback_active
        if result.held_out is None or not due:
            return result, None
        if not fallback_active:
            return result, PendingScore(result, None)
        classical_depth = self._classical_fill(result)
        return _as_classical(result, classical_depth), PendingScore(result, classical_depth)

    def score(self, pending: PendingScore) -> str:
        """Score a frame from before_publish (the classical fill computed now when it was not
        published) and update the rolling statistics and the fallback; the message when the
        fallback switched, else ''. Safe on another thread than before_publish."""
        classical_depth = pending.classical_depth
        if classical_depth is None:
            classical_depth = self._classical_fill(pending.frame)
        return self._record(pending.frame, classical_depth)

    def skip(self) -> None:
        """Count a frame due for scoring that was not scored (the scorer was still busy)."""
        with self._lock:
            self.frames_skipped += 1

    def check(self, result: Any, classical_depth: Optional[np.ndarray] = None
              ) -> tuple[Any, str]:
        """Score one frame now, then choose its output by the updated scores (offline replay):
        (the result, or with the fallback active a copy whose depth is the classical fill; a
        message when the fallback switched, else ''). classical_depth: the fill of
        result.sparse when the caller has it already (evaluate's baseline), else it is computed
        when due."""
        with self._lock:
            due = self._count_frame()
        if result.held_out is None or not (due or classical_depth is not None):
            return result, ''
        if classical_depth is None:
            classical_depth = self._classical_fill(result)
        event = self._record(result, classical_depth)
        if self.fallback_active:
            result = _as_classical(result, classical_depth)
        return result, event

    def _count_frame(self) -> bool:
        """Count a frame (under the lock); True when it is due for scoring."""
        self.frames += 1
        return self.fallback_active or (self.frames - 1) % self.config.classical_every == 0

    def _classical_fill(self, result: Any) -> np.ndarray:
        """(H,W) float32 metres: the classical fill of the frame's model input."""
        return np.asarray(self.classical.complete(result.rgb, result.sparse).depth,
                          dtype=np.float32)

    def _record(self, result: Any, classical_depth: np.ndarray) -> str:
        """Add the frame's score to the rolling statistics and decide the fallback; the
        message when it switched, else ''."""
        score = score_frame(result.held_out, result.dense_unblanked, classical_depth)
        if not score.count:
            return ''
        with self._lock:
            self.scores.append(score)
            self.frames_scored += 1
            self._scored_since_switch += 1
            return self._decide()

    def _decide(self) -> str:
        """Switch the fallback when the rolling scores say so; the message, or ''."""
        if self.config.fallback == 'none' or self._scored_since_switch < self.config.min_frames:
            return ''
        model, classical = self.rolling('model')['rmse'], self.rolling('classical')['rmse']
        if not self.fallback_active and model > classical:
            self.fallback_active = True
        elif self.fallback_active and model < (1 - self.config.hysteresis) * classical:
            self.fallback_active = False
        else:
            return ''
        self.switches += 1
        self._scored_since_switch = 0
        if self.fallback_active:
            return (f'self-check: the model is worse than the classical fill on held-out points '
                    f'(rolling RMSE {model:.3f} m vs {classical:.3f} m): publishing the classical '
                    'fill until it recovers')
        return (f'self-check: the model recovered (rolling RMSE {model:.3f} m vs '
                f'{classical:.3f} m): publishing the model again')

    def rolling(self, method: str) -> dict[str, float]:
        """{'rmse', 'mae'} metres of 'model' or 'classical' pooled over the window (NaN when
        nothing was scored)."""
        with self._lock:
            scores = list(self.scores)
        count = sum(score.count for score in scores)
        if not count:
            return {'rmse': math.nan, 'mae': math.nan}
        se = sum(getattr(score, f'{method}_se') for score in scores)
        ae = sum(getattr(score, f'{method}_ae') for score in scores)
        return {'rmse': math.sqrt(se / count), 'mae': ae / count}

    def summary(self) -> dict[str, Any]:
        """The rolling figures: model/classical RMSE and MAE (m), the share of scored frames the
        model wins, frames and points scored in the window, frames skipped (scorer busy), the
        published source."""
        with self._lock:
            model, classical = self.rolling('model'), self.rolling('classical')
            scores = list(self.scores)
            return {'model_rmse': model['rmse'], 'model_mae': model['mae'],
                    'classical_rmse': classical['rmse'], 'classical_mae': classical['mae'],
                    'model_wins_share': (float(np.mean([score.model_wins for score in scores]))
                                         if scores else math.nan),
                    'frames_in_window': len(scores),
                    'points_in_window': sum(score.count for score in scores),
                    'frames_scored': self.frames_scored, 'frames_skipped': self.frames_skipped,
                    'fallback': self.config.fallback,
                    'publishing': 'classical fill' if self.fallback_active else 'model',
                    'switches': self.switches}

    def diagnostic_values(self) -> dict[str, str]:
        """summary() as /diagnostics key -> text."""
        s = self.summary()
        metres = {key: f'{s[key]:.4f}' for key in ('model_rmse', 'model_mae', 'classical_rmse',
                                                     'classical_mae')}
        return {'self-check model RMSE (m)': metres['model_rmse'],
                'self-check model MAE (m)': metres['model_mae'],
                'self-check classical RMSE (m)': metres['classical_rmse'],
                'self-check classical MAE (m)': metres['classical_mae'],
                'self-check model wins (share of frames)': f'{s["model_wins_share"]:.3f}',
                'self-check frames in window': str(s['frames_in_window']),
                'self-check held-out points in window': str(s['points_in_window']),
                'self-check frames skipped (scorer busy)': str(s['frames_skipped']),
                'self-check publishing': s['publishing'],
                'self-check fallback': s['fallback']}


def _as_classical(result: Any, classical_depth: np.ndarray) -> Any:
    """A copy of the frame whose published depth is the classical fill."""
    return dataclasses.replace(result, dense=classical_depth, dense_unblanked=classical_depth,
                               confidence=(classical_depth > 0).astype(np.float32),
                               dense_32fc1=None)
