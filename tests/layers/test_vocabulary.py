"""VocabularyLookup / VocabularyEmbedding: raw ids -> frequency-ordered indices in the model."""
import numpy as np
import pytest
import tensorflow as tf

from memrec_tf import layers, models
from memrec_tf.data import Vocabulary, counted_cardinalities, frequency_order
from memrec_tf.features import FeatureSpec

keras = tf.keras
KERAS_3 = not keras.__name__.startswith("tf_keras")


def _raw_ids(n=3000, seed=0):
    """Three features: Zipf-skewed, sparse large ids (negative too), uniform."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.zipf(1.5, n) % 50,
                     (rng.zipf(1.3, n) % 300) * 7_000_000_000 - 10**12,
                     rng.integers(0, 5, n)], axis=1).astype(np.int64)


def _count(ids):
    return [np.unique(ids[:, j], return_counts=True) for j in range(ids.shape[1])]


def test_lookup_matches_the_benchmarks_vocabulary_then_frequency_order():
    ids = _raw_ids()
    counted = _count(ids)
    keys, indices, oov, counts = layers.frequency_index(counted)
    vocab = Vocabulary.fit(ids)
    relabel = frequency_order(vocab.lookup(ids), vocab.size)
    lookup = layers.VocabularyLookup([len(v) for v, _ in counted])
    lookup.set_vocabulary(keys, indices, oov)
    assert lookup.vocabulary_size == vocab.size == sum(counted_cardinalities(counted))
    rng = np.random.default_rng(1)
    unseen = rng.integers(-2**63, 2**63 - 1, (200, 3), dtype=np.int64)
    for batch in (ids[:500], unseen, np.concatenate([ids[-7:], unseen[:7]])):
        np.testing.assert_array_equal(lookup(tf.constant(batch)).numpy(),
                                      relabel[vocab.lookup(batch)])
    # counts[i] is index i's training count: descending, the OOV indices last at 0.
    np.testing.assert_array_equal(counts, np.bincount(relabel[vocab.lookup(ids)].ravel(),
                                                      minlength=vocab.size))
    assert np.all(np.diff(counts) <= 0) and set(oov) == set(range(vocab.size - 3, vocab.size))


def test_empty_column_maps_everything_to_its_oov_index():
    counted = [(np.array([3, 9]), np.array([5, 1])), (np.zeros(0, np.int64), np.zeros(0, np.int64))]
    keys, indices, oov, _ = layers.frequency_index(counted)
    lookup = layers.VocabularyLookup([2, 0])
    lookup.set_vocabulary(keys, indices, oov)
    out = lookup(tf.constant([[3, 3], [9, 0], [4, 9]], tf.int64)).numpy()
    np.testing.assert_array_equal(out, [[0, oov[1]], [1, oov[1]], [oov[0], oov[1]]])


def test_bad_vocabularies_are_refused():
    with pytest.raises(ValueError, match="feature 0: values must be distinct and ascending"):
        layers.frequency_index([(np.array([2, 1]), np.array([1, 1]))])
    with pytest.raises(ValueError, match="feature 1: values .* and counts"):
        layers.frequency_index([(np.array([1]), np.array([1])), (np.array([1, 2]), np.array([1]))])
    with pytest.raises(ValueError, match="column_sizes must be ints >= 0"):
        layers.VocabularyLookup([3, -1])
    lookup = layers.VocabularyLookup([2, 1])
    with pytest.raises(ValueError, match=r"keys has shape \(2,\), expected \(3,\)"):
        lookup.set_vocabulary([1, 2], [0, 1, 2], [3, 4])
    for shape in ([4, 3], [4], [4, 2, 1]):  # no column is dropped or invented
        with pytest.raises(ValueError, match=r"needs ids \[batch, 2\]"):
            lookup(tf.zeros(shape, tf.int64))
    spec = FeatureSpec.of(0, [4, 2])
    with pytest.raises(ValueError, match="the cardinalities must be its values"):
        models.build_model("dlrm", spec, "memrec", {"num_token_rows": 8},
                           vocabulary=[(np.array([1, 2]), np.array([1, 1]))] * 2)


@pytest.mark.parametrize("method,options", [
    ("memrec", {"num_token_rows": 40, "num_weight_rows": 16, "num_head_rows": 10}),
    ("full", {}),
])
def test_model_on_raw_ids_trains_saves_and_reports_bytes(method, options, tmp_path):
    ids = _raw_ids(2000)
    counted = _count(ids)
    cards = counted_cardinalities(counted)
    rng = np.random.default_rng(2)
    label = ((ids[:, 0] % 3 == 0) ^ (rng.random(len(ids)) < 0.1)).astype("float32")[:, None]
    x = {"dense": rng.normal(size=(len(ids), 2)).astype("float32"), "categorical": ids}
    keras.utils.set_random_seed(0)
    model = models.build_model("dlrm", FeatureSpec.of(2, cards), method, options,
                               embedding_dim=8, vocabulary=counted)
    layer = models.embedding_layers(model)[0]
    assert isinstance(layer, layers.VocabularyEmbedding)
    V = sum(cards)
    assert models.embedding_report(model).full_bytes == V * 8 * 4
    assert layer.mapping_bytes == 8 * (2 * (V - 3) + 3)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="binary_crossentropy")
    history = model.fit(x, label, batch_size=100, epochs=3, verbose=0)
    assert history.history["loss"][-1] < 0.8 * history.history["loss"][0]
    if not KERAS_3:
        return
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    unseen = dict(x, categorical=ids[::-1] + 1)  # mostly unseen ids
    for batch in (x, unseen):
        np.testing.assert_allclose(loaded(batch, training=False).numpy(),
                                   model(batch, training=False).numpy(), rtol=1e-5, atol=1e-6)
    assert models.embedding_report(loaded) == models.embedding_report(model)
