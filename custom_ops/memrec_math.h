// The arithmetic of a MEM-REC lookup, shared by the CPU kernels, the CUDA
// kernels and (through the same constants) the built-in-ops path in
// memrec_tf/core.py.
//
// This header has no TensorFlow dependency on purpose: the GPU check in
// tests/gpu/check_kernels.py compiles the very same code with NVRTC on a
// machine that has no TensorFlow.
//
// Every function here is a pure function of its arguments and is compiled
// for host and device. Changing any constant or formula changes which rows
// a value maps to, and so silently invalidates every trained model: the
// pinned vectors in tests/ops/test_hash_vectors.py exist to catch that.
#ifndef MEMREC_TF_CUSTOM_OPS_MEMREC_MATH_H_
#define MEMREC_TF_CUSTOM_OPS_MEMREC_MATH_H_

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define MEMREC_HD __host__ __device__ __forceinline__
#else
#define MEMREC_HD inline
#endif

#if defined(__CUDACC_RTC__)
// NVRTC has no standard library headers.
typedef unsigned long long uint64_t;
typedef long long int64_t;
typedef signed char int8_t;
#else
#include <cmath>
#include <cstdint>
#endif

namespace memrec {

// Odd 64-bit constants (golden ratio and two from splitmix / murmur3) that
// separate the independent hash streams.
constexpr uint64_t kTokenStream = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t kWeightStream = 0xD1B54A32D192ED03ULL;
constexpr uint64_t kSaltStream = 0xC2B2AE3D27D4EB4FULL;

// Upper bound on num_hashes and num_weight_hashes; keeps per-id row arrays
// on the stack (and in registers on the GPU).
constexpr int kMaxHashes = 16;

enum Combiner : int { kNone = 0, kSum = 1, kMean = 2, kSqrtn = 3 };

// splitmix64's finaliser: a bijection on 64-bit words with full avalanche.
MEMREC_HD uint64_t Mix64(uint64_t z) {
  z ^= z >> 30;
  z *= 0xBF58476D1CE4E5B9ULL;
  z ^= z >> 27;
  z *= 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return z;
}

// One constant per (layer seed, feature salt): mixed into every id so that
// the same raw id in two features, or in two layers, hashes independently.
MEMREC_HD uint64_t SaltKey(int64_t seed, int64_t salt) {
  return Mix64(static_cast<uint64_t>(seed) +
               Mix64(static_cast<uint64_t>(salt) + kSaltStream));
}

// The whole 64-bit id enters the hash: no id is truncated.
MEMREC_HD uint64_t IdKey(int64_t id, uint64_t salt_key) {
  return Mix64(static_cast<uint64_t>(id) ^ salt_key);
}

// Row of hash function j of one stream in a table of `rows` rows.
// Tables below 2^32 rows take the multiply-shift range reduction of the top
// 32 bits (no division); larger ones the top 63 bits modulo `rows`. Both
// forms are exact in wrapping int64 arithmetic, which the built-in-ops path
// relies on.
MEMREC_HD int64_t HashRow(uint64_t key, uint64_t stream, int j, int64_t rows) {
  const uint64_t h = Mix64(key + static_cast<uint64_t>(j + 1) * stream);
  if (rows < (int64_t(1) << 32)) {
    return static_cast<int64_t>(((h >> 32) * static_cast<uint64_t>(rows)) >> 32);
  }
  return static_cast<int64_t>((h >> 1) % static_cast<uint64_t>(rows));
}

// Everything that decides which rows a value uses.
//
// Without a vocabulary (vocab_size == 0) every value takes num_hashes
// independent random rows of the token table (its Bloom signature) and
// num_weight_hashes random rows of the weight table, as in MEM-REC.
//
// With a vocabulary (values 0..vocab_size-1 are dense indices) an
// in-vocabulary value v takes:
//  - if v < num_head: the token row v, for each of its num_hashes slots
//    (a row of its own for the most frequent values);
//  - otherwise: one row from each of num_hashes disjoint segments of the
//    remaining rows, the mixed-radix digits of v - num_head. Two values
//    differ in at least one digit, so no two share all their rows while
//    the product of the segment sizes covers the vocabulary;
//  - weight rows: the mixed-radix digits of v over num_weight_hashes
//    segments of the weight table (distinct rows as far as size allows).
// Values outside the vocabulary fall back to the random hashes.
struct Signature {
  int num_hashes;
  int num_weight_hashes;
  int64_t num_token_rows;
  int64_t num_weight_rows;
  int64_t seed;
  int64_t num_salts;  // > 1: the salt of flat position p is p % num_salts
  int64_t vocab_size;
  int64_t num_head;
  int64_t token_offset[kMaxHashes];
  int64_t token_radix[kMaxHashes];
  int64_t token_stride[kMaxHashes];
  int64_t weight_offset[kMaxHashes];
  int64_t weight_radix[kMaxHashes];
  int64_t weight_stride[kMaxHashes];
};

// min(a * b, limit) for non-negative a, b, without overflow.
MEMREC_HD int64_t SaturatingProduct(int64_t a, int64_t b, int64_t limit) {
  if (a == 0 || b == 0) return 0;
  return (a > limit / b) ? limit : (a * b < limit ? a * b : limit);
}

// The least r >= 1 with r^parts >= limit.
MEMREC_HD int64_t LeastRoot(int64_t limit, int parts) {
  auto power = [&](int64_t r) {
    int64_t p = 1;
    for (int i = 0; i < parts; ++i) p = SaturatingProduct(p, r, limit);
    return p;
  };
  int64_t lo = 1, hi = limit;  // power(hi) >= limit
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (power(mid) >= limit) hi = mid; else lo = mid + 1;
  }
  return lo;
}

