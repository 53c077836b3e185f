"""ApproximateTimeMatcher: pairing by header stamps, checked against a brute-force pairing."""
import numpy as np
import pytest

from cspn_ros.core.sync import ApproximateTimeMatcher

MS = 1_000_000
TOF_TOPICS = ('/image', '/camera_info', '/tof/depth', '/tof/camera_info')


def offline_pairs(streams, reference, slop_ns):
    """Brute force: for each reference stamp that every other topic has reached (a stamp at or
    after it exists), the nearest stamp within slop per topic (ties: older), else unmatched."""
    pairs = []
    for ref in streams[reference]:
        if any(max(s) < ref for t, s in streams.items() if t != reference):
            continue
        chosen = {reference: ref}
        for topic, stamps in streams.items():
            if topic == reference:
                continue
            best = None
            for s in stamps:
                if abs(s - ref) <= slop_ns and (best is None or abs(s - ref) < abs(best - ref)):
                    best = s
            chosen[topic] = best
        if all(v is not None for v in chosen.values()):
            pairs.append(chosen)
    return pairs


def random_streams(rng, topics, n, period_ms):
    """Per topic strictly increasing stamps: a random period and jitter per topic."""
    streams = {}
    for topic in topics:
        period = period_ms * rng.uniform(0.5, 2.0)
        stamps = np.cumsum(rng.uniform(0.6, 1.4, size=n) * period * MS).astype(np.int64)
        streams[topic] = [int(s) for s in stamps + int(rng.integers(0, 50 * MS))]
    return streams


def random_interleaving(rng, streams):
    """Merge the streams in a random order that keeps each topic's own order."""
    labels = [t for t, s in streams.items() for _ in s]
    rng.shuffle(labels)
    position = {t: 0 for t in streams}
    order = []
    for topic in labels:
        order.append((topic, streams[topic][position[topic]]))
        position[topic] += 1
    return order


def run(matcher, arrivals):
    out = []
    for topic, stamp in arrivals:
        out.extend(matcher.add(topic, stamp, (topic, stamp)))
    return out


def as_stamps(sets):
    return [dict(s.stamps) for s in sets]


def test_exact_stamps_pair_as_soon_as_complete():
    topics = ('/image', '/camera_info', '/points')
    matcher = ApproximateTimeMatcher(topics, slop_s=0.02)
    for k in range(5):
        stamp = 1_000 * MS + k * 100 * MS
        assert matcher.add('/image', stamp, ('img', k)) == []
        assert matcher.add('/camera_info', stamp, ('info', k)) == []
        (matched,) = matcher.add('/points', stamp, ('cloud', k))
        assert matched.stamp_ns == stamp
        assert matched.messages == {'/image': ('img', k), '/camera_info': ('info', k),
                                    '/points': ('cloud', k)}
        assert matched.stamps == dict.fromkeys(topics, stamp)
    stats = matcher.stats
    assert stats['matched'] == 5 and stats['received'] == dict.fromkeys(topics, 5)
    assert stats['dropped_unmatched'] == stats['evicted'] == 0


