"""Line streaming shared by the file readers: linear work, over-long lines, damaged .gz."""
import copy
import gc
import gzip
import io
import pickle
import tracemalloc
import zlib

import numpy as np
import pytest
import tensorflow as tf

from memrec_tf.data import (MAX_LINE_BYTES, CorruptFileError, CriteoTSVReader, CSVReader,
                            LibFMReader, MalformedLineError, count_lines)
from memrec_tf.data._lines import LongLine, iter_line_blocks
from memrec_tf.data.paths import open_binary


# iter_line_blocks -----------------------------------------------------------


class Scanned(bytes):
    """Bytes that add their length to `total` whenever they are searched or joined."""

    total = 0

    def _note(self, *others):
        Scanned.total += len(self) + sum(len(o) for o in others)

    def find(self, *args):
        self._note()
        return bytes.find(self, *args)

    def rfind(self, *args):
        self._note()
        return bytes.rfind(self, *args)

    def index(self, *args):
        self._note()
        return bytes.index(self, *args)

    def count(self, *args):
        self._note()
        return bytes.count(self, *args)

    def split(self, *args):
        self._note()
        return bytes.split(self, *args)

    def __contains__(self, item):
        self._note()
        return bytes.__contains__(self, item)

    def __add__(self, other):
        self._note(other)
        return Scanned(bytes.__add__(self, other))

    def __radd__(self, other):
        self._note(other)
        return Scanned(bytes(other) + bytes(self))


class Chunks:
    """A binary file of `data` whose reads come back as `Scanned`."""

    def __init__(self, data: bytes):
        self._data = memoryview(data)
        self._pos = 0

    def read(self, size=-1):
        end = len(self._data) if size < 0 else self._pos + size
        out = Scanned(self._data[self._pos:end])
        self._pos += len(out)
        return out


class Stream:
    """A binary file of `size` bytes of b"x" then b"\\nend\\n", made as it is read."""

    def __init__(self, size: int):
        self._left = size
        self._tail = b"\nend\n"

    def read(self, size=-1):
        if size < 0:
            size = self._left + len(self._tail)
        if self._left:
            n = min(size, self._left)
            self._left -= n
            return b"x" * n
        out, self._tail = self._tail[:size], self._tail[size:]
        return out


def lines_of(blocks):
    """The lines (bytes) and over-long lines (LongLine) of iter_line_blocks' output."""
    out = []
    for block, n_lines in blocks:
        if isinstance(block, LongLine):
            assert n_lines == 1
            out.append(block)
        else:
            assert n_lines == block.count(b"\n") + 1
            out.extend(block.split(b"\n"))
    return out


def expected_lines(data: bytes, limit: int):
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [LongLine(len(x)) if len(x) > limit else x for x in lines]


def test_blocks_hold_every_line_once_for_any_read_size():
    rng = np.random.default_rng(11)
    for trial in range(300):
        # Newlines from dense (runs of empty lines) to absent.
        newline = rng.uniform(0, 0.5)
        data = bytes(rng.choice([10, 97], size=int(rng.integers(0, 400)),
                                p=[newline, 1 - newline]))
        if trial % 3 == 0:
            data += b"\n"
        block_bytes = int(rng.integers(1, 64))
        limit = int(rng.integers(1, 80))
        got = lines_of(iter_line_blocks(io.BytesIO(data), block_bytes, limit))
        assert got == expected_lines(data, limit), (data, block_bytes, limit)


@pytest.mark.parametrize("layout", ["one_line", "long_then_short"])
def test_each_read_is_scanned_a_bounded_number_of_times(layout):
    # Joining an unfinished line to each new read and searching the whole
    # of it again made reading quadratic in a line's length.
    line = b"x" * (256 << 10)
    data = line if layout == "one_line" else line + b"\n" + b"ab\n" * 20_000
    Scanned.total = 0
    got = lines_of(iter_line_blocks(Chunks(data), 256))
    assert got == expected_lines(data, MAX_LINE_BYTES)
    assert Scanned.total <= 3 * len(data)


def test_an_over_long_line_is_skipped_without_being_held():
    limit = 64 << 10
    tracemalloc.start()
    try:
        got = lines_of(iter_line_blocks(Stream(8 << 20), 4096, limit))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == [LongLine(8 << 20), b"end"]
    assert peak < 2 * limit


def test_line_limit_boundary_is_the_same_whether_a_line_spans_reads():
    data = b"a" * 10 + b"\n" + b"b" * 11 + b"\n" + b"c" * 10
    for block_bytes in (1, 3, 10, 11, 12, 100):
        got = lines_of(iter_line_blocks(io.BytesIO(data), block_bytes, 10))
        assert got == [b"a" * 10, LongLine(11), b"c" * 10], block_bytes


