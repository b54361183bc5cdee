"""Synthetic Criteo-like generator: determinism, shape, tail, planted signal."""
import numpy as np
import pytest

from memrec_tf.data import PRESETS, TERABYTE_CARDINALITIES, SyntheticCriteo


def auc(label, score):
    """ROC AUC by the rank-sum formula (ties get average ranks)."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_score = np.asarray(score)[order]
    _, first, counts = np.unique(sorted_score, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    pos = label == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def rows(gen):
    batches = list(gen.iter_batches())
    return (np.concatenate([b[0]["categorical"] for b in batches]),
            np.concatenate([b[0]["dense"] for b in batches]),
            np.concatenate([b[1] for b in batches]))


def test_deterministic_from_seed():
    a = rows(SyntheticCriteo("tiny", num_rows=3000, batch_size=1000, seed=7))
    b = rows(SyntheticCriteo("tiny", num_rows=3000, batch_size=1000, seed=7))
    c = rows(SyntheticCriteo("tiny", num_rows=3000, batch_size=1000, seed=8))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert (a[0] != c[0]).mean() > 0.3
    gen = SyntheticCriteo("tiny", num_rows=3000, batch_size=1000, seed=7)
    # Batches depend only on their index, and dataset() yields the same.
    np.testing.assert_array_equal(gen.batch(2)[0]["categorical"], a[0][2000:])
    ds = list(gen.dataset())
    assert [int(l.shape[0]) for _, l in ds] == [1000, 1000, 1000]
    np.testing.assert_array_equal(np.concatenate([f["categorical"] for f, _ in ds]), a[0])
    np.testing.assert_array_equal(np.concatenate([l for _, l in ds]), a[2])


def test_sizes_and_cardinality_bounds():
    gen = SyntheticCriteo([5, 100, 1, 70000], num_dense=3, num_rows=2500, batch_size=1000)
    assert gen.num_batches == 3
    assert [len(l) for _, l in gen.iter_batches()] == [1000, 1000, 500]
    cat, dense, label = rows(gen)
    assert cat.shape == (2500, 4) and dense.shape == (2500, 3) and dense.dtype == np.float32
    assert (cat >= 0).all() and (cat < np.array([5, 100, 1, 70000])).all()
    assert set(np.unique(label)) <= {0.0, 1.0} and (dense >= 0).all()
    assert gen.spec.cardinalities == (5, 100, 1, 70000) and gen.spec.num_dense == 3

    tb = SyntheticCriteo("terabyte", batch_size=2000)
    assert tb.spec.cardinalities == TERABYTE_CARDINALITIES == PRESETS["terabyte"]
    features, _ = tb.batch(0)
    ids = features["categorical"]
    assert (ids >= 0).all() and (ids < np.array(TERABYTE_CARDINALITIES)).all()
    # Rare ranks beyond the tabulated head are drawn too (and stay in range).
    assert ids[:, 0].max() > 1 << 15


def test_rank_to_id_is_a_bijection():
    gen = SyntheticCriteo([3, 1000, 1, 17, 40000])
    for col, n in enumerate(gen.cardinalities):
        ranks = np.zeros((n, len(gen.cardinalities)), np.int64)
        ranks[:, col] = np.arange(n)
        ids = gen.ranks_to_ids(ranks)[:, col]
        assert len(np.unique(ids)) == n and ids.min() == 0 and ids.max() == n - 1


def test_heavy_tail_and_scrambled_ids():
    gen = SyntheticCriteo("small", num_rows=20000, batch_size=5000, seed=1)
    cat, _, _ = rows(gen)
    scrambled = 0
    for col, n in enumerate(gen.cardinalities):
        if n < 1000:
            continue
        values, counts = np.unique(cat[:, col], return_counts=True)
        assert counts.max() > 50 * np.median(counts), (col, counts.max(), np.median(counts))
        scrambled += values[np.argmax(counts)] != 0
    assert scrambled >= 10  # the top value is not simply id 0


def target_encoding_auc(train_gen, test_gen):
    """Test AUC of per-value click-rate log-odds learned on train_gen."""
    cat, _, label = rows(train_gen)
    test_cat, _, test_label = rows(test_gen)
    prior = label.mean()
    score = np.zeros(len(test_label))
    for col in range(cat.shape[1]):
        values, inverse = np.unique(cat[:, col], return_inverse=True)
        rate = (np.bincount(inverse, weights=label) + 10 * prior) / (np.bincount(inverse) + 10)
        pos = np.clip(np.searchsorted(values, test_cat[:, col]), 0, len(values) - 1)
        col_rate = np.where(values[pos] == test_cat[:, col], rate[pos], prior)
        score += np.log(col_rate / (1 - col_rate))
    return auc(test_label, score)


def test_planted_signal_is_learnable():
    gen = SyntheticCriteo("small", num_rows=40000, batch_size=10000, seed=3)
    cat, dense, label = rows(gen)
    logit = gen.logits({"categorical": cat, "dense": dense})
    assert np.corrcoef(logit, label)[0, 1] > 0.3
    assert auc(label, logit) > 0.75
    assert 0.15 < label.mean() < 0.45
    # Learned on one stream, scored on another drawn from the same model.
    test = SyntheticCriteo("small", num_rows=20000, batch_size=10000, seed=3, stream=1)
    assert target_encoding_auc(gen, test) > 0.65
    # Without a planted signal the same learner finds nothing.
    kwargs = dict(batch_size=10000, seed=3, signal_strength=0.0, dense_signal=0.0)
    flat_auc = target_encoding_auc(SyntheticCriteo("small", num_rows=40000, **kwargs),
                                   SyntheticCriteo("small", num_rows=20000, stream=1, **kwargs))
    assert abs(flat_auc - 0.5) < 0.03


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown cardinality preset"):
        SyntheticCriteo("huge")
    with pytest.raises(ValueError, match=">= 1"):
        SyntheticCriteo([10, 0])
    with pytest.raises(IndexError):
        SyntheticCriteo("tiny", num_rows=10, batch_size=10).batch(1)
