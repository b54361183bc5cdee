"""memrec_tf.features: the one FeatureSpec that readers produce and models read."""
import numpy as np
import pytest

from memrec_tf.features import FeatureSpec, column_names, feature_offsets, full_rows, id_space


def test_feature_spec():
    spec = FeatureSpec(("d",), ("a", "b", "c"), cardinalities=(3, 4, 5))
    np.testing.assert_array_equal(spec.column_offsets(), [0, 3, 7])
    features, label = spec.element_spec()
    assert features["categorical"].shape.as_list() == [None, 3]
    assert features["dense"].shape.as_list() == [None, 1]
    with pytest.raises(ValueError, match="cardinalities"):
        FeatureSpec(("d",), ("a",), cardinalities=(1, 2))
    with pytest.raises(ValueError, match="cardinalities must be"):
        FeatureSpec((), ("a", "b"), cardinalities=(3, None))
    with pytest.raises(ValueError, match="no cardinalities"):
        FeatureSpec((), ("a", "b")).column_offsets()


def test_no_dense_features_no_dense_key():
    spec = FeatureSpec((), ("a", "b"), cardinalities=(3, 4))
    features, _ = spec.element_spec()
    assert set(features) == {"categorical"}
    batch = {"dense": np.zeros((2, 0), np.float32), "categorical": np.zeros((2, 2), np.int64)}
    assert set(spec.batch_features(batch)) == {"categorical"}
    with_dense = FeatureSpec(("x",), ("a", "b"))
    assert set(with_dense.batch_features(batch)) == {"dense", "categorical"}


def test_of_names_the_columns_like_criteo():
    spec = FeatureSpec.of(2, [10, 20, 30])
    assert spec.dense_names == ("I1", "I2") and spec.categorical_names == ("C1", "C2", "C3")
    assert (spec.num_dense, spec.num_categorical) == (2, 3)
    assert spec.cardinalities == (10, 20, 30) and spec.id_space == "hashed"
    assert FeatureSpec.of(0, [4], dense_ids=True).id_space == "per_feature"
    assert FeatureSpec.of(0, [4, 5], vocabulary_size=9).id_space == "global"
    assert FeatureSpec.of(1, np.array([10, 20])).cardinalities == (10, 20)
    with pytest.raises(ValueError, match="num_dense"):
        FeatureSpec.of(-1, [3])
    with pytest.raises(ValueError, match="non-empty"):
        FeatureSpec.of(1, [])
    with pytest.raises(ValueError, match="not both"):
        FeatureSpec.of(0, [4], vocabulary_size=4, dense_ids=True)
    with pytest.raises(ValueError, match="vocabulary_size"):
        FeatureSpec.of(0, [4], vocabulary_size=-1)


def test_dict_round_trip():
    spec = FeatureSpec(("x",), ("a", "b"), cardinalities=(3, 4), id_encoding="hash",
                       label_name="click", extra_features=("weights",))
    assert FeatureSpec.from_any(spec.to_dict()) == spec
    assert FeatureSpec.from_any(spec) is spec
    assert FeatureSpec.from_any({"num_dense": 1, "cardinalities": [3, 4]}) == \
        FeatureSpec.of(1, [3, 4])
    unknown = FeatureSpec((), ("a",))
    assert unknown.to_dict()["cardinalities"] is None
    assert unknown.with_cardinalities([7]).cardinalities == (7,)
    with pytest.raises(ValueError, match="FeatureSpec or a dict"):
        FeatureSpec.from_any([3, 4])


def test_id_spaces_and_full_rows():
    assert column_names("C", 2) == ("C1", "C2")
    np.testing.assert_array_equal(feature_offsets([3, 4, 5]), [0, 3, 7])
    assert feature_offsets([]).size == 0
    assert (id_space(0, False), id_space(0, True), id_space(9, False)) == \
        ("hashed", "per_feature", "global")
    assert full_rows([3, 4]) == 7 and full_rows([3, 4], vocabulary_size=9) == 9
    assert FeatureSpec.of(0, [3, 4], vocabulary_size=9).full_rows == 9