// Splits `rows` rows into `parts` mixed-radix segments for indices below
// `limit` and sets each digit's stride (capped at `limit`, so products
// never overflow and a digit past the vocabulary is 0).
//
// When the rows can give every index its own combination of digits, the
// later digits get the fewest rows that still do and the first digit all the
// rest (as quotient-remainder does), so few rows go unread (an even split
// leaves most of the later segments unread). Otherwise the rows are split
// evenly (sizes differ by at most one, larger first).
MEMREC_HD void SplitRadix(int64_t first_row, int64_t rows, int parts,
                          int64_t limit, int64_t* offset, int64_t* radix,
                          int64_t* stride) {
  const int64_t root = LeastRoot(limit, parts);
  if (parts > 1 && root <= rows / parts) {
    for (int i = 1; i < parts; ++i) radix[i] = root;
    radix[0] = rows - (parts - 1) * root;
    for (int i = parts - 1; i >= 1; --i) {
      int64_t others = 1;
      for (int j = 0; j < parts; ++j) {
        if (j != i) others = SaturatingProduct(others, radix[j], limit);
      }
      // ceil(limit / others) without forming limit + others - 1, which
      // overflows int64 once limit (a vocabulary size) reaches 2^62.
      const int64_t need = limit / others + (limit % others != 0 ? 1 : 0);
      radix[0] += radix[i] - need;
      radix[i] = need;
    }
  } else {
    for (int i = 0; i < parts; ++i) {
      radix[i] = rows / parts + (i < rows % parts ? 1 : 0);
    }
  }
  int64_t next = first_row;
  int64_t prefix = 1;
  for (int i = 0; i < parts; ++i) {
    offset[i] = next;
    next += radix[i];
    stride[i] = prefix;
    prefix = SaturatingProduct(prefix, radix[i], limit);
  }
}

// Fills the derived fields. The caller has checked: 1 <= num_hashes <=
// kMaxHashes, 0 <= num_weight_hashes <= kMaxHashes, num_token_rows >= 1,
// num_weight_rows >= 1 when num_weight_hashes > 0, and with a vocabulary
// num_head <= vocab_size, num_token_rows - num_head >= num_hashes and
// num_weight_rows >= num_weight_hashes.
MEMREC_HD void FinishSignature(Signature* s) {
  if (s->vocab_size <= 0) return;
  const int64_t tail = s->vocab_size - s->num_head;
  SplitRadix(s->num_head, s->num_token_rows - s->num_head, s->num_hashes,
             tail > 1 ? tail : 1, s->token_offset, s->token_radix,
             s->token_stride);
  if (s->num_weight_hashes > 0) {
    SplitRadix(0, s->num_weight_rows, s->num_weight_hashes, s->vocab_size,
               s->weight_offset, s->weight_radix, s->weight_stride);
  }
}

MEMREC_HD bool InVocabulary(const Signature& s, int64_t id) {
  return s.vocab_size > 0 && id >= 0 && id < s.vocab_size;
}

