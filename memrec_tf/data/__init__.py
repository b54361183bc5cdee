"""Streaming `tf.data` input pipelines for click logs (DLRM / DCN training).

Every source yields `(features, label)` batches:
  features = {"dense": float32 [B, num_dense] (only when num_dense > 0),
              "categorical": int64 [B, num_categorical]}
  label    = float32 [B] of 0/1
described by a `memrec_tf.features.FeatureSpec` (`spec.num_dense`, `spec.num_categorical`,
`spec.categorical_names`, `spec.cardinalities` where known,
`spec.element_spec()`).

Categorical ids:
  * Criteo hex strings: int(s, 16) (in [0, 2**32)).
  * Other strings (CSV, MovieLens): FarmHash Fingerprint64 of
    `column + "\\x1f" + value`, mod 2**63 - 1 (`hash_strings`).
  * libFM indices: used as they are.
  * Empty field: `EMPTY_ID` = -1 everywhere. Empty numeric field: 0.
  * Criteo integers: log(1 + max(x, 0)).

File readers (classes; `reader.dataset()` -> tf.data.Dataset,
`reader.iter_batches()` -> numpy batches, `reader.read_all()`,
`reader.spec`, `reader.stats`, `reader.count_lines()`):
  CriteoTSVReader(paths, batch_size=4096, on_error="skip")
  LibFMReader(paths, num_fields=None, field_names=None, cardinalities=None,
              with_values=False, batch_size=4096, on_error="skip")
  frappe_reader(path, **kwargs)
  CSVReader(paths, columns, delimiter=None, label_threshold=None,
            numeric_transform=None, hash_with_column=True, batch_size=4096,
            on_error="skip")
Every file reader also takes `max_reported=20` and `max_line_bytes`.
Malformed lines (wrong field count, non-numeric field, bad label, invalid
UTF-8, longer than `max_line_bytes`: default `MAX_LINE_BYTES` = 16 MiB)
are skipped and counted, or with `on_error="raise"` stop the pass with
`MalformedLineError` ("malformed line in FILE at line N: WHY"). Reading
time is linear in the input size, and an over-long line is dropped as it
streams, never held whole. A truncated or corrupt `.gz` file always stops
the pass with `CorruptFileError` ("FILE: the gzip stream is truncated or
corrupt after N lines (M bytes of data): WHY"). Both are ValueErrors;
through `reader.dataset()` they arrive as a `tf.errors.OpError`, and the
error itself is in `reader.stats.error`.
After a pass `reader.stats` (`ReadStats`) holds `rows_read`,
`rows_rejected`, `header_lines` and the first rejects (`Reject(path, line,
reason)`); per file, header_lines + rows_read + rows_rejected == lines.

Synthetic data:
  SyntheticCriteo(cardinalities="small"|"tiny"|"terabyte"|[...],
                  num_dense=13, num_rows=None, batch_size=4096, seed=0,
                  stream=0, zipf_exponent=1.1, signal_strength=1.0, ...)
  with .dataset(), .iter_batches(), .batch(i), .logits(features), .spec.

Small real sets, whole in memory (`ArrayData`: .spec, .splits[split] =
{"dense", "categorical", "index", "label"} numpy arrays, .vocabulary,
.dataset(split, batch_size, ids="index"|"raw", shuffle=False)):
  load_criteo_sample(data_dir=None)   splits train / dev / test
  load_frappe(data_dir=None)          splits train / test (+ dev)
  load_movielens100k(data_dir=None)   splits train / dev / test
  movielens100k_dataset(split, batch_size=1024) -> (dataset, spec)
"index" is a dense global vocabulary index in [0, spec.vocabulary_size):
each (column, value) pair seen in train has its own index; each column's
block starts with an OOV index for unseen values (Frappe: its own global
libFM indices, no OOV slot). `data_dir()` finds the shared data folder
(`MEMREC_DATA_DIR` or `../shared/data` beside the repository).
"""
from memrec_tf.data._lines import MAX_LINE_BYTES
from memrec_tf.data.arrays import ArrayData
from memrec_tf.data.counting import (NoRowsError, TooManyValuesError, count_values,
                                     counted_cardinalities)
from memrec_tf.data.criteo import CRITEO_SPEC, CriteoTSVReader, dense_transform, load_criteo_sample
from memrec_tf.data.csv_reader import CSVReader, sniff_delimiter
from memrec_tf.data.hashing import EMPTY_ID, hash_strings, hash_strings_tf
from memrec_tf.data.libfm import (FRAPPE_CARDINALITIES, FRAPPE_FIELDS, LibFMReader, frappe_reader,
                                  load_frappe)
from memrec_tf.data.movielens import MOVIELENS_COLUMNS, load_movielens100k, movielens100k_dataset
from memrec_tf.data.paths import count_lines, data_dir
from memrec_tf.data.columns import ColumnSpec
from memrec_tf.data.stats import CorruptFileError, MalformedLineError, ReadStats, Reject
from memrec_tf.data.synthetic import PRESETS, TERABYTE_CARDINALITIES, SyntheticCriteo
from memrec_tf.data.vocab import Vocabulary, frequency_order

__all__ = [
    "ArrayData", "CRITEO_SPEC", "CSVReader", "ColumnSpec", "CorruptFileError", "CriteoTSVReader",
    "EMPTY_ID", "FRAPPE_CARDINALITIES", "FRAPPE_FIELDS", "LibFMReader", "MAX_LINE_BYTES",
    "MOVIELENS_COLUMNS", "MalformedLineError", "PRESETS", "ReadStats", "Reject",
    "NoRowsError", "SyntheticCriteo", "TERABYTE_CARDINALITIES", "TooManyValuesError", "Vocabulary",
    "count_lines", "count_values", "counted_cardinalities", "data_dir", "dense_transform",
    "frappe_reader", "frequency_order", "hash_strings", "hash_strings_tf", "load_criteo_sample",
    "load_frappe", "load_movielens100k", "movielens100k_dataset", "sniff_delimiter",
]
