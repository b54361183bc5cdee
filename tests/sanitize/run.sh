#!/usr/bin/env bash
# Runs the op tests against the op library built with AddressSanitizer and
# UndefinedBehaviorSanitizer. Exits non-zero on any sanitizer report or test
# failure. See tests/sanitize/README.md.
#
#   bash tests/sanitize/run.sh                   # build, then test
#   bash tests/sanitize/run.sh --library PATH    # test a sanitized library already built
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
# The interpreter itself, not a wrapper script (a pyenv shim is a bash
# script, which LD_PRELOAD would instrument too).
PYTHON=$("${PYTHON:-python}" -c "import sys; print(sys.executable)")
OUT=${SANITIZE_OUT:-build/sanitize}
LIBRARY=""
if [[ "${1:-}" == "--library" ]]; then
  LIBRARY=$(realpath "$2")
fi
mkdir -p "$OUT"
LOGS=$(realpath "$OUT")/reports
rm -rf "$LOGS" && mkdir -p "$LOGS"
START=$SECONDS

# ------------------------------------------------------------------ build
if [[ -z "$LIBRARY" ]]; then
  echo "== building the sanitized op library"
  # Objects go to $OUT/obj, so the normal build's build/ops is untouched.
  # cxx_wrapper.sh is the compiler: GCC 12 rejects TensorFlow's Abseil
  # headers under -fsanitize=null (see there). build.py renames the library
  # to _memrec_ops_sanitized.so: the path it prints is the one used.
  LIBRARY=$(CXX="$REPO/tests/sanitize/cxx_wrapper.sh" TF_CPP_MIN_LOG_LEVEL=3 \
    "$PYTHON" custom_ops/build.py "$OUT/_memrec_ops.so" --sanitize --build-dir "$OUT/obj" \
    2>"$OUT/build.stderr" | tail -n 1)
  if [[ -z "$LIBRARY" || ! -f "$LIBRARY" ]]; then
    echo "FAILED: the sanitized build did not produce a library:"; tail -n 40 "$OUT/build.stderr"
    exit 2
  fi
  LIBRARY=$(realpath "$LIBRARY")
  echo "   built $LIBRARY in $((SECONDS - START)) s"
fi
if ! grep -aq "sanitized=1" "$LIBRARY"; then
  echo "FAILED: $LIBRARY is not a sanitized build (its build tag lacks sanitized=1)"; exit 2
fi
# build.py writes the library's checksum beside it; the loader refuses a
# library without one (a library passed with --library must keep its own).
if [[ ! -f "$LIBRARY.sha256" ]]; then
  echo "FAILED: $LIBRARY has no checksum file $LIBRARY.sha256 (build.py writes it)"; exit 2
fi

# ----------------------------------------------------------- environment
ASAN_RUNTIME=$(g++ -print-file-name=libasan.so)
UBSAN_RUNTIME=$(g++ -print-file-name=libubsan.so)
# The runtimes must come first in the process: Python itself is not
# instrumented, so they are preloaded rather than linked. Only into Python
# (and its children), not into this script's compiler or shell commands.
PRELOAD="$ASAN_RUNTIME $UBSAN_RUNTIME"
# detect_leaks=0: LeakSanitizer would report the interpreter's and
# TensorFlow's allocations that live until exit, which are not ours.
# AddressSanitizer writes one report file per process (children included)
# under $1. UndefinedBehaviorSanitizer ignores log_path when the ASan
# runtime is loaded and always prints to stderr, so stderr is kept too (the
# tests forward their child processes' stderr to theirs).
sanitizer_options() {
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:log_path=$1/asan"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
}
export MEMREC_TF_OPS_LIBRARY="$LIBRARY"
export TF_CPP_MIN_LOG_LEVEL=2
REPORT_PATTERN="ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer|SUMMARY: UndefinedBehaviorSanitizer"

# Number of sanitizer reports in the files of directory $1.
count_reports() {
  cat "$1"/* 2>/dev/null | grep -cE "ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer"
}

# ----------------------------------------------------------------- canary
# A run that can find nothing proves nothing: an out-of-bounds read and a
# signed overflow in a small instrumented library must both be reported.
CANARY_DIR=$(realpath "$OUT")/canary
rm -rf "$CANARY_DIR" && mkdir -p "$CANARY_DIR/reports"
cat > "$CANARY_DIR/canary.cc" <<'EOF'
#include <cstdint>
#include <vector>
extern "C" int read_past_end(int n) { std::vector<int> v(n, 1); return v.data()[n]; }
extern "C" int64_t add(int64_t a, int64_t b) { return a + b; }
EOF
g++ -shared -fPIC -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  "$CANARY_DIR/canary.cc" -o "$CANARY_DIR/libcanary.so"
sanitizer_options "$CANARY_DIR/reports"
for call in "read_past_end(8)" "add(2**63 - 1, 1)"; do
  # In a subshell, so that the shell's own "Aborted" notice goes to the file.
  (LD_PRELOAD="$PRELOAD" "$PYTHON" -c "import ctypes; lib = ctypes.CDLL('$CANARY_DIR/libcanary.so'); \
lib.add.argtypes = [ctypes.c_int64] * 2; lib.add.restype = ctypes.c_int64; \
lib.$call") >>"$CANARY_DIR/reports/stderr" 2>&1
done
if [[ $(count_reports "$CANARY_DIR/reports") -ne 2 ]]; then
  echo "FAILED: the sanitizers did not report the canary's two errors: the set-up is broken"
  ls -la "$CANARY_DIR/reports"; exit 2
fi
echo "== canary: both planted errors reported (heap-buffer-overflow, signed overflow)"

# ------------------------------------------------------------------ tests
sanitizer_options "$LOGS"
TESTS=(tests/ops/test_op.py tests/ops/test_gradients.py tests/ops/test_properties.py
       tests/ops/test_numerics.py tests/ops/test_quantized_tables.py
       tests/ops/test_grad_apply.py)
RUN=()
for t in "${TESTS[@]}"; do
  if [[ -f "$t" ]]; then RUN+=("$t"); else echo "   (skipping $t: not present)"; fi
done
echo "== pytest ${RUN[*]} against $LIBRARY"
TEST_START=$SECONDS
# -s: the tests' stderr (with any UBSan report, children's included) goes
# to the log instead of pytest's per-test capture.
LD_PRELOAD="$PRELOAD" "$PYTHON" -m pytest -q -s -p no:cacheprovider "${RUN[@]}" \
  >"$LOGS/pytest.log" 2>&1
PYTEST_STATUS=$?
grep -vE "^[IWE][0-9]{4} " "$LOGS/pytest.log" | tail -n 15
echo "   tests took $((SECONDS - TEST_START)) s (all: $((SECONDS - START)) s); log: $LOGS/pytest.log"

# ---------------------------------------------------------------- verdict
REPORTS=$(count_reports "$LOGS")
if [[ "$REPORTS" -ne 0 ]]; then
  echo "FAILED: $REPORTS sanitizer report(s):"
  for f in "$LOGS"/*; do
    grep -qE "$REPORT_PATTERN" "$f" || continue
    echo "---- $f"
    grep -E -A 12 "$REPORT_PATTERN" "$f" | grep -vE "^[IWE][0-9]{4} " | head -n 60
  done
  exit 1
fi
if [[ $PYTEST_STATUS -ne 0 ]]; then
  echo "FAILED: pytest exited with $PYTEST_STATUS (no sanitizer report)"; exit "$PYTEST_STATUS"
fi
echo "OK: no sanitizer reports"
