#!/usr/bin/env bash
# Compiler wrapper for the sanitized build (used as CXX by run.sh).
#
# GCC 12 rejects TensorFlow's bundled Abseil headers under -fsanitize=null,
# nonnull-attribute and returns-nonnull-attribute: those checks turn off
# -fdelete-null-pointer-checks, after which `function_pointer == nullptr` in
# absl/container/internal/hash_policy_traits.h is no longer a constant
# expression ("... is not a constant expression"). The three checks are
# dropped here; AddressSanitizer still reports any null dereference (SEGV on
# unknown address 0x000000000000).
set -euo pipefail
args=("$@")
for a in "$@"; do
  case "$a" in
    -fsanitize=*undefined*)
      args+=("-fno-sanitize=null,nonnull-attribute,returns-nonnull-attribute")
      break;;
  esac
done
exec "${MEMREC_REAL_CXX:-g++}" "${args[@]}"
