"""Pinned hash vectors: which rows a value maps to must never change.

Changing a constant or formula of custom_ops/memrec_math.h silently remaps
every id of every trained model. The literals below were produced once by the
CPU MemRecHashRows op (memrec_tf.ops.hash_rows) at commit 31597ac (after
508ce81's multiply-shift range reduction for tables below 2^32 rows and
31597ac's quotient-remainder sizing of vocabulary digits) and are checked
against the fused op, the built-in-ops path (memrec_tf.ops.core) and the
TensorFlow-free numpy uint64 hash in tests/reference.py. Do not regenerate
them to make a test pass: a mismatch means the hash changed.
"""
import numpy as np
import pytest
import tensorflow as tf

import reference
from memrec_tf import ops
from memrec_tf.ops import core
from memrec_tf.layers.ids import ids_to_int64
from memrec_tf.ops import signature as sig_lib
from memrec_tf.ops.signature import Signature

# tf.fingerprint (farmhash64) of the UTF-8 bytes, bitcast to int64 as
# MemRecEmbedding does for string ids.
STRING_IDS = {
    '': -7286425919675154353,
    'a': -5528939962900187677,
    'é': 693143013273849025,
    '日本': 5676833963740711883,
}
VECTORS = [
    dict(name='known', signature={'num_hashes': 3, 'num_weight_hashes': 2, 'seed': 7, 'num_salts': 4}, m=1000, m_w=50,
         ids=[0, 1, -1],
         token_rows=[[253, 916, 437], [551, 550, 20], [230, 31, 974]],
         weight_rows=[[26, 0], [1, 18], [35, 16]]),
    dict(name='edge_ids_seed0', signature={'num_hashes': 2, 'num_weight_hashes': 1}, m=65536, m_w=97,
         ids=[0, 1, -1, 9223372036854775807, -9223372036854775808, 9223372036854775806, -9223372036854775807, 4294967296, 1099511627779, 123456789012345, -987654321, 7],
         token_rows=[[38264, 9459], [55891, 48884], [13482, 15621], [53760, 60383], [32041, 45782], [6980, 7840], [23673, 36905], [37320, 15995], [47513, 57998], [3705, 27072], [690, 37365], [15755, 35234]],
         weight_rows=[[56], [87], [29], [86], [55], [3], [17], [35], [76], [90], [68], [3]]),
    dict(name='negative_seed', signature={'num_hashes': 4, 'num_weight_hashes': 2, 'seed': -1}, m=1009, m_w=13,
         ids=[0, 1, -1, 9223372036854775807, -9223372036854775808, 9223372036854775806, -9223372036854775807, 4294967296, 1099511627779, 123456789012345, -987654321, 7],
         token_rows=[[396, 158, 861, 634], [201, 116, 908, 76], [47, 220, 61, 249], [610, 243, 814, 815], [481, 210, 263, 531], [941, 157, 192, 606], [109, 330, 829, 939], [885, 564, 243, 55], [277, 179, 36, 533], [765, 891, 303, 955], [893, 743, 56, 709], [537, 886, 543, 616]],
         weight_rows=[[11, 5], [0, 0], [6, 5], [6, 8], [11, 2], [5, 6], [2, 5], [11, 11], [11, 3], [1, 1], [7, 1], [10, 10]]),
    dict(name='large_seed_huge_tables', signature={'num_hashes': 3, 'num_weight_hashes': 3, 'seed': 4611686018427400249}, m=1099511627776, m_w=8589934592,
         ids=[0, 1, -1, 9223372036854775807, -9223372036854775808, 9223372036854775806, -9223372036854775807, 4294967296, 1099511627779, 123456789012345, -987654321, 7],
         token_rows=[[764202289743, 888206198186, 621635153327], [274339145097, 553443442099, 640220724643], [247239617755, 1057445777899, 539094698131], [837260003662, 394280206436, 1065562927352], [1086310691752, 272228524079, 852015155257], [480395765363, 397608706562, 190431542756], [107223266041, 583958632151, 332389501201], [522986798906, 223298532229, 257038748494], [973216407481, 684632134330, 775338188559], [279108825072, 274611640510, 842843263969], [950694394564, 455755543214, 1032398126774], [227333923740, 379012809347, 361036409516]],
         weight_rows=[[657607033, 2023014139, 987061438], [2790056508, 4143595460, 872523148], [5241323562, 3512200929, 600833506], [7368056695, 961695216, 7621880245], [709829538, 7046786931, 4168583896], [2982932710, 8063598014, 6385779085], [1773679514, 3785176572, 6453825932], [4023146017, 5197767059, 303857764], [4569813709, 8400589380, 8121250118], [7853242174, 2739414129, 4990242785], [2805017630, 8244948967, 4507259896], [8175847208, 3851049473, 220829475]]),
    dict(name='range_reduction_boundary', signature={'num_hashes': 2, 'num_weight_hashes': 2, 'seed': 2}, m=4294967295, m_w=4294967296,
         ids=[0, 1, -1, 9223372036854775807, -9223372036854775808, 9223372036854775806, -9223372036854775807, 4294967296, 1099511627779, 123456789012345, -987654321, 7],
         token_rows=[[3486121414, 2325163267], [1015869472, 10444604], [1530920820, 2266919723], [1800120820, 3853352541], [3175140992, 2284557749], [3120814790, 1062776727], [2642281170, 2294584209], [126961942, 3162452975], [4211889201, 449789955], [1372048991, 3325935868], [2386048481, 2360002704], [423574044, 115551404]],
         weight_rows=[[1914307983, 2773072639], [3639790592, 2458655571], [1719695432, 1054461034], [3119131579, 3834982423], [2180006478, 3630330531], [59721539, 1149897502], [2010486538, 1420410325], [2889226300, 3618119560], [3485550265, 3748380022], [1699211689, 586158049], [1778951883, 1416660123], [2485279519, 1463164077]]),
    dict(name='single_row_tables', signature={'num_hashes': 3, 'num_weight_hashes': 2, 'seed': 4}, m=1, m_w=1,
         ids=[0, -1, 9223372036854775807],
         token_rows=[[0, 0, 0], [0, 0, 0], [0, 0, 0]],
         weight_rows=[[0, 0], [0, 0], [0, 0]]),
    dict(name='salts_26', signature={'num_hashes': 2, 'num_weight_hashes': 1, 'seed': 3, 'num_salts': 26}, m=4096, m_w=64,
         ids=[42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42],
         token_rows=[[1348, 1879], [3570, 3410], [1173, 1434], [384, 2761], [649, 2947], [1094, 3210], [2918, 2943], [390, 1489], [169, 3381], [3057, 1366], [4, 235], [1694, 3921], [702, 2647], [2164, 1318], [185, 1162], [1751, 2231], [2268, 522], [2279, 1901], [2483, 1197], [3771, 2655], [255, 57], [863, 3947], [159, 1017], [3436, 2639], [3249, 2028], [979, 1190], [1348, 1879], [3570, 3410], [1173, 1434], [384, 2761]],
         weight_rows=[[37], [46], [0], [21], [4], [60], [7], [56], [49], [17], [60], [26], [4], [7], [51], [43], [26], [14], [58], [34], [29], [41], [19], [28], [1], [44], [37], [46], [0], [21]]),
    dict(name='vocab_head', signature={'num_hashes': 3, 'num_weight_hashes': 2, 'seed': 11, 'vocab_size': 100, 'num_head': 5}, m=40, m_w=9,
         ids=[0, 4, 5, 6, 37, 99, 100, -1, 9223372036854775807],
         token_rows=[[0, 0, 0], [4, 4, 4], [5, 35, 39], [6, 35, 39], [7, 36, 39], [9, 38, 39], [30, 37, 33], [29, 36, 18], [33, 39, 6]],
         weight_rows=[[0, 5], [4, 5], [0, 6], [1, 6], [2, 8], [4, 8], [2, 7], [2, 8], [3, 8]]),
    dict(name='vocab_large', signature={'num_hashes': 4, 'num_weight_hashes': 2, 'seed': 0, 'vocab_size': 1000000}, m=1000, m_w=100,
         ids=[0, 1, 999, 1000, 123456, 999999, 1000000, -5],
         token_rows=[[0, 950, 981, 998], [1, 950, 981, 998], [49, 951, 981, 998], [50, 951, 981, 998], [906, 955, 985, 998], [599, 979, 997, 999], [962, 597, 8, 383], [984, 973, 462, 424]],
         weight_rows=[[0, 50], [1, 50], [49, 69], [0, 70], [6, 69], [49, 99], [56, 34], [47, 15]]),
    dict(name='vocab_even_split', signature={'num_hashes': 2, 'num_weight_hashes': 2, 'seed': 0, 'vocab_size': 1000000}, m=100, m_w=40,
         ids=[0, 1, 49, 50, 12345, 999999, 1000000, -1],
         token_rows=[[0, 50], [1, 50], [49, 50], [0, 51], [45, 96], [49, 99], [96, 59], [20, 23]],
         weight_rows=[[0, 20], [1, 20], [9, 22], [10, 22], [5, 37], [19, 39], [22, 13], [12, 36]]),
    dict(name='no_weight_hashes', signature={'num_hashes': 1, 'num_weight_hashes': 0, 'seed': 5}, m=10, m_w=0,
         ids=[0, 1, -1, 9223372036854775807, -9223372036854775808],
         token_rows=[[3], [6], [0], [2], [0]],
         weight_rows=[[], [], [], [], []]),
    dict(name='max_hashes', signature={'num_hashes': 16, 'num_weight_hashes': 16, 'seed': 5}, m=100003, m_w=101,
         ids=[0, -1, 9223372036854775807],
         token_rows=[[36700, 37388, 59554, 82344, 80995, 14864, 30061, 30079, 3653, 58902, 26831, 82010, 64346, 71746, 68263, 35775], [9359, 3910, 57968, 82544, 5138, 51213, 15858, 11718, 86843, 83387, 4776, 4948, 23941, 22113, 92767, 93263], [26345, 19898, 63091, 60016, 85288, 35540, 28362, 22180, 5907, 74522, 33811, 51141, 23977, 31746, 85280, 70302]],
         weight_rows=[[46, 3, 33, 38, 42, 32, 67, 50, 3, 3, 54, 13, 17, 73, 33, 23], [15, 98, 20, 6, 42, 21, 30, 44, 49, 24, 88, 33, 47, 71, 96, 100], [31, 58, 85, 80, 29, 13, 21, 98, 95, 17, 73, 49, 1, 7, 61, 9]]),
    dict(name='string_ids', signature={'num_hashes': 2, 'num_weight_hashes': 2, 'seed': 1}, m=5000, m_w=30,
         ids=[-7286425919675154353, -5528939962900187677, 693143013273849025, 5676833963740711883],
         token_rows=[[4279, 1152], [1290, 3419], [2560, 1493], [2829, 885]],
         weight_rows=[[26, 6], [22, 16], [9, 15], [10, 4]]),
]

