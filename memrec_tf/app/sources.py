"""Where a run's rows come from: the data options, the format of a file, the
readers and the tf.data pipelines, and the feature spec of the model that
reads them."""
import dataclasses
import gc
import os
import re

import tensorflow as tf

from memrec_tf import data as data_lib
from memrec_tf.app.errors import UsageError
from memrec_tf.features import FeatureSpec

FORMATS = ("synthetic", "criteo", "libfm", "csv")
FILE_FORMATS = FORMATS[1:]
# The share of a file's lines that may be malformed before a run stops.
DEFAULT_MAX_REJECTED = 0.01
CRITEO_FIELDS = 40
_LIBFM_PAIR = re.compile(rb"^-?\d+:[-+.\deE]+$")


@dataclasses.dataclass
class DataOptions:
    """Where the rows come from and how to read them.

    `format` None infers the format from the files (`infer_format`), or means
    the synthetic generator when no file is given.
    """

    format: str = None
    train: str = None
    eval: str = None
    columns: str = None            # csv: label=...,categorical=...,numeric=...
    delimiter: str = None          # csv: default sniffed from the header
    label_threshold: float = None  # csv: labels >= this are 1
    libfm_fields: int = None       # libfm: pairs per line (one per field)
    on_error: str = "skip"         # malformed lines: skip (counted) or raise
    max_rejected: float = DEFAULT_MAX_REJECTED  # share of lines that may be skipped
    cardinalities: list = None     # per categorical feature; counted when absent
    synthetic_preset: str = "small"
    synthetic_rows: int = 200_000
    synthetic_eval_rows: int = 50_000
    seed: int = 0                  # the synthetic rows (and the run's initial weights)
    train_flag: str = "--train"    # the flags that named the files, for messages
    eval_flag: str = "--eval"

    @property
    def files(self):
        return [p for p in (self.train, self.eval) if p is not None]

    def resolved(self):
        """These options with the format filled in (inferred from the files)."""
        if self.format is not None:
            return self
        if not self.files:
            return dataclasses.replace(self, format="synthetic")
        flags = {self.train: self.train_flag, self.eval: self.eval_flag}
        formats = {path: infer_format(path, flags[path]) for path in self.files}
        if len(set(formats.values())) > 1:
            raise UsageError("the data files look like different formats ("
                             + ", ".join(f"{p}: {f}" for p, f in formats.items())
                             + "); pass --format")
        return dataclasses.replace(self, format=formats[self.files[0]])


def check_file(path, flag):
    """`path` if it is a readable file, else a UsageError naming `flag`."""
    if path is None:
        raise UsageError(f"{flag} FILE is required for this format")
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path}: no such file")
    return path


def infer_format(path, flag="data file"):
    """The format of a data file from its name and first line.

    .csv files are csv; otherwise a first line of 40 tab-separated fields is
    Criteo's, and one of "label index:value ..." is libFM.

    Raises:
      UsageError: the file is missing, or its format cannot be told.
    """
    check_file(path, flag)
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith(".csv"):
        return "csv"
    try:
        with data_lib.paths.open_binary(path) as f:
            first = f.readline(1 << 20).rstrip(b"\r\n")
    except (OSError, EOFError) as e:
        raise UsageError(f"cannot read {path}: {e}") from e
    if first.count(b"\t") == CRITEO_FIELDS - 1:
        return "criteo"
    tokens = first.split()
    if len(tokens) > 1 and all(_LIBFM_PAIR.match(t) for t in tokens[1:]):
        return "libfm"
    raise UsageError(f"cannot tell the format of {path} from its first line; pass --format "
                     f"({' or '.join(FILE_FORMATS)})")


def make_reader(options, path, batch_size):
    """A reader of one file of `options` (whose format is known)."""
    fmt = options.format
    if fmt == "criteo":
        return data_lib.CriteoTSVReader([path], batch_size=batch_size, on_error=options.on_error)
    if fmt == "libfm":
        return data_lib.LibFMReader([path], num_fields=options.libfm_fields,
                                    batch_size=batch_size, on_error=options.on_error)
    if fmt == "csv":
        if not options.columns:
            raise UsageError("--format csv needs --columns "
                             "'label=NAME,categorical=A,B,...,numeric=X,Y,...'")
        try:
            columns = data_lib.ColumnSpec.parse(options.columns)
        except ValueError as e:
            raise UsageError(f"--columns: {e}") from e
        return data_lib.CSVReader([path], columns=columns, delimiter=options.delimiter,
                                  label_threshold=options.label_threshold,
                                  batch_size=batch_size, on_error=options.on_error)
    raise UsageError(f"unknown format {fmt!r}; choose one of {FORMATS}")


