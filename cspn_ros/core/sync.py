"""Approximate-time pairing of sensor messages by their header stamps (int nanoseconds).

The live node and offline bag replay both feed messages through `ApproximateTimeMatcher`, so a
frame paired offline is the frame the robot pairs. Pairing never looks at arrival time: the
result depends only on the stamps and on the order in which messages are added.

Policy. One topic is the reference (default: the first, the image). Every reference message is
used at most once; for every other topic it takes the message whose stamp is nearest to its own
(ties go to the older message) and within `slop_s`. Non-reference messages may be reused by
several reference messages (a CameraInfo or a 10 Hz cloud may pair with several 30 Hz images).
A choice on a topic is final once it cannot be beaten: that topic holds a message stamped at or
after the reference stamp (stamps on one topic only grow, so every later message is farther).
A set is emitted as soon as all its choices are final; sets come out in reference-stamp order.
A reference message whose final choices miss the slop on some topic is dropped as unmatched.
Messages arriving late (e.g. a LiDAR with 150 ms latency) are waited for, up to `queue_size`
pending reference messages; beyond that the oldest pending one is evicted.

Per topic, stamps must grow: a message older than the newest one already received on its topic
is dropped as out of order, and a second message with the same stamp as the newest is dropped as
a duplicate (the first one wins). When the clock jumps back (a bag loops, a simulator restarts),
call `reset()`; `detect_jump_back` tells when.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any, Optional, Sequence


@dataclasses.dataclass(frozen=True)
class MatchedSet:
    """One paired frame: stamp_ns is the reference message's stamp; per topic message and stamp."""

    stamp_ns: int
    messages: dict[str, Any]
    stamps: dict[str, int]


class ApproximateTimeMatcher:
    """Pairs messages of several topics by nearest header stamp (see the module docstring)."""

    def __init__(self, topics: Sequence[str], slop_s: float, queue_size: int = 10,
                 reference: Optional[str] = None) -> None:
        """topics: names, at least one; slop_s: largest allowed |stamp - reference stamp|, seconds;
        queue_size: messages kept per topic; reference: the topic that drives pairing (default the
        first topic)."""
        self.topics = tuple(topics)
        if not self.topics or len(set(self.topics)) != len(self.topics):
            raise ValueError(f'topics must be non-empty and distinct, got {list(topics)}')
        if slop_s < 0:
            raise ValueError(f'slop_s must be >= 0, got {slop_s}')
        if queue_size < 1:
            raise ValueError(f'queue_size must be >= 1, got {queue_size}')
        self.reference = self.topics[0] if reference is None else reference
        if self.reference not in self.topics:
            raise ValueError(f'reference {self.reference!r} is not one of {list(self.topics)}')
        self.slop_ns = int(round(slop_s * 1e9))
        self.queue_size = queue_size
        self._others = tuple(t for t in self.topics if t != self.reference)
        self._counts = {'matched': 0, 'dropped_out_of_order': 0, 'dropped_duplicate': 0,
                        'dropped_unmatched': 0, 'evicted': 0, 'resets': 0}
        self._received = {t: 0 for t in self.topics}
        self._clear()

    def reset(self) -> None:
        """Forget all queued messages and stamps (counters are kept); call after a clock jump."""
        self._clear()
        self._counts['resets'] += 1

    def _clear(self) -> None:
        self._queues: dict[str, deque[tuple[int, Any]]] = {t: deque() for t in self.topics}
        self._newest: dict[str, Optional[int]] = {t: None for t in self.topics}
        self._last_emitted: Optional[int] = None

    def detect_jump_back(self, topic: str, stamp_ns: int, threshold_s: float = 1.0) -> bool:
        """True when stamp_ns is more than threshold_s older than the newest stamp seen on the
        same topic since the last reset, i.e. the clock jumped back and `reset()` should be
        called. Per topic, so a topic delivered late behind the others (a backlog of large
        clouds) is not mistaken for a jump; a real jump shows on every topic at once."""
        newest = self._newest[topic]
        return newest is not None and stamp_ns < newest - int(round(threshold_s * 1e9))

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: received (per topic), matched, dropped_out_of_order, dropped_duplicate,
        dropped_unmatched, evicted, resets."""
        return {'received': dict(self._received), **self._counts}

    def add(self, topic: str, stamp_ns: int, msg: Any) -> list[MatchedSet]:
        """Queue one message; return the sets completed by it (possibly none), oldest first."""
        if topic not in self._queues:
            raise KeyError(f'unknown topic {topic!r}; matcher topics are {list(self.topics)}')
        stamp_ns = int(stamp_ns)
        self._received[topic] += 1
        newest = self._newest[topic]
        if newest is not None and stamp_ns <= newest:
            key = 'dropped_duplicate' if stamp_ns == newest else 'dropped_out_of_order'
            self._counts[key] += 1
            return []
        self._newest[topic] = stamp_ns
        queue = self._queues[topic]
        queue.append((stamp_ns, msg))
        if len(queue) > self.queue_size:
            queue.popleft()
            self._counts['evicted'] += 1
        matched = self._resolve()
        self._prune()
        return matched

    def _resolve(self) -> list[MatchedSet]:
        """Emit or drop pending reference messages, oldest first, while their choices are final."""
        matched = []
        pending = self._queues[self.reference]
        while pending:
            ref_stamp, ref_msg = pending[0]
            if any(self._newest[t] is None or self._newest[t] < ref_stamp for t in self._others):
                break  # some topic may still deliver a nearer message
            pending.popleft()
            self._last_emitted = ref_stamp
            chosen = {t: self._nearest(t, ref_stamp) for t in self._others}
            if any(c is None for c in chosen.values()):
                self._counts['dropped_unmatched'] += 1
                continue
            messages = {self.reference: ref_msg}
            stamps = {self.reference: ref_stamp}
            for t, (stamp, msg) in chosen.items():
                messages[t], stamps[t] = msg, stamp
            self._counts['matched'] += 1
            matched.append(MatchedSet(ref_stamp, messages, stamps))
        return matched

    def _nearest(self, topic: str, ref_stamp: int) -> Optional[tuple[int, Any]]:
        """The queued message of topic nearest to ref_stamp within the slop (ties: older)."""
        best = None
        for stamp, msg in self._queues[topic]:
            gap = abs(stamp - ref_stamp)
            if gap <= self.slop_ns and (best is None or gap < best[0]):
                best = (gap, stamp, msg)
        return None if best is None else best[1:]

    def _prune(self) -> None:
        """Drop non-reference messages that no future reference message can choose: those beaten by
        a newer message at or before the oldest possible future reference stamp, or too old."""
        pending = self._queues[self.reference]
        horizon = pending[0][0] if pending else self._last_emitted
        if horizon is None:
            return
        for topic in self._others:
            queue = self._queues[topic]
            while queue and (queue[0][0] < horizon - self.slop_ns
                             or (len(queue) > 1 and queue[1][0] <= horizon)):
                queue.popleft()