_IDS = {v["name"]: v for v in VECTORS}


def _op_rows(vector, fn):
    token, weight = fn(tf.constant(vector["ids"], tf.int64), Signature(**vector["signature"]),
                       vector["m"], vector["m_w"])
    return np.asarray(token), np.asarray(weight)


def _assert_pinned(vector, token, weight):
    """token [N, k] and weight [N, kw] rows are the vector's pinned rows."""
    k = vector["signature"]["num_hashes"]
    kw = vector["signature"].get("num_weight_hashes", 0)
    n = len(vector["ids"])
    token, weight = np.asarray(token), np.asarray(weight)
    assert token.dtype == np.int64 and weight.dtype == np.int64
    np.testing.assert_array_equal(token, np.array(vector["token_rows"], np.int64).reshape(n, k))
    np.testing.assert_array_equal(weight,
                                  np.array(vector["weight_rows"], np.int64).reshape(n, kw))


@pytest.mark.parametrize("hash_rows", [ops.hash_rows, core.hash_rows], ids=["fused", "core"])
@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_implementation_reproduces_pinned_rows(vector, hash_rows):
    _assert_pinned(vector, *_op_rows(vector, hash_rows))


# XLA compiles are slow on CPU: a subset that covers salts, a vocabulary,
# tables past 2^32 rows and extreme ids.
@pytest.mark.parametrize("name", ["known", "large_seed_huge_tables", "range_reduction_boundary",
                                  "vocab_head"])
