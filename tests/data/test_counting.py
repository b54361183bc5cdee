"""memrec_tf.data.counting: the training counts of every categorical value."""
import numpy as np
import pytest

from memrec_tf import data as data_lib


class _Reader:
    """The one method count_values needs: numpy batches of categorical ids."""

    def __init__(self, batches):
        self.batches = batches

    def iter_batches(self):
        for b in self.batches:
            yield {"categorical": b}, None


def test_count_values_merges_batches_exactly():
    rng = np.random.default_rng(0)
    batches = [rng.integers(-5, [4, 200_000], size=(30_000, 2)) for _ in range(6)]
    counted = data_lib.count_values(_Reader(batches))
    everything = np.concatenate(batches)
    for j in range(2):
        values, counts = np.unique(everything[:, j], return_counts=True)
        np.testing.assert_array_equal(counted[j][0], values)
        np.testing.assert_array_equal(counted[j][1], counts)
    # One more index per feature, for the values never seen in training.
    assert data_lib.counted_cardinalities(counted) == [len(counted[0][0]) + 1,
                                                        len(counted[1][0]) + 1]


def test_count_values_stops_past_the_limit_and_on_no_rows():
    ids = np.arange(70_000, dtype=np.int64)[:, None]  # enough to merge after one batch
    with pytest.raises(data_lib.TooManyValuesError, match="more than 1,000 distinct"):
        data_lib.count_values(_Reader([ids]), limit=1000)
    assert issubclass(data_lib.TooManyValuesError, ValueError)
    with pytest.raises(ValueError, match="no valid rows"):
        data_lib.count_values(_Reader([]))


def test_counted_cardinalities_of_an_empty_column():
    counted = [(np.array([3, 9]), np.array([5, 1])), (np.zeros(0, np.int64), np.zeros(0, np.int64))]
    assert data_lib.counted_cardinalities(counted) == [3, 1]