def count_training_values(options, batch_size=8192):
    """`data.count_values` of the training file (or else the eval file)."""
    path, flag = ((options.train, options.train_flag) if options.train
                  else (options.eval, options.eval_flag))
    reader = make_reader(options, check_file(path, flag), batch_size)
    try:
        counted = reading([reader], data_lib.count_values, reader)
    except data_lib.TooManyValuesError as e:
        raise UsageError(f"{e} in {path}: pass --cardinalities instead of counting them") from e
    except data_lib.NoRowsError as e:
        reasons = read_stats([reader])["first_rejects"][:3]
        raise UsageError(f"{flag} {path} holds no valid rows"
                         + (f" ({'; '.join(reasons)})" if reasons else " (the file is empty)")
                         ) from e
    check_rejects([reader], options.max_rejected)
    return counted, reader.spec, reader.stats.rows_read


@dataclasses.dataclass
class Source:
    """Data pipelines and the feature spec of the model that reads them."""

    train: object            # callable(batch_size) -> tf.data.Dataset, or None
    eval: object             # callable(batch_size) -> tf.data.Dataset, or None
    spec: FeatureSpec        # with every cardinality
    readers: list            # file readers, for their malformed-line stats
    train_rows: int = None   # rows of the training data, where counted


def _as_model_batches(dataset):
    # Readers yield labels [B]; the models predict [B, 1].
    return dataset.map(lambda features, label: (features, tf.reshape(label, [-1, 1])),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def make_source(options, batch_size, spec=None, train_rows=None):
    """Pipelines for the training and evaluation data of `options`.

    Args:
      options: `DataOptions` (resolved or not).
      batch_size: rows per batch.
      spec: the feature spec of a trained model: the data must have its
        features (no counting pass then).
    """
    options = options.resolved()
    if options.format not in FORMATS:
        raise UsageError(f"unknown format {options.format!r}; choose one of {FORMATS}")
    if options.format == "synthetic":
        cards = options.cardinalities or options.synthetic_preset

        def synthetic(rows, stream, batch):
            return data_lib.SyntheticCriteo(cards, num_rows=rows, seed=options.seed,
                                            stream=stream, batch_size=batch)

        return Source(
            train=lambda b: _as_model_batches(synthetic(options.synthetic_rows, 0, b).dataset()),
            eval=lambda b: _as_model_batches(
                synthetic(options.synthetic_eval_rows, 1, b).dataset()),
            spec=spec or synthetic(1, 0, batch_size).spec, readers=[],
            train_rows=options.synthetic_rows)
    readers = []

    def pipeline(path):
        if path is None:
            return None

        def make(b):
            reader = make_reader(options, path, b)
            readers.append(reader)
            return _as_model_batches(reader.dataset())
        return make

    if options.train is not None:
        check_file(options.train, options.train_flag)
    if options.eval is not None:
        check_file(options.eval, options.eval_flag)
    if spec is None:
        spec, train_rows = _counted_spec(options, batch_size)
    return Source(train=pipeline(options.train), eval=pipeline(options.eval), spec=spec,
                  readers=readers, train_rows=train_rows)


def _counted_spec(options, batch_size):
    if options.cardinalities is None:
        counted, spec, rows = count_training_values(options, batch_size)
        return spec.with_cardinalities(data_lib.counted_cardinalities(counted)), rows
    path = options.train or options.eval
    spec = make_reader(options, path, batch_size).spec
    if len(options.cardinalities) != spec.num_categorical:
        raise UsageError(f"--cardinalities has {len(options.cardinalities)} entries but "
                         f"{path} has {spec.num_categorical} categorical features")
    return spec.with_cardinalities(options.cardinalities), None


def holdout_every(rows, batch_size):
    """Every how many training batches one is held out for validation.

    One in ten; for data of few batches one in (batches // 2), but at least
    one in two, so that a small file still validates on whole batches.
    """
    if not rows:
        return 10
    batches = -(-rows // batch_size)
    return max(2, min(10, batches // 2))


def with_batch_count(dataset, rows, batch_size, keep=lambda batches: batches):
    """`dataset` declaring how many batches it yields, so progress bars show a total.

    `rows` are the rows the counting pass read from the same file: a file
    that changes between that pass and training stops the run with
    TensorFlow's cardinality error instead of training on what it became.
    `keep(batches)` is the count of the batches kept out of all of them.
    """
    return dataset.apply(tf.data.experimental.assert_cardinality(
        keep(-(-rows // batch_size))))


def split_holdout(dataset, every, rows=None, batch_size=None):
    """(training, validation) batches of `dataset`: every `every`-th batch is
    held out for validation, the same batches in every epoch. With `rows`
    (counted) and `batch_size`, both declare their batch counts."""
    @tf.autograph.experimental.do_not_convert
    def held_out(i, batch):
        del batch
        return i % every == every - 1

    @tf.autograph.experimental.do_not_convert
    def kept(i, batch):
        return tf.logical_not(held_out(i, batch))

    @tf.autograph.experimental.do_not_convert
    def batch_of(i, batch):
        del i
        return batch

    indexed = dataset.enumerate()
    training = indexed.filter(kept).map(batch_of)
    validation = indexed.filter(held_out).map(batch_of)
    if rows:
        training = with_batch_count(training, rows, batch_size, lambda n: n - n // every)
        validation = with_batch_count(validation, rows, batch_size, lambda n: n // every)
    return training, validation


def check_features(spec, reader_spec, path, what):
    """Raises UsageError when the file at `path` has other features than `spec`."""
    if (spec.num_dense, spec.num_categorical) != (reader_spec.num_dense,
                                                  reader_spec.num_categorical):
        raise UsageError(
            f"{path} has {reader_spec.num_dense} dense and {reader_spec.num_categorical} "
            f"categorical features, but {what} has {spec.num_dense} dense and "
            f"{spec.num_categorical} categorical")


def _reader_error(readers):
    """The error a reader's pass stopped on (MalformedLineError, CorruptFileError), or None."""
    for reader in readers:
        if reader.stats.error is not None and not reader.stats.complete:
            return reader.stats.error
    return None


def reading(readers, run, *args, **kwargs):
    """`run(*args, **kwargs)`, which reads `readers`' datasets (fit, evaluate).

    A reader in "raise" mode stops on a bad line by raising inside its
    Python generator; tf.data hands that on as a `tf.errors.OpError`. This
    raises the reader's own `MalformedLineError` instead. First it drops the
    OpError and collects the garbage: the OpError's traceback holds the
    tf.data iterator, whose prefetch thread may still be calling the
    generator. Left to be freed at interpreter exit, that iterator waits
    forever for the thread, which can no longer take the GIL, and the
    process hangs after the error.
    """
    try:
        return run(*args, **kwargs)
    except tf.errors.OpError:
        error = _reader_error(readers)
        if error is None:
            raise
    gc.collect()
    raise error


def read_stats(readers):
    """Rows read and rejected by `readers`' last passes, and the first reasons."""
    rows_read = sum(r.stats.rows_read for r in readers)
    rejected = sum(r.stats.rows_rejected for r in readers)
    first = []
    for r in readers:
        first.extend(f"{x.path}:{x.line}: {x.reason}" for x in r.stats.rejects[:5])
    return {"rows_read": rows_read, "rows_rejected": rejected, "first_rejects": first[:5]}


def check_rejects(readers, max_rejected):
    """Raises UsageError when more than `max_rejected` of the lines were malformed."""
    stats = read_stats(readers)
    lines = stats["rows_read"] + stats["rows_rejected"]
    if lines and stats["rows_rejected"] > max_rejected * lines:
        raise UsageError(
            f"{stats['rows_rejected']:,} of {lines:,} lines were malformed and skipped "
            f"(more than --max-rejected {max_rejected:g}); first: "
            + "; ".join(stats["first_rejects"])
            + ". Fix the data or its options (--format, --columns, --label-threshold), or "
            "raise --max-rejected")
    return stats
