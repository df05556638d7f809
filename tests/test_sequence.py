import numpy as np
import pytest

from vpr.sequence import OnlineSequenceMatcher, SequenceConfig, enhance_contrast, match_sequences


def test_length_one_is_identity():
    distances = np.random.default_rng(0).random((4, 6))
    assert match_sequences(distances, SequenceConfig(length=1)) is distances


def test_diagonal_by_hand():
    distances = np.arange(12, dtype=float).reshape(3, 4)
    out = match_sequences(distances, SequenceConfig(length=2))
    # (q, r) averages D[q, r] and D[q-1, r-1]; the first query row has no history; off the map's start the
    # missing term is the mean of its query row.
    assert out[0].tolist() == distances[0].tolist()
    assert out[1, 0] == pytest.approx((distances[1, 0] + distances[0].mean()) / 2)
    assert out[1, 1] == pytest.approx((distances[1, 1] + distances[0, 0]) / 2)
    assert out[2, 3] == pytest.approx((distances[2, 3] + distances[1, 2]) / 2)


def test_diagonal_recovers_a_route_hidden_in_noise():
    rng = np.random.default_rng(1)
    n = 60
    distances = rng.random((n, n)) + 0.3
    distances[np.arange(n), np.arange(n)] -= 0.3  # true match only slightly better than noise
    single = np.mean((np.argmin(distances, axis=1) == np.arange(n))[10:])
    sequenced = np.mean((np.argmin(match_sequences(distances, SequenceConfig(length=10)), axis=1) == np.arange(n))[10:])
    assert single < 0.6 and sequenced > 0.9


def test_contrast_enhancement_by_hand():
    row = np.array([[1.0, 2.0, 3.0, 10.0]])
    out = enhance_contrast(row, window=2)  # windows of +-1: {1,2}, {1,2,3}, {2,3,10}, {3,10}
    expected = [(1 - 1.5) / 0.5, 0.0, (3 - 5) / np.std([2, 3, 10]), (10 - 6.5) / 3.5]
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)


def test_seqslam_follows_a_faster_route_that_the_diagonal_misses():
    rng = np.random.default_rng(2)
    n_query, n_reference = 50, 100
    route = 2 * np.arange(n_query)  # the query robot moves two reference places per frame
    distances = rng.random((n_query, n_reference)) + 0.4
    distances[np.arange(n_query), route] -= 0.4

    def accuracy(matrix):
        return np.mean((np.abs(np.argmin(matrix, axis=1) - route) <= 1)[10:])

    seqslam = SequenceConfig(length=10, mode="seqslam", min_velocity=1.5, max_velocity=2.5, velocity_steps=3)
    assert accuracy(distances) < 0.6
    assert accuracy(match_sequences(distances, seqslam)) > 0.9
    assert accuracy(match_sequences(distances, SequenceConfig(length=10))) < 0.6


def test_seqslam_without_contrast_enhancement_searches_the_raw_distances():
    distances = np.random.default_rng(4).random((12, 20))
    raw = SequenceConfig(length=4, mode="seqslam", contrast_window=0, min_velocity=1.0, max_velocity=1.0, velocity_steps=1)
    # one velocity of 1 over raw distances is exactly the diagonal matcher
    np.testing.assert_allclose(match_sequences(distances, raw), match_sequences(distances, SequenceConfig(length=4)))
    enhanced = SequenceConfig(length=4, mode="seqslam", min_velocity=1.0, max_velocity=1.0, velocity_steps=1)
    assert not np.allclose(match_sequences(distances, enhanced), match_sequences(distances, raw))


@pytest.mark.parametrize("config", [SequenceConfig(length=1), SequenceConfig(length=5), SequenceConfig(length=7, mode="seqslam"),
                                    SequenceConfig(length=6, mode="seqslam", contrast_window=0),
                                    SequenceConfig(length=6, mode="seqslam", min_velocity=0.4, max_velocity=1.6, velocity_phases=5)])
def test_online_equals_offline(config):
    distances = np.random.default_rng(3).random((30, 25))
    matcher = OnlineSequenceMatcher(config)
    online = np.stack([matcher.push(row) for row in distances])
    np.testing.assert_allclose(online, match_sequences(distances, config), rtol=1e-12)


def test_online_rejects_changing_map_size():
    matcher = OnlineSequenceMatcher(SequenceConfig(length=3))
    matcher.push(np.zeros(5))
    with pytest.raises(ValueError, match="references"):
        matcher.push(np.zeros(6))
    with pytest.raises(ValueError, match="one row"):
        matcher.push(np.zeros((2, 5)))


@pytest.mark.parametrize("kwargs", [{"length": 0}, {"mode": "dtw"}, {"mode": "seqslam", "min_velocity": 2.0, "max_velocity": 1.0},
                                    {"contrast_window": -1}, {"velocity_phases": 0}])