def test_limits_are_validated():
    for block_bytes, limit in ((0, 10), (10, 0)):
        with pytest.raises(ValueError, match="must be >= 1"):
            list(iter_line_blocks(io.BytesIO(b"a\n"), block_bytes, limit))
    with pytest.raises(ValueError, match="max_line_bytes"):
        CriteoTSVReader("x.tsv", max_line_bytes=0)


# The readers ---------------------------------------------------------------


# Line makers: `size` > 0 pads a valid line with spaces that its parser
# ignores to exactly `size` bytes, so only its length can get it rejected.


def criteo_line(i: int, size: int = 0) -> bytes:
    cats = "\t".join(f"{0x1000 + i + j:08x}" for j in range(26))
    ints = "\t".join(str(k) for k in range(12))
    head, tail = b"1\t", f"{i}\t{ints}\t{cats}".encode()
    return head + b" " * max(size - len(head) - len(tail), 0) + tail  # int(b"  7") == 7


def libfm_line(i: int, size: int = 0) -> bytes:
    return f"1 {i}:1 {i + 1}:1 {i + 2}:1".encode().ljust(size)


def csv_line(i: int, size: int = 0) -> bytes:
    head = f"0,v{i},".encode()
    return head + str(i).encode().rjust(size - len(head))


FORMATS = {
    "criteo": (None, criteo_line, lambda path, **kw: CriteoTSVReader(path, **kw)),
    "libfm": (None, libfm_line, lambda path, **kw: LibFMReader(path, num_fields=3, **kw)),
    "csv": (b"y,a,x", csv_line,
            lambda path, **kw: CSVReader(path, "label=y,categorical=a,numeric=x", **kw)),
}


def sized(make, i: int, size: int) -> bytes:
    line = make(i, size)
    assert len(line) == size
    return line


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("block_bytes", [64, 1 << 20])
def test_over_long_lines_are_rejected_and_later_lines_keep_their_numbers(tmp_path, fmt,
                                                                         block_bytes):
    header, make, reader_for = FORMATS[fmt]
    limit = 1000
    body = [make(1), sized(make, 2, 5000), make(3), b"oops", sized(make, 5, limit),
            sized(make, 6, limit + 1), make(7)]
    last = sized(make, 8, 3 * limit)  # the last line, without b"\n"
    lines = ([header] if header else []) + body
    path = tmp_path / f"long.{fmt}"
    path.write_bytes(b"\n".join(lines + [last]))
    first = 2 if header else 1
    reader = reader_for(path, max_line_bytes=limit, batch_size=3)
    reader.block_bytes = block_bytes
    features, label = reader.read_all()

    stats = reader.stats
    assert [(r.path, r.line) for r in stats.rejects] == [
        (str(path), first + k) for k in (1, 3, 5, 7)]
    too_long = [r.reason for r in stats.rejects if "longer" in r.reason]
    assert too_long == [f"line longer than {limit} bytes ({n} bytes; see max_line_bytes)"
                        for n in (5000, limit + 1, 3 * limit)]
    assert stats.rows_read == 4 and stats.rows_rejected == 4
    counts = stats.by_file[str(path)]
    assert counts.header_lines + counts.rows_read + counts.rows_rejected == count_lines(path)

    kept = tmp_path / f"kept.{fmt}"
    kept.write_bytes(b"\n".join(([header] if header else []) + [body[k] for k in (0, 2, 4, 6)]))
    want_features, want_label = reader_for(kept, on_error="raise").read_all()
    np.testing.assert_array_equal(label, want_label)
    for key, want in want_features.items():
        np.testing.assert_array_equal(features[key], want)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_raise_mode_stops_on_an_over_long_line(tmp_path, fmt):
    header, make, reader_for = FORMATS[fmt]
    path = tmp_path / f"long.{fmt}"
    limit = len(make(99)) + 50
    path.write_bytes(b"\n".join(([header] if header else []) +
                                [make(1), make(2), sized(make, 3, limit + 1), make(4)]) + b"\n")
    reader = reader_for(path, on_error="raise", max_line_bytes=limit)
    reader.block_bytes = 16
    with pytest.raises(MalformedLineError) as info:
        list(reader.iter_batches())
    line = 4 if header else 3
    assert (info.value.path, info.value.line) == (str(path), line)
    assert f"line longer than {limit} bytes ({limit + 1} bytes" in str(info.value)
    assert reader.stats.rows_read == 2
    assert isinstance(reader.stats.error, MalformedLineError)
    assert reader.stats.error.line == line


