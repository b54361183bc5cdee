"""The model zoo: DLRM and DCN-v2 over every embedding method, byte budgets."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from memrec_tf import layers, models, sizing
from memrec_tf.features import FeatureSpec, feature_offsets
from memrec_tf.sizing import budget as budget_lib

keras = tf.keras
KERAS_3 = not keras.__name__.startswith("tf_keras")
from conftest import REPO_ROOT as REPO

CARDS = [20, 30, 50, 100, 200]
D = 8
# Each method at roughly 4x compression of the 400 x 8 full tables.
OPTIONS = {
    "memrec": dict(num_token_rows=80, num_weight_rows=64),
    "memrec_per_feature": dict(num_token_rows=[16, 24, 12, 20, 40], num_weight_rows=16),
    "full": {},
    "hashing": dict(num_rows=100),
    "qr": dict(remainder_rows=80, quotient_rows=5),
}


def make_data(n=2000, id_space="hashed", seed=0):
    """4 dense and 5 categorical features; the label depends on the dense
    features and on the values of the first two categorical features."""
    rng = np.random.default_rng(seed)
    index = np.stack([rng.integers(0, c, n) for c in CARDS], axis=1)
    if id_space == "hashed":
        raw = [rng.integers(-2**62, 2**62, c) for c in CARDS]
        ids = np.stack([raw[j][index[:, j]] for j in range(len(CARDS))], axis=1)
    elif id_space == "per_feature":
        ids = index
    else:
        ids = index + np.array(feature_offsets(CARDS))
    dense = rng.normal(size=(n, 4)).astype("float32")
    effects = [rng.normal(0.0, 2.0, c) for c in CARDS[:2]]
    logit = dense @ np.array([1.0, -1.0, 0.5, 0.0]) + effects[0][index[:, 0]] + \
        effects[1][index[:, 1]]
    label = (logit + rng.logistic(scale=0.3, size=n) > 0).astype("float32")[:, None]
    return {"dense": dense, "categorical": ids.astype("int64")}, label


def spec_for(id_space, num_dense=4):
    if id_space == "global":
        return FeatureSpec.of(num_dense, CARDS, vocabulary_size=sum(CARDS))
    return FeatureSpec.of(num_dense, CARDS, dense_ids=id_space == "per_feature")


def log_loss(model, x, y):
    p = np.clip(model(x, training=False).numpy(), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# ------------------------------------------------------------------ training


# The fast run trains DLRM over every embedding; DCN's in the full run.
KINDS = [kind if kind == "dlrm" else pytest.param(kind, marks=pytest.mark.slow)
         for kind in models.MODELS]


@pytest.mark.parametrize("embedding", layers.METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_trains_and_round_trips(kind, embedding, tmp_path):
    # Hashed ids for most; the dense id spaces for two, so each path trains.
    id_space = {"memrec_per_feature": "per_feature", "qr": "global"}.get(embedding, "hashed")
    x, y = make_data(id_space=id_space)
    tf.keras.utils.set_random_seed(1)
    model = models.build_model(kind, spec_for(id_space), embedding, OPTIONS[embedding],
                               embedding_dim=D)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="binary_crossentropy")
    before = log_loss(model, x, y)
    model.fit(x, y, batch_size=100, epochs=1, verbose=0)
    after = log_loss(model, x, y)
    assert after < 0.8 * before, (before, after)
    if not KERAS_3:
        return
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x, training=False).numpy(),
                               model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)
    assert models.embedding_report(loaded) == models.embedding_report(model)


@pytest.mark.parametrize("kind", models.MODELS)
def test_without_dense_features(kind):
    x, _ = make_data(n=16)
    model = models.build_model(kind, spec_for("hashed", num_dense=0), "hashing",
                               OPTIONS["hashing"], embedding_dim=D)
    assert [t.name.split(":")[0] for t in model.inputs] == ["categorical"]
    assert model({"categorical": x["categorical"]}).shape == (16, 1)


def test_dcn_low_rank_parallel():
    x, _ = make_data(n=16)
    model = models.build_model("dcn", spec_for("hashed"), "hashing", OPTIONS["hashing"],
                               embedding_dim=D, projection_dim=4, structure="parallel",
                               num_cross_layers=3)
    assert model(x).shape == (16, 1)
    width = len(CARDS) * D + 4
    assert model.get_layer("cross_0").down.shape == (width, 4)


def test_dot_interaction_matches_numpy():
    t = np.random.default_rng(0).normal(size=(3, 4, 5)).astype("float32")
    got = models.DotInteraction()(t).numpy()
    gram = np.einsum("bnd,bmd->bnm", t, t)
    want = np.stack([gram[:, i, j] for i in range(4) for j in range(i + 1, 4)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_cross_layer_matches_formula():
    rng = np.random.default_rng(0)
    x0, xl = rng.normal(size=(2, 3, 6)).astype("float32")
    layer = models.CrossLayer()
    got = layer([x0, xl]).numpy()
    want = x0 * (xl @ layer.kernel.numpy() + layer.bias.numpy()) + xl
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------- bytes


def _built(method, id_space="hashed", **options):
    layer = layers.make_embedding(method, spec_for(id_space), D, **options)
    layer.build((None, len(CARDS)))
    return layer


def _variable_bytes(layer):
    return sum(int(np.prod(w.shape)) * tf.as_dtype(w.dtype).size for w in layer.weights)


FULL = sum(CARDS) * D * 4  # 12,800


@pytest.mark.parametrize("method,options,expected", [
    ("memrec", dict(num_token_rows=100, num_weight_rows=50), (100 * 8 + 50) * 4),
    ("memrec", dict(num_token_rows=100, num_weight_rows=50, num_hashes=3,
                    weight_mode="per_hash"), (100 * 8 + 50 * 3) * 4),
    ("memrec_per_feature", dict(num_token_rows=[4, 5, 6, 7, 8], num_weight_rows=2),
     ((4 + 5 + 6 + 7 + 8) * 8 + 5 * 2) * 4),
    ("full", {}, FULL),
    ("hashing", dict(num_rows=37), 37 * 8 * 4),
    ("qr", dict(remainder_rows=20), (20 + 20) * 8 * 4),  # Q = ceil(400 / 20)
    ("qr", dict(remainder_rows=[5, 6, 8, 10, 15], per_feature=True),
     (44 + (4 + 5 + 7 + 10 + 14)) * 8 * 4),
])
def test_embedding_bytes(method, options, expected):
    layer = _built(method, **options)
    report = layer.embedding_bytes()
    assert report == sizing.EmbeddingBytes(expected, FULL)
    assert _variable_bytes(layer) == expected
    assert report.ratio == pytest.approx(FULL / expected)


def test_global_ids_full_bytes_count_the_vocabulary():
    spec = FeatureSpec.of(0, [10, 10], vocabulary_size=50)
    layer = layers.make_embedding("full", spec, D)
    layer.build((None, 2))
    assert layer.embedding_bytes() == sizing.EmbeddingBytes(50 * D * 4, 50 * D * 4)


def test_model_report_sums_its_embedding():
    model = models.build_model("dlrm", spec_for("hashed"), "hashing", dict(num_rows=37),
                               embedding_dim=D)
    assert models.embedding_report(model) == sizing.EmbeddingBytes(37 * D * 4, FULL)


# ------------------------------------------------------------------- budget


@pytest.mark.parametrize("request_", [dict(compression=8), dict(compression=4),
                                      dict(budget=2000), dict(budget=20_000)])
def test_budget_configs_fit_and_build(request_):
    budget = request_.get("budget") or FULL // request_["compression"]
    configs = sizing.budget_configs(D, CARDS, **request_)
    assert {"memrec", "memrec_per_feature", "hashing", "qr"} <= set(configs)
    assert ("full" in configs) == (FULL <= budget)
    for method, config in configs.items():
        assert config.bytes <= budget, (method, config)
        assert config.full_bytes == FULL
        layer = _built(method, **config.options)
        assert layer.embedding_bytes().bytes == config.bytes, method
    qr = configs["qr"].options
    assert qr["remainder_rows"] * qr["quotient_rows"] >= sum(CARDS)


def test_budget_leaves_out_what_cannot_fit():
    # 800 bytes are 25 rows of 32: QR needs 2 x 20 rows to cover 400 values.
    configs = sizing.budget_configs(D, CARDS, compression=16)
    assert set(configs) == {"memrec", "memrec_per_feature", "hashing"}


def test_budget_memrec_weight_fraction():
    config = sizing.memrec_config(D, CARDS, compression=4, weight_fraction=0.125)
    o = config.options
    assert (o["num_token_rows"], o["num_weight_rows"]) == (87, 100)  # 3200 bytes
    assert o["num_weight_rows"] * 4 == 3200 // 8


def test_budget_with_vocabulary_size():
    configs = sizing.budget_configs(16, vocabulary_size=5382, compression=16)
    assert "memrec_per_feature" not in configs
    budget = 5382 * 16 * 4 // 16
    for config in configs.values():
        assert config.bytes <= budget
    qr = configs["qr"].options
    assert qr["remainder_rows"] * qr["quotient_rows"] >= 5382
    assert (qr["remainder_rows"] + qr["quotient_rows"]) * 16 * 4 <= budget


def test_budget_qr_per_feature_covers_each_feature():
    config = sizing.qr_config(D, CARDS, budget=3000, per_feature=True)
    o = config.options
    assert config.bytes <= 3000
    assert all(r * q >= c for r, q, c in zip(o["remainder_rows"], o["quotient_rows"], CARDS))


@pytest.mark.parametrize("num_values", [1, 2, 7, 400, 5382, 10**6 + 3])
def test_qr_rows_largest_remainder(num_values):
    least = budget_lib.qr_least_rows(num_values)
    for max_rows in (least, least + 1, 2 * least, num_values + 1):
        r, q = budget_lib.qr_rows(num_values, max_rows)
        assert r * q >= num_values and r + q <= max_rows
        if r < num_values:  # one more remainder row would not fit
            assert r + 1 + -(-num_values // (r + 1)) > max_rows
    assert budget_lib.qr_rows(num_values, least - 1) is None


def test_budget_errors():
    with pytest.raises(ValueError, match="below the 40 rows QR needs"):
        sizing.qr_config(D, CARDS, budget=39 * D * 4)
    with pytest.raises(ValueError, match="exactly one of budget"):
        sizing.hashing_config(D, CARDS)
    with pytest.raises(ValueError, match="cannot hold a MEM-REC layer"):
        sizing.memrec_config(D, CARDS, budget=60)


# ---------------------------------------------------------------- semantics


@pytest.mark.parametrize("combine", ["product", "sum"])
def test_qr_rows_distinct_for_distinct_indices(combine):
    vocab = 400
    spec = FeatureSpec.of(0, [vocab], vocabulary_size=vocab)
    layer = layers.make_embedding("qr", spec, D, remainder_rows=21, combine=combine)
    ids = np.arange(vocab, dtype="int64")[:, None]
    out = layer(ids).numpy()[:, 0]
    remainder, quotient = (t.numpy()[:, 0] for t in layer.rows(ids))
    assert len(set(zip(remainder, quotient))) == vocab
    assert quotient.max() == 19 and layer.quotient_rows == [20]
    assert len(np.unique(out, axis=0)) == vocab


def test_equal_raw_ids_in_two_features_differ():
    ids = np.full((4, len(CARDS)), 12345, dtype="int64")
    for method in ("memrec", "hashing", "qr"):
        out = _built(method, **OPTIONS[method])(ids).numpy()
        assert not np.allclose(out[0, 0], out[0, 1]), method


def test_shared_memrec_per_feature_ids_are_collision_free():
    # Per-feature dense ids become one vocabulary of 50: signatures from 16
    # rows (k=2: radices 8 x 8 = 64 >= 50) are all distinct.
    spec = FeatureSpec.of(0, [20, 30], dense_ids=True)
    layer = layers.make_embedding("memrec", spec, D, num_token_rows=16, num_weight_rows=8,
                                  embeddings_initializer="random_normal")
    ids = np.stack([np.arange(30) % 20, np.arange(30)], axis=1).astype("int64")
    out = layer(ids).numpy()
    values = np.concatenate([out[:20, 0], out[:, 1]])
    assert len(np.unique(values.round(6), axis=0)) == 50


def test_full_embedding_takes_dense_ids_as_is():
    layer = _built("full", id_space="per_feature")
    ids = np.array([[3, 4, 5, 6, 7]], dtype="int64")
    out = layer(ids).numpy()[0]
    for j in range(len(CARDS)):
        np.testing.assert_array_equal(out[j], layer.tables[j].embeddings.numpy()[ids[0, j]])


# ------------------------------------------------------------------- errors


def test_error_messages():
    spec = spec_for("hashed")
    with pytest.raises(ValueError, match="kind must be one of"):
        models.build_model("wide", spec)
    with pytest.raises(ValueError, match="embedding must be one of"):
        models.build_model("dlrm", spec, "bloom")
    with pytest.raises(ValueError, match="per_feature QR needs per-feature indices"):
        layers.make_embedding("qr", spec_for("global"), D, remainder_rows=4, per_feature=True)
    with pytest.raises(ValueError, match="at least two vectors"):
        models.build_model("dlrm", FeatureSpec.of(0, [10]), "full")
    with pytest.raises(ValueError, match=r"needs ids \[batch, 5\]"):
        layers.make_embedding("hashing", spec, D, num_rows=4)(np.zeros((2, 3), "int64"))
    with pytest.raises(ValueError, match="combine must be one of"):
        layers.make_embedding("qr", spec, D, remainder_rows=4, combine="concat")
    with pytest.raises(ValueError, match="cardinalities must be"):
        FeatureSpec.of(1, [10, 0])
    with pytest.raises(ValueError, match="cardinalities must be"):
        FeatureSpec.of(1, [10, 2.5])
    assert FeatureSpec.of(1, np.array([10, 20])).cardinalities == (10, 20)


# ------------------------------------------------------------------ tf-keras


@pytest.mark.slow
def test_legacy_keras_dlrm_memrec_fits():
    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        from memrec_tf import models, sizing
        from memrec_tf.features import FeatureSpec
        spec = FeatureSpec.of(2, [10, 20])
        model = models.build_model("dlrm", spec, "memrec", dict(num_token_rows=16),
                                   embedding_dim=4)
        assert type(model).__module__.startswith("tf_keras"), type(model).__module__
        model.compile("adam", "binary_crossentropy")
        rng = np.random.default_rng(0)
        x = {"dense": rng.normal(size=(8, 2)).astype("float32"),
             "categorical": rng.integers(0, 2**40, size=(8, 2))}
        history = model.fit(x, np.ones((8, 1), "float32"), epochs=1, verbose=0)
        assert models.embedding_report(model) == sizing.EmbeddingBytes(
            (16 * 4 + 16) * 4, 30 * 4 * 4)
        print("LOSS", history.history["loss"][0])
    """)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOSS" in result.stdout