// Salt of the value at flat position `position` of the ids.
MEMREC_HD int64_t PositionSalt(const Signature& s, int64_t position) {
  return s.num_salts > 1 ? position % s.num_salts : 0;
}

// Key of the value at flat position `position` of the ids.
MEMREC_HD uint64_t PositionKey(const Signature& s, int64_t id,
                               int64_t position) {
  return IdKey(id, SaltKey(s.seed, PositionSalt(s, position)));
}

MEMREC_HD void TokenRows(const Signature& s, int64_t id, uint64_t key,
                         int64_t* rows) {
  if (InVocabulary(s, id)) {
    if (id < s.num_head) {
      for (int i = 0; i < s.num_hashes; ++i) rows[i] = id;
      return;
    }
    const int64_t t = id - s.num_head;
    for (int i = 0; i < s.num_hashes; ++i) {
      rows[i] = s.token_offset[i] + (t / s.token_stride[i]) % s.token_radix[i];
    }
    return;
  }
  for (int i = 0; i < s.num_hashes; ++i) {
    rows[i] = HashRow(key, kTokenStream, i, s.num_token_rows);
  }
}

MEMREC_HD void WeightRows(const Signature& s, int64_t id, uint64_t key,
                          int64_t* rows) {
  if (InVocabulary(s, id)) {
    for (int j = 0; j < s.num_weight_hashes; ++j) {
      rows[j] =
          s.weight_offset[j] + (id / s.weight_stride[j]) % s.weight_radix[j];
    }
    return;
  }
  for (int j = 0; j < s.num_weight_hashes; ++j) {
    rows[j] = HashRow(key, kWeightStream, j, s.num_weight_rows);
  }
}

// alpha of one value: `width` numbers (1 in scalar mode, num_hashes in
// per-hash mode), each the sum of the value's weight rows; all ones when the
// layer has no weight hashes.
template <typename T, typename Acc>
MEMREC_HD void Alpha(const Signature& s, const T* weight_table, int width,
                     const int64_t* weight_rows, Acc* alpha) {
  for (int c = 0; c < width; ++c) {
    if (s.num_weight_hashes == 0) {
      alpha[c] = Acc(1);
      continue;
    }
    Acc a = Acc(0);
    for (int j = 0; j < s.num_weight_hashes; ++j) {
      a += static_cast<Acc>(weight_table[weight_rows[j] * width + c]);
    }
    alpha[c] = a;
  }
}

// Token-table entries as every kernel reads them, on the host and the device.
// A table stored for serving as int8 has one float scale per row, and its
// entry q reads as float(q) * scale: one rounded product, the very value that
// memrec_tf/ops/quantize.py's dequantize_rows gives, so that a lookup on the
// int8 table equals a float32 lookup on the dequantized table. Every other
// table type (float, double, half, bfloat16) reads as static_cast<Acc>(q),
// exact for the half types, and has no scales.
template <typename Acc, typename Table>
MEMREC_HD Acc TokenRowScale(const Table* /*table*/, const float* /*scales*/,
                            int64_t /*row*/) {
  return Acc(1);
}
template <typename Acc>
MEMREC_HD Acc TokenRowScale(const int8_t* /*table*/, const float* scales,
                            int64_t row) {
  return scales[row];
}

template <typename Table, typename Acc>
MEMREC_HD Acc TokenEntry(Table q, Acc /*row_scale*/) {
  return static_cast<Acc>(q);
}
MEMREC_HD float TokenEntry(int8_t q, float row_scale) {
  return static_cast<float>(q) * row_scale;
}

MEMREC_HD float Sqrt(float x) { return sqrtf(x); }
MEMREC_HD double Sqrt(double x) { return sqrt(x); }

// The factor that turns a bag's weighted sum into its pooled value. An empty
// bag, or one whose weights sum to zero, pools to zeros.
template <typename Acc>
MEMREC_HD Acc BagScale(int combiner, Acc weight_sum, Acc weight_square_sum) {
  if (combiner == kMean) {
    return weight_sum == Acc(0) ? Acc(0) : Acc(1) / weight_sum;
  }
  if (combiner == kSqrtn) {
    return weight_square_sum == Acc(0) ? Acc(0)
                                       : Acc(1) / Sqrt(weight_square_sum);
  }
  return Acc(1);
}

}  // namespace memrec

#endif  // MEMREC_TF_CUSTOM_OPS_MEMREC_MATH_H_