def test_csv_header_over_the_limit_raises(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_bytes(b"y,a," + b"x" * 100 + b"\n0,a,1\n")
    reader = CSVReader(path, "label=y,categorical=a", max_line_bytes=50)
    with pytest.raises(MalformedLineError, match="at line 1: header: line longer than 50 bytes"):
        reader.read_all()
    # Exactly at the limit it is read.
    features, _ = CSVReader(path, "label=y,categorical=a", max_line_bytes=104).read_all()
    assert features["categorical"].shape == (1, 1)


def test_libfm_sniffing_skips_over_long_lines(tmp_path):
    path = tmp_path / "a.libfm"
    path.write_bytes(b"1 " + b"7:1 " * 100 + b"\n0 1:1 2:1\n")
    reader = LibFMReader(path, max_line_bytes=100)
    assert reader.num_fields == 2
    reader.read_all()
    assert [r.line for r in reader.stats.rejects] == [1]


# Damaged .gz files -----------------------------------------------------------


def write_gz(path, lines):
    """Writes `lines` gzipped, with gzip's plain 10-byte header."""
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    return path


def damaged(path, how: str):
    """Writes a damaged copy of the gzip file `path` (from `write_gz`) beside it."""
    raw = bytearray(path.read_bytes())
    if how == "truncated":  # EOFError
        raw = raw[:len(raw) // 2]
    elif how == "bad_crc":  # gzip.BadGzipFile
        raw[-8] ^= 0xFF  # the trailer's CRC-32
    elif how == "bad_block":  # zlib.error
        raw[10] = 0b110  # the first deflate block: BTYPE 11 is invalid
    elif how == "bad_data":  # decodes to garbage, then the CRC fails
        middle = len(raw) // 2
        raw[middle:middle + 64] = bytes(64)
    elif how == "not_gzip":  # gzip.BadGzipFile
        raw = bytearray(gzip.decompress(bytes(raw)))
    out = path.with_name(f"{how}-{path.name}")
    out.write_bytes(bytes(raw))
    return out


DAMAGE = ["truncated", "bad_crc", "bad_block", "bad_data", "not_gzip"]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_gz_raises_one_error_naming_the_file(tmp_path, fmt, how):
    header, make, reader_for = FORMATS[fmt]
    rows = [make(i) for i in range(3000)]
    good = write_gz(tmp_path / f"data.{fmt}.gz", ([header] if header else []) + rows)
    path = damaged(good, how)
    reader = reader_for(path)
    with pytest.raises(CorruptFileError) as info:
        list(reader.iter_batches())
    err = info.value
    assert err.path == str(path)
    assert str(err).startswith(f"{path}: the gzip stream is truncated or corrupt after "
                               f"{err.lines} lines ({err.bytes_read} bytes of data): ")
    assert err.reason and err.reason in str(err)
    # Every line before the damage was read, and counted in the stats.
    stats = reader.stats
    assert err.lines == stats.lines_seen
    if how != "bad_data":
        assert stats.rows_rejected == 0
    if how == "truncated":
        readable = zlib.decompressobj(31).decompress(path.read_bytes())
        assert (err.lines, err.bytes_read) == (readable.count(b"\n"), len(readable))
        assert 0 < err.lines < len(rows)
    elif how == "bad_crc":
        data = gzip.decompress(good.read_bytes())
        assert (err.lines, err.bytes_read) == (data.count(b"\n"), len(data))
    elif how in ("bad_block", "not_gzip"):
        assert (err.lines, err.bytes_read) == (0, 0)
    assert not stats.complete
    assert isinstance(stats.error, CorruptFileError) and stats.error.__traceback__ is None
    assert str(stats.error) == str(err)
    with pytest.raises(CorruptFileError, match="truncated or corrupt"):
        count_lines(path)


def test_gz_reads_hand_out_everything_before_the_damage(tmp_path):
    good = write_gz(tmp_path / "a.txt.gz", [b"line %d" % i for i in range(50_000)])
    path = damaged(good, "truncated")
    readable = zlib.decompressobj(31).decompress(path.read_bytes())
    with open_binary(str(path)) as fh:
        assert fh.read(1 << 30) == readable
        for _ in range(2):  # and then it stays damaged
            with pytest.raises(CorruptFileError, match="EOF|ended before"):
                fh.read(10)


def test_damaged_gz_reaches_dataset_callers_through_stats(tmp_path):
    good = write_gz(tmp_path / "data.tsv.gz", [criteo_line(i) for i in range(3000)])
    path = damaged(good, "truncated")
    reader = CriteoTSVReader(path, batch_size=64)
    try:
        with pytest.raises(tf.errors.OpError, match="truncated or corrupt"):
            list(reader.dataset(prefetch=False))
        assert isinstance(reader.stats.error, CorruptFileError)
        assert reader.stats.error.path == str(path)
    finally:
        gc.collect()
    # A later pass over a good file clears it.
    reader.paths = [str(good)]
    reader.read_all()
    assert reader.stats.error is None and reader.stats.complete


def test_reader_errors_copy_and_pickle_with_their_fields():
    for err in (MalformedLineError("f.tsv", 3, "bad label"),
                CorruptFileError("f.tsv.gz", 10, 2048, "CRC check failed")):
        for clone in (copy.copy(err), pickle.loads(pickle.dumps(err))):
            assert type(clone) is type(err) and str(clone) == str(err)
            assert vars(clone) == vars(err)