def test_core_path_reproduces_pinned_rows_under_xla(name):
    vector = _IDS[name]
    fn = tf.function(lambda ids: core.hash_rows(ids, Signature(**vector["signature"]),
                                                vector["m"], vector["m_w"]),
                     jit_compile=True)
    _assert_pinned(vector, *fn(tf.constant(vector["ids"], tf.int64)))


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_numpy_uint64_hash_reproduces_pinned_rows(vector):
    _assert_pinned(vector, *reference.hash_rows_for(
        vector["ids"], Signature(**vector["signature"]), vector["m"], vector["m_w"]))


def test_known_values():
    # Before 508ce81 (top 63 bits modulo m for every table) these ids took
    # [[433, 904, 684], [307, 23, 496], [630, 418, 348]].
    token, weight = ops.hash_rows(tf.constant([0, 1, -1], tf.int64),
                                  Signature(num_hashes=3, num_weight_hashes=2, seed=7, num_salts=4),
                                  1000, 50)
    np.testing.assert_array_equal(token.numpy(), [[253, 916, 437], [551, 550, 20], [230, 31, 974]])
    np.testing.assert_array_equal(weight.numpy(), [[26, 0], [1, 18], [35, 16]])


def test_tables_from_2_to_the_32_rows_keep_the_modulo_reduction():
    # Only tables below 2^32 rows changed in 508ce81; larger ones keep the
    # top 63 bits modulo m. Recomputed here on Python ints.
    v = _IDS["large_seed_huge_tables"]
    salt = sig_lib.salt_key(v["signature"]["seed"], 0)
    for id_, rows in zip(v["ids"], v["token_rows"]):
        key = sig_lib.mix64((id_ & reference.MASK64) ^ salt)
        expected = [(sig_lib.mix64(key + (j + 1) * sig_lib.TOKEN_STREAM) >> 1) % v["m"]
                    for j in range(3)]
        assert rows == expected, id_