def test_invalid_configs(kwargs):
    with pytest.raises(ValueError):
        SequenceConfig(**kwargs)


def test_odometry_at_one_place_per_frame_is_the_diagonal():
    distances = np.random.default_rng(5).random((30, 25))
    odometry = SequenceConfig(length=6, mode="odometry")
    np.testing.assert_allclose(match_sequences(distances, odometry, moved=np.ones(30)),
                               match_sequences(distances, SequenceConfig(length=6)), rtol=1e-12)


def test_odometry_follows_stops_and_reversals_that_frame_windows_miss():
    rng = np.random.default_rng(6)
    steps = np.concatenate([np.ones(15), np.zeros(12), np.ones(10), -np.ones(6), np.zeros(8), np.ones(20)])
    places = 5 + np.cumsum(steps).astype(int)  # the reference place of every frame; starts at place 5
    moved = np.concatenate([[0.0], np.diff(places)]) + rng.normal(0, 0.1, places.size)  # noisy odometry
    distances = rng.random((places.size, 60)) + 0.4
    distances[np.arange(places.size), places] -= 0.4

    def accuracy(matrix):
        return np.mean((np.abs(np.argmin(matrix, axis=1) - places) <= 1)[10:])

    by_place = accuracy(match_sequences(distances, SequenceConfig(length=8, mode="odometry"), moved=moved))
    by_frame = accuracy(match_sequences(distances, SequenceConfig(length=8)))
    assert by_place > 0.9 and by_frame < 0.75 and accuracy(distances) < 0.6


def test_odometry_needs_the_distance_driven():
    distances = np.zeros((3, 4))
    with pytest.raises(ValueError, match="one odometry reading per query frame"):
        match_sequences(distances, SequenceConfig(length=2, mode="odometry"))
    with pytest.raises(ValueError, match="one odometry reading per query frame"):
        match_sequences(distances, SequenceConfig(length=2, mode="odometry"), moved=np.ones(2))
    matcher = OnlineSequenceMatcher(SequenceConfig(length=2, mode="odometry"))
    with pytest.raises(ValueError, match="places moved"):
        matcher.push(np.zeros(4))
    with pytest.raises(ValueError, match="places moved"):
        matcher.push(np.zeros(4), float("nan"))


def test_odometry_phase_search_finds_which_frames_a_camera_between_places_showed():
    """At 0.4 places per step the camera shows the nearest place, and odometry drifts (5% noise per step): which
    place each frame of the window showed depends on where between places the robot is. Searching the phase
    lines the window up more often than rounding the distance driven (0.89 against 0.78 exact matches here); the
    frame-spaced diagonal is lost (0.04)."""
    rng = np.random.default_rng(8)
    true_position = 3.0 + 0.4 * np.arange(120)
    places = np.rint(true_position).astype(int)
    moved = np.concatenate([[0.0], np.diff(true_position)]) + rng.normal(0, 0.05, 120)
    distances = rng.random((120, 60)) + 0.4
    distances[np.arange(120), places] -= 0.4

    def exact(config):
        matched = match_sequences(distances, config, moved=moved if config.mode == "odometry" else None)
        return np.mean((np.argmin(matched, axis=1) == places)[20:])

    assert SequenceConfig(odometry_phases=5).phases.tolist() == pytest.approx([-0.4, -0.2, 0.0, 0.2, 0.4])
    searched, rounded = (exact(SequenceConfig(length=8, mode="odometry", odometry_phases=n)) for n in (5, 1))
    assert searched > 0.85 and searched > rounded + 0.05 and exact(SequenceConfig(length=8)) < 0.2
    with pytest.raises(ValueError, match="odometry_phases"):
        SequenceConfig(odometry_phases=0)


def test_velocity_phase_search_lines_up_frames_at_a_fractional_speed():
    """At 0.45 places per frame, which frames repeat depends on where between places the robot was at the newest
    frame; one phase per velocity (SeqSLAM) misses many of those windows, a phase search catches them."""
    rng = np.random.default_rng(9)
    places = np.rint(0.3 + 0.45 * np.arange(150)).astype(int)
    distances = rng.random((150, 80)) + 0.4
    distances[np.arange(150), places] -= 0.4

    def exact(phases):
        config = SequenceConfig(length=10, mode="seqslam", contrast_window=0, min_velocity=0.45, max_velocity=0.45,
                                velocity_steps=1, velocity_phases=phases)
        return np.mean((np.argmin(match_sequences(distances, config), axis=1) == places)[20:])

    assert SequenceConfig(mode="seqslam", velocity_steps=2, velocity_phases=2).paths == [(0.8, -0.25), (0.8, 0.25), (1.2, -0.25), (1.2, 0.25)]
    one, searched = exact(1), exact(5)
    assert searched > 0.9 and searched > one + 0.05, (one, searched)