def test_jitter_within_slop_pairs_the_same_index():
    rng = np.random.default_rng()
    topics = ('/image', '/camera_info', '/points')
    slop_ns = 20 * MS
    matcher = ApproximateTimeMatcher(topics, slop_s=slop_ns / 1e9, queue_size=100)
    streams = {t: [k * 100 * MS + int(rng.integers(-slop_ns // 2, slop_ns // 2))
                   for k in range(30)] for t in topics}
    sets = run(matcher, random_interleaving(rng, streams))
    # every image but those waiting for a later message on another topic is paired with index k
    assert len(sets) >= 28
    for k, s in enumerate(sets):
        assert s.stamps == {t: streams[t][k] for t in topics}


def test_beyond_slop_is_dropped_unmatched():
    matcher = ApproximateTimeMatcher(('/image', '/points'), slop_s=0.01)
    sets = []
    for k in range(10):
        sets += matcher.add('/image', k * 100 * MS, k)
        sets += matcher.add('/points', k * 100 * MS + 30 * MS, k)  # 30 ms off, slop 10 ms
    assert sets == []
    assert matcher.stats['dropped_unmatched'] == 10


@pytest.mark.parametrize('topics', [('/image', '/camera_info', '/points'), TOF_TOPICS])
def test_any_interleaving_matches_offline_pairing(topics):
    rng = np.random.default_rng()
    slop_ns = int(rng.integers(5, 60)) * MS
    streams = random_streams(rng, topics, n=40, period_ms=50)
    expected = offline_pairs(streams, topics[0], slop_ns)
    results = []
    for _ in range(4):
        matcher = ApproximateTimeMatcher(topics, slop_s=slop_ns / 1e9, queue_size=1000)
        sets = run(matcher, random_interleaving(rng, streams))
        assert [s.stamp_ns for s in sets] == sorted(s.stamp_ns for s in sets)
        for s in sets:  # messages are the ones stamped as reported
            assert all(s.messages[t] == (t, s.stamps[t]) for t in topics)
        results.append(as_stamps(sets))
    assert all(r == expected for r in results)


def test_non_reference_messages_are_reused_reference_used_once():
    matcher = ApproximateTimeMatcher(('/image', '/points'), slop_s=0.06)
    sets = []
    for k in range(6):  # 30 Hz images, one cloud per 100 ms
        if k % 3 == 0:
            sets += matcher.add('/points', k * 33 * MS, f'cloud{k}')
        sets += matcher.add('/image', k * 33 * MS, f'img{k}')
    sets += matcher.add('/points', 198 * MS, 'cloud6')
    assert [s.messages['/image'] for s in sets] == [f'img{k}' for k in range(6)]
    assert [s.messages['/points'] for s in sets] == ['cloud0', 'cloud0', 'cloud3', 'cloud3',
                                                     'cloud3', 'cloud6']


def test_late_sensor_is_waited_for():
    """A LiDAR whose messages arrive 150 ms after the images still pairs by stamp."""
    matcher = ApproximateTimeMatcher(('/image', '/points'), slop_s=0.02, queue_size=10)
    sets = []
    for k in range(12):
        sets += matcher.add('/image', k * 33 * MS, k)
        if k >= 5:
            sets += matcher.add('/points', (k - 5) * 33 * MS, k - 5)
    pairs = [(s.messages['/image'], s.messages['/points']) for s in sets]
    assert pairs == [(k, k) for k in range(7)]


def test_out_of_order_and_duplicates_are_dropped_and_counted():
    matcher = ApproximateTimeMatcher(('/image', '/points'), slop_s=0.02)
    assert matcher.add('/image', 100 * MS, 'a') == []
    assert matcher.add('/image', 100 * MS, 'a-duplicate') == []
    assert matcher.add('/points', 90 * MS, 'p') == []
    assert matcher.add('/points', 80 * MS, 'p-late') == []
    (matched,) = matcher.add('/points', 105 * MS, 'q')
    assert matched.messages == {'/image': 'a', '/points': 'q'}
    assert matcher.add('/image', 50 * MS, 'old') == []
    stats = matcher.stats
    assert stats['dropped_duplicate'] == 1 and stats['dropped_out_of_order'] == 2
    assert stats['received'] == {'/image': 3, '/points': 3}


def test_queue_is_bounded_and_evictions_counted():
    rng = np.random.default_rng()
    size = int(rng.integers(2, 6))
    matcher = ApproximateTimeMatcher(('/image', '/points'), slop_s=0.01, queue_size=size)
    n = size + int(rng.integers(1, 10))
    for k in range(n):  # the LiDAR is silent: images pile up
        assert matcher.add('/image', k * 100 * MS, k) == []
    assert matcher.stats['evicted'] == n - size
    sets = []
    for k in range(n):
        sets += matcher.add('/points', k * 100 * MS, k)
    assert [s.messages['/image'] for s in sets] == list(range(n - size, n))


def test_reset_after_clock_jump_back():
    matcher = ApproximateTimeMatcher(('/image', '/points'), slop_s=0.01)
    for k in range(3):
        matcher.add('/image', 50_000 * MS + k * 100 * MS, k)
    assert not matcher.detect_jump_back('/image', 50_000 * MS)
    assert matcher.detect_jump_back('/image', 1_000 * MS)
    # another topic lagging far behind is not a jump: it has no newer stamp of its own
    assert not matcher.detect_jump_back('/points', 1_000 * MS)
    assert matcher.add('/image', 1_000 * MS, 'looped') == []
    assert matcher.stats['dropped_out_of_order'] == 1
    matcher.reset()
    assert not matcher.detect_jump_back('/image', 1_000 * MS)
    assert matcher.add('/image', 1_000 * MS, 'looped') == []
    (matched,) = matcher.add('/points', 1_000 * MS, 'cloud')
    assert matched.messages == {'/image': 'looped', '/points': 'cloud'}
    assert matcher.stats['resets'] == 1


def test_reference_topic_can_be_chosen():
    matcher = ApproximateTimeMatcher(('/image', '/points'), slop_s=0.05, reference='/points')
    sets = []
    for k in range(6):
        sets += matcher.add('/image', k * 33 * MS, k)
    sets += matcher.add('/points', 100 * MS, 'cloud')
    (matched,) = sets
    assert matched.stamp_ns == 100 * MS and matched.messages['/image'] == 3


def test_invalid_arguments():
    with pytest.raises(ValueError):
        ApproximateTimeMatcher([], slop_s=0.01)
    with pytest.raises(ValueError):
        ApproximateTimeMatcher(['/a', '/a'], slop_s=0.01)
    with pytest.raises(ValueError):
        ApproximateTimeMatcher(['/a'], slop_s=0.01, reference='/b')
    with pytest.raises(KeyError):
        ApproximateTimeMatcher(['/a'], slop_s=0.01).add('/b', 0, None)