def test_salts_repeat_with_period_num_salts():
    token = np.array(_IDS["salts_26"]["token_rows"])
    # The same raw id at positions 0..25 takes 26 different signatures ...
    assert len({tuple(r) for r in token[:26]}) == 26
    # ... and position p + 26 is salted like position p.
    np.testing.assert_array_equal(token[26:], token[:4])


def test_vocabulary_head_ids_own_a_row_and_tail_signatures_are_distinct():
    v = _IDS["vocab_head"]
    token = np.array(v["token_rows"])
    head = v["signature"]["num_head"]
    for id_, rows in zip(v["ids"], token):
        if 0 <= id_ < head:
            assert list(rows) == [id_] * len(rows)
        elif 0 <= id_ < v["signature"]["vocab_size"]:
            assert all(r >= head for r in rows), (id_, rows)
    # Every in-vocabulary value has a signature of its own (collision-free).
    sig = Signature(**v["signature"])
    all_ids = np.arange(sig.vocab_size, dtype=np.int64)
    rows, _ = ops.hash_rows(tf.constant(all_ids), sig, v["m"], v["m_w"])
    assert len({tuple(r) for r in rows.numpy()}) == sig.vocab_size


@pytest.mark.parametrize("vocab,head,k,m", [
    (1000, 10, 3, 200),
    (3360, 0, 3, 336),
    (100_000, 0, 4, 300),
    (5000, 100, 2, 300),
    (97, 0, 2, 30),
])
def test_vocabulary_signatures_are_unique_and_read_nearly_every_row(vocab, head, k, m):
    sig = Signature(num_hashes=k, num_weight_hashes=1, vocab_size=vocab, num_head=head)
    rows, _ = ops.hash_rows(tf.constant(np.arange(vocab, dtype=np.int64)), sig, m, 5)
    rows = rows.numpy()
    assert len({tuple(r) for r in rows}) == vocab  # collision-free
    read = np.unique(rows)
    assert read.min() >= 0 and read.max() < m
    # The later digits are sized once; a few rows may go unread, never many
    # (an even split of 300 rows for 5,000 values reads 200).
    assert len(read) >= 0.95 * m, (len(read), m)


