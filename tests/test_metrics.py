import numpy as np
import pytest

from vpr.data import GroundTruth
from vpr.metrics import evaluate, precision_recall_curve, rank_references, recall_at_n


def truth_from_dense(dense):
    rows, cols = np.nonzero(np.asarray(dense))
    return GroundTruth.from_pairs(np.stack([rows, cols], axis=1), *np.asarray(dense).shape)


# Four queries, four references. Query 3 has no true match.
DISTANCES = np.array(
    [
        [0.1, 0.5, 0.9, 0.8],  # best 0 (correct), distance 0.1
        [0.4, 0.3, 0.2, 0.9],  # best 2 (wrong: truth is 1), distance 0.2; truth ranked 2nd
        [0.7, 0.6, 0.3, 0.3],  # tie 2/3 -> lower index 2 (correct), distance 0.3
        [0.5, 0.5, 0.6, 0.25],  # best 3, but this query has no match; distance 0.25
    ]
)
TRUTH = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_ranking_breaks_ties_by_lower_index():
    assert rank_references(DISTANCES, 2).tolist() == [[0, 1], [2, 1], [2, 3], [3, 0]]


def test_recall_by_hand():
    recall = recall_at_n(DISTANCES, truth_from_dense(TRUTH), ns=(1, 2, 3))
    # Three queries have a match; query 3 is left out. Top-1 hits: q0, q2. Top-2 adds q1.
    assert recall == {1: pytest.approx(2 / 3), 2: pytest.approx(1.0), 3: pytest.approx(1.0)}


def test_tie_goes_to_lower_index_even_when_that_is_wrong():
    truth = truth_from_dense([[0, 1]])
    assert recall_at_n(np.array([[0.5, 0.5]]), truth, ns=(1, 2)) == {1: 0.0, 2: 1.0}


def test_precision_recall_curve_by_hand():
    curve = precision_recall_curve(DISTANCES, truth_from_dense(TRUTH))
    # Best matches sorted by distance: q0 0.1 correct, q1 0.2 wrong, q3 0.25 wrong (no match), q2 0.3 correct.
    np.testing.assert_allclose(curve.thresholds, [0.1, 0.2, 0.25, 0.3])
    np.testing.assert_allclose(curve.precision, [1, 1, 1 / 2, 1 / 3, 2 / 4])
    np.testing.assert_allclose(curve.recall, [0, 1 / 3, 1 / 3, 1 / 3, 2 / 3])
    # Step area: 1/3 * 1 + 0 + 0 + 1/3 * 1/2.
    assert curve.auc == pytest.approx(1 / 3 + 1 / 6)
    assert curve.recall_at_100_precision == pytest.approx(1 / 3)


def test_equal_best_distances_enter_together():
    distances = np.array([[0.2, 0.9], [0.9, 0.2]])
    curve = precision_recall_curve(distances, truth_from_dense([[1, 0], [1, 0]]))
    # Both best distances are 0.2: one correct, one wrong; there is no threshold where only the correct one passes.
    np.testing.assert_allclose(curve.precision, [1, 0.5])
    np.testing.assert_allclose(curve.recall, [0, 0.5])
    assert curve.recall_at_100_precision == 0.0


def test_first_accepted_wrong_gives_zero_recall_at_full_precision():
    curve = precision_recall_curve(np.array([[0.1, 0.5], [0.3, 0.2]]), truth_from_dense([[0, 1], [0, 1]]))
    assert curve.recall_at_100_precision == 0.0
    assert curve.recall[-1] == pytest.approx(0.5)


def test_perfect_matching():
    metrics = evaluate(1 - np.eye(5), GroundTruth.from_positions(np.arange(5), np.arange(5), 0))
    assert metrics.recall[1] == 1.0 and metrics.auc_pr == pytest.approx(1.0) and metrics.recall_at_100p == 1.0


def test_no_query_with_a_match_is_an_error():
    with pytest.raises(ValueError, match="no query"):
        evaluate(np.zeros((2, 2)), truth_from_dense([[0, 0], [0, 0]]))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        evaluate(np.zeros((3, 2)), truth_from_dense(TRUTH))


def test_against_brute_force_with_tolerance():
    rng = np.random.default_rng(3)
    distances = rng.random((40, 50))
    distances[rng.random((40, 50)) < 0.1] = 0.5  # plenty of ties
    positions_query, positions_reference = rng.integers(0, 60, 40), np.arange(50)
    truth = GroundTruth.from_positions(positions_query, positions_reference, tolerance=2)
    dense = np.abs(positions_query[:, None] - positions_reference[None, :]) <= 2
    np.testing.assert_array_equal(truth.to_dense(), dense)
    recall = recall_at_n(distances, truth, ns=(1, 5))
    for n in (1, 5):
        hits = [
            any(dense[q, r] for r in sorted(range(50), key=lambda r: (distances[q, r], r))[:n])
            for q in range(40)
            if dense[q].any()
        ]
        assert recall[n] == pytest.approx(np.mean(hits))
