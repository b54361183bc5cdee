#!/usr/bin/env bash
# Builds serving/load_and_predict.cc against the installed TensorFlow wheel.
#
#   serving/build_cpp.sh [OUTPUT]      (default: build/serving/load_and_predict)
#
# Uses the wheel's headers (tf.sysconfig.get_include()), its compile flags
# (which carry -D_GLIBCXX_USE_CXX11_ABI=1) and links libtensorflow_cc.so.2 and
# libtensorflow_framework.so.2 with an rpath to the wheel, so the program runs
# without LD_LIBRARY_PATH. Takes about a minute; compiler output goes to
# OUTPUT.log.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUTPUT="${1:-$HERE/../build/serving/load_and_predict}"
PYTHON="${PYTHON:-python}"
CXX="${CXX:-g++}"
mkdir -p "$(dirname "$OUTPUT")"
LOG="$OUTPUT.log"

TF_LIB="$("$PYTHON" -c 'import tensorflow as tf; print(tf.sysconfig.get_lib())' 2>/dev/null)"
TF_CFLAGS="$("$PYTHON" -c 'import tensorflow as tf; print(" ".join(tf.sysconfig.get_compile_flags()))' 2>/dev/null)"

if [ ! -e "$TF_LIB/libtensorflow_cc.so.2" ]; then
  echo "error: $TF_LIB/libtensorflow_cc.so.2 not found (the full tensorflow wheel ships it)" >&2
  exit 1
fi

# shellcheck disable=SC2086  # TF_CFLAGS is a list of flags.
if ! "$CXX" -std=c++17 -O2 -Wno-deprecated-declarations -Wno-ignored-attributes \
    -Wno-unused-result $TF_CFLAGS -D_GLIBCXX_USE_CXX11_ABI=1 \
    "$HERE/load_and_predict.cc" -o "$OUTPUT" \
    -L"$TF_LIB" -l:libtensorflow_cc.so.2 -l:libtensorflow_framework.so.2 \
    -Wl,-rpath,"$TF_LIB" >"$LOG" 2>&1; then
  tail -n 60 "$LOG" >&2
  echo "error: compiling load_and_predict failed; full log: $LOG" >&2
  exit 1
fi
echo "$OUTPUT"