@pytest.mark.parametrize("text", list(STRING_IDS))
def test_string_ids_are_pinned_fingerprints(text):
    got = ids_to_int64(tf.constant([text, text]))
    assert got.dtype == tf.int64
    np.testing.assert_array_equal(got.numpy(), [STRING_IDS[text]] * 2)


def test_string_ids_keep_their_shape():
    texts = [["", "a"], ["é", "日本"]]
    got = ids_to_int64(tf.constant(texts)).numpy()
    np.testing.assert_array_equal(got, [[STRING_IDS[t] for t in row] for row in texts])
    np.testing.assert_array_equal(_IDS["string_ids"]["ids"], [STRING_IDS[t] for t in STRING_IDS])


@pytest.mark.parametrize("seed", [0, 1, -7, 2**40 + 5, reference.INT64_MAX, reference.INT64_MIN])
@pytest.mark.parametrize("num_salts", [0, 1, 3])
def test_random_ids_agree_across_three_implementations(rng, seed, num_salts):
    # Beyond the pinned table: many random ids, odd table sizes, every seed
    # range; bit-identical rows from the kernel, core path and numpy.
    ids = reference.random_ids(rng, 300)
    sig = Signature(num_hashes=5, num_weight_hashes=3, seed=seed, num_salts=num_salts)
    m, m_w = 2**31 + 11, 12345
    token, weight = ops.hash_rows(tf.constant(ids), sig, m, m_w)
    core_token, core_weight = core.hash_rows(tf.constant(ids), sig, m, m_w)
    np_token, np_weight = reference.hash_rows_for(ids, sig, m, m_w)
    np.testing.assert_array_equal(token.numpy(), np_token)
    np.testing.assert_array_equal(weight.numpy(), np_weight)
    np.testing.assert_array_equal(core_token.numpy(), np_token)
    np.testing.assert_array_equal(core_weight.numpy(), np_weight)
    assert np_token.min() >= 0 and np_token.max() < m
    assert np_weight.min() >= 0 and np_weight.max() < m_w


@pytest.mark.parametrize("in_vocab", ["all", "mixed", "none"])
@pytest.mark.parametrize("num_head", [0, 3])
def test_core_vocabulary_rows_agree_with_the_kernel(rng, in_vocab, num_head):
    # The core path computes no random hash when every id is in the
    # vocabulary; each branch must give the kernel's rows.
    vocab = 50
    ids = {"all": rng.integers(0, vocab, 200),
           "mixed": rng.integers(-5, vocab + 5, 200),
           "none": reference.random_ids(rng, 200)}[in_vocab]
    sig = Signature(num_hashes=3, num_weight_hashes=2, seed=4, vocab_size=vocab,
                    num_head=num_head)
    for fn in (core.hash_rows, tf.function(core.hash_rows, reduce_retracing=True)):
        got = fn(tf.constant(ids, tf.int64), sig, 23, 9)
        want = ops.hash_rows(tf.constant(ids, tf.int64), sig, 23, 9)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.numpy(), w.numpy())


def test_seeds_give_independent_rows():
    ids = tf.constant(np.arange(200, dtype=np.int64))
    a, _ = ops.hash_rows(ids, Signature(num_hashes=2, num_weight_hashes=1, seed=0), 10**6, 10)
    b, _ = ops.hash_rows(ids, Signature(num_hashes=2, num_weight_hashes=1, seed=1), 10**6, 10)
    # With a million rows, equal rows for most ids would mean the seed is ignored.
    assert np.mean(a.numpy() == b.numpy()) < 0.01


def test_hash_rows_op_rejects_a_rank_2_ids(lib):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"ids must be a vector \(rank 1\), got shape \[2,2\]"):
        lib.mem_rec_hash_rows(tf.zeros([2, 2], tf.int64), num_hashes=2, num_weight_hashes=1,
                              num_token_rows=10, num_weight_rows=5)


def test_hash_rows_op_rejects_a_vocabulary_larger_than_the_table(lib):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"token_table has 4 rows but a vocabulary signature needs at least "
                             r"num_head \+ num_hashes = 5"):
        lib.mem_rec_hash_rows(tf.zeros([3], tf.int64), num_hashes=3, num_weight_hashes=1,
                              num_token_rows=4, num_weight_rows=5, vocab_size=10, num_head=2)
