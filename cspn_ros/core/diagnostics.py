"""Health figures of the completion node, aggregated without ROS (the node turns them into a
diagnostic_msgs/DiagnosticArray).

Times are float seconds on a monotonic clock the caller passes in (`now`), so everything here is
deterministic and testable. Memory is bounded: rates keep the arrivals of one window, percentiles
the last `capacity` samples.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any, Iterable, Mapping, Optional

import numpy as np

#: diagnostic_msgs/DiagnosticStatus levels.
OK, WARN, ERROR = 0, 1, 2
#: Latency percentiles reported.
PERCENTILES = (50, 95, 99)
#: Seconds: the shortest span a rate is averaged over.
MIN_SPAN_S = 1.0


class RateMeter:
    """Events per second over the last `window_s` seconds, or since the events (re)started when
    that is more recent (at least MIN_SPAN_S): a stream that began 2 s ago at 130 Hz reads
    130 Hz, not 2 x 130 / window_s."""

    def __init__(self, window_s: float = 5.0) -> None:
        if window_s <= 0:
            raise ValueError(f'window_s must be positive, got {window_s}')
        self.window_s = float(window_s)
        self._times: deque[float] = deque()
        self._since = 0.0  # first event of the current stream

    def tick(self, now: float) -> None:
        """Count one event at time now (s)."""
        self._forget(now)
        if not self._times:  # first event, or the first after a window without any
            self._since = now
        self._times.append(now)

    def rate(self, now: float) -> float:
        """Hz: events in (now - window_s, now] divided by the window, or by the time since the
        stream started when shorter (but at least min(MIN_SPAN_S, window_s))."""
        self._forget(now)
        if not self._times:
            return 0.0
        span = min(self.window_s, max(now - self._since, min(MIN_SPAN_S, self.window_s)))
        return len(self._times) / span

    def _forget(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()


class PercentileTracker:
    """Percentiles of the last `capacity` samples (a ring buffer: memory never grows)."""

    def __init__(self, capacity: int = 1000) -> None:
        if capacity < 1:
            raise ValueError(f'capacity must be >= 1, got {capacity}')
        self._samples: deque[float] = deque(maxlen=capacity)

    def add(self, value: float) -> None:
        self._samples.append(float(value))

    def __len__(self) -> int:
        return len(self._samples)

    def percentiles(self, which: Iterable[float] = PERCENTILES) -> dict[float, float]:
        """{p: value} (linear interpolation, numpy's default); NaN for each p when empty."""
        which = tuple(which)
        if not self._samples:
            return {p: float('nan') for p in which}
        values = np.percentile(np.fromiter(self._samples, float), which)
        return {p: float(v) for p, v in zip(which, values)}


def silent_topics(now: float, last_arrival: Mapping[str, Optional[float]],
                  timeout_s: float) -> list[str]:
    """Topics with no message (ever, or for more than timeout_s) at now (s)."""
    return [topic for topic, arrival in last_arrival.items()
            if arrival is None or now - arrival > timeout_s]


def assess(now: float, last_arrival: Mapping[str, Optional[float]],
           inputs_since: Optional[float], last_output: Optional[float], timeout_s: float,
           drop_fraction: float, drop_warn: float = 0.5) -> tuple[int, str]:
    """(level, message) of the node's health at now (s).

    last_arrival: topic -> time of its last message (None = never); inputs_since: since when
    every input has been arriving without a gap over timeout_s; last_output: last publish.
    ERROR: all inputs arrive, yet nothing was published for timeout_s of that time. WARN: some
    input silent for timeout_s (named), or more than drop_warn of the paired frames dropped as
    stale. Otherwise OK.
    """
    silent = silent_topics(now, last_arrival, timeout_s)
    if silent:
        return WARN, f'nothing received on {", ".join(silent)} for {timeout_s:g} s'
    since = inputs_since if last_output is None else max(inputs_since, last_output)
    idle = now - since
    if idle > timeout_s:
        return ERROR, f'no output for {idle:.1f} s although all inputs arrive'
    if drop_fraction > drop_warn:
        return WARN, (f'{100 * drop_fraction:.0f}% of paired frames dropped as stale '
                      '(the model is slower than the sensors)')
    return OK, 'running'


@dataclasses.dataclass
class CompletionDiagnostics:
    """Counters and meters of one completion node; `report(...)` gives (level, message, values).

    topics: the input topics, reference (image) first; timeout_s: silence that counts as a lost
    input, and output silence that counts as an error; window_s: rate window; capacity: samples
    kept for the latency and stage-time percentiles. Not thread-safe: the caller locks.
    """

    topics: tuple[str, ...]
    timeout_s: float = 5.0
    window_s: float = 5.0
    capacity: int = 1000

    def __post_init__(self) -> None:
        self.rates = {topic: RateMeter(self.window_s) for topic in self.topics}
        self.output_rate = RateMeter(self.window_s)
        self.latency = PercentileTracker(self.capacity)
        self.stage_times: dict[str, PercentileTracker] = {}
        self.last_output: Optional[float] = None
        self.published = 0
        self.failed = 0
        self.last_error: Optional[tuple[str, float]] = None
        self.forget_inputs()

    def forget_inputs(self) -> None:
        """No input seen yet (start, or inputs stopped on purpose); counters are kept."""
        self.last_arrival: dict[str, Optional[float]] = {topic: None for topic in self.topics}
        self._streak_start: dict[str, float] = {}

    def received(self, topic: str, now: float) -> None:
        """One message arrived on topic at now (s)."""
        previous = self.last_arrival[topic]
        if previous is None or now - previous > self.timeout_s:
            self._streak_start[topic] = now  # the topic (re)appeared
        self.rates[topic].tick(now)
        self.last_arrival[topic] = now

    def published_frame(self, now: float, latency_s: float, timings: Mapping[str, float]) -> None:
        """One frame published at now: latency (image stamp -> publish, s), seconds per stage."""
        self.output_rate.tick(now)
        self.last_output = now
        self.published += 1
        self.latency.add(latency_s)
        for stage, seconds in timings.items():
            self.stage_times.setdefault(stage, PercentileTracker(self.capacity)).add(seconds)

    def error(self, text: str, now: float) -> None:
        """A frame failed with text at now."""
        self.failed += 1
        self.last_error = (text, now)

    def report(self, now: float, matcher_stats: Mapping[str, Any], stale_dropped: int,
               extra: Mapping[str, Any] = (), never_taken: int = 0
               ) -> tuple[int, str, dict[str, str]]:
        """(level, message, key -> value text) at now; `extra` (device, model, ...) is appended.

        stale_dropped counts matched sets dropped for a newer one plus the never_taken reference
        messages (overwritten before the node took them, so never matched): the stale share is
        stale_dropped / (matched + never_taken), at most 1.

        Keys: `rate <topic> (Hz)`, `output rate (Hz)` (over the last `rate window (s)`),
        `received <topic>` and the other matcher counters, `pairing success` (matched /
        reference messages received), `stale dropped`, `published`, `failed`,
        `latency p50/p95/p99 (ms)`, `time <stage> p50/p95 (ms)` (stages: `wait`, image stamp ->
        work starts; the pipeline's; `serialize`, `publish`), `last error`, `last error age (s)`.
        """
        received = dict(matcher_stats.get('received', {}))
        matched = int(matcher_stats.get('matched', 0))
        reference = received.get(self.topics[0], 0)
        inputs_since = max(self._streak_start.values()) if len(self._streak_start) == len(
            self.topics) else None
        offered = matched + never_taken
        level, message = assess(now, self.last_arrival, inputs_since, self.last_output,
                                self.timeout_s, stale_dropped / offered if offered else 0.0)
        values = {f'rate {topic} (Hz)': f'{meter.rate(now):.2f}'
                  for topic, meter in self.rates.items()}
        values['output rate (Hz)'] = f'{self.output_rate.rate(now):.2f}'
        values['rate window (s)'] = f'{self.window_s:g}'
        values.update({f'received {topic}': str(count) for topic, count in received.items()})
        values.update({key: str(value) for key, value in matcher_stats.items()
                       if key != 'received'})
        values['pairing success'] = f'{matched / reference:.3f}' if reference else 'n/a'
        values['stale dropped'] = str(stale_dropped)
        values['published'] = str(self.published)
        values['failed'] = str(self.failed)
        for p, seconds in self.latency.percentiles().items():
            values[f'latency p{p:g} (ms)'] = f'{1e3 * seconds:.1f}'
        for stage, tracker in self.stage_times.items():
            for p, seconds in tracker.percentiles((50, 95)).items():
                values[f'time {stage} p{p:g} (ms)'] = f'{1e3 * seconds:.2f}'
        text, at = self.last_error if self.last_error else ('', None)
        values['last error'] = text
        values['last error age (s)'] = '' if at is None else f'{now - at:.1f}'
        values.update({key: str(value) for key, value in dict(extra).items()})
        return level, message, values
