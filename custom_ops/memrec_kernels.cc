// OpKernels of the MEM-REC ops (validation, output allocation) and their CPU
// functors. The GPU functors live in memrec_kernels_gpu.cu.cc.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#define EIGEN_USE_THREADS
#if defined(__SSE__)
#include <immintrin.h>
#endif
#include "memrec_functors.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/util/work_sharder.h"

namespace memrec {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
namespace errors = ::tensorflow::errors;

using CPUDevice = Eigen::ThreadPoolDevice;
using GPUDevice = Eigen::GpuDevice;

namespace {

// Attributes read once at construction.
struct SignatureAttrs {
  int num_hashes = 0;
  int num_weight_hashes = 0;
  int64_t seed = 0;
  int64_t num_salts = 0;
  int64_t vocab_size = 0;
  int64_t num_head = 0;

  Status Read(OpKernelConstruction* ctx) {
    int64_t k, kw;
    TF_RETURN_IF_ERROR(ctx->GetAttr("num_hashes", &k));
    TF_RETURN_IF_ERROR(ctx->GetAttr("num_weight_hashes", &kw));
    TF_RETURN_IF_ERROR(ctx->GetAttr("seed", &seed));
    TF_RETURN_IF_ERROR(ctx->GetAttr("num_salts", &num_salts));
    TF_RETURN_IF_ERROR(ctx->GetAttr("vocab_size", &vocab_size));
    TF_RETURN_IF_ERROR(ctx->GetAttr("num_head", &num_head));
    if (k < 1 || k > kMaxHashes) {
      return errors::InvalidArgument("num_hashes must be in [1, ", kMaxHashes,
                                     "]: ", k);
    }
    if (kw < 0 || kw > kMaxHashes) {
      return errors::InvalidArgument("num_weight_hashes must be in [0, ",
                                     kMaxHashes, "]: ", kw);
    }
    if (num_head > 0 && vocab_size == 0) {
      return errors::InvalidArgument(
          "num_head needs a vocabulary (vocab_size > 0): num_head = ", num_head,
          ", vocab_size = 0");
    }
    if (num_head > vocab_size) {
      return errors::InvalidArgument("num_head must not exceed vocab_size: ",
                                     num_head, " > ", vocab_size);
    }
    num_hashes = static_cast<int>(k);
    num_weight_hashes = static_cast<int>(kw);
    return ::tensorflow::OkStatus();
  }

  // The full signature for tables of the given row counts.
  Status Make(int64_t token_rows, int64_t weight_rows, Signature* s) const {
    if (token_rows < 1) {
      return errors::InvalidArgument("token_table must have at least 1 row: ",
                                     token_rows);
    }
    if (num_weight_hashes > 0 && weight_rows < 1) {
      return errors::InvalidArgument(
          "weight_table must have at least 1 row when num_weight_hashes > 0: ",
          weight_rows);
    }
    if (vocab_size > 0) {
      if (token_rows - num_head < num_hashes) {
        return errors::InvalidArgument(
            "token_table has ", token_rows, " rows but a vocabulary signature "
            "needs at least num_head + num_hashes = ",
            // In uint64: num_head may be as large as int64's maximum.
            static_cast<uint64_t>(num_head) + static_cast<uint64_t>(num_hashes));
      }
      if (weight_rows < num_weight_hashes) {
        return errors::InvalidArgument(
            "weight_table has ", weight_rows, " rows but a vocabulary "
            "signature needs at least num_weight_hashes = ", num_weight_hashes);
      }
    }
    *s = Signature{};
    s->num_hashes = num_hashes;
    s->num_weight_hashes = num_weight_hashes;
    s->num_token_rows = token_rows;
    s->num_weight_rows = weight_rows;
    s->seed = seed;
    s->num_salts = num_salts;
    s->vocab_size = vocab_size;
    s->num_head = num_head;
    FinishSignature(s);
    return ::tensorflow::OkStatus();
  }
};

Status ParseCombiner(const std::string& name, int* combiner) {
  if (name == "none") *combiner = kNone;
  else if (name == "sum") *combiner = kSum;
  else if (name == "mean") *combiner = kMean;
  else if (name == "sqrtn") *combiner = kSqrtn;
  else return errors::InvalidArgument("unknown combiner: '", name, "'");
  return ::tensorflow::OkStatus();
}

// Positions of a lookup op's inputs; token_scales < 0: the op has none.
struct InputPositions {
  int ids, row_splits, weights, token_table, token_scales, weight_table;
  // The token table's value when it is not an input tensor (a variable
  // updated in place), else null.
  const Tensor* token_table_value = nullptr;

  // ids, row_splits, weights, token_table, weight_table from `first` on.
  static InputPositions Consecutive(int first) {
    return {first, first + 1, first + 2, first + 3, -1, first + 4};
  }
};

// MemRecLookupQuantized: the token table's scales follow the table.
constexpr InputPositions kQuantizedInputs{0, 1, 2, 3, 4, 5};

// Attributes and input checks shared by the forward and gradient kernels.
// `first` is the index of the `ids` input (0 forward, 1 gradient).
template <typename T>
class LookupInputs {
 public:
  Status Read(OpKernelConstruction* ctx) {
    TF_RETURN_IF_ERROR(attrs_.Read(ctx));
    std::string combiner, weight_mode;
    TF_RETURN_IF_ERROR(ctx->GetAttr("combiner", &combiner));
    TF_RETURN_IF_ERROR(ctx->GetAttr("weight_mode", &weight_mode));
    TF_RETURN_IF_ERROR(ParseCombiner(combiner, &combiner_));
    per_hash_ = weight_mode == "per_hash";
    return ::tensorflow::OkStatus();
  }

  // Checks every input before anything is allocated. row_splits is read
  // here, on the host: it is in host memory for the CPU kernels, and the GPU
  // kernels declare it HostMemory.
  Status Validate(OpKernelContext* ctx, int first, LookupArgs<T>* args) const {
    return Validate(ctx, InputPositions::Consecutive(first), args);
  }

  // The same for a token table stored as Table (with scales when int8).
  template <typename Table>
  Status Validate(OpKernelContext* ctx, const InputPositions& at,
                  LookupArgs<T, Table>* args) const {
    const Tensor& ids = ctx->input(at.ids);
    const Tensor& splits = ctx->input(at.row_splits);
    const Tensor& weights = ctx->input(at.weights);
    const Tensor& table =
        at.token_table_value ? *at.token_table_value : ctx->input(at.token_table);
    const Tensor& weight_table = ctx->input(at.weight_table);
    if (ids.dims() != 1) {
      return errors::InvalidArgument("ids must be a vector (rank 1), got shape ",
                                     ids.shape().DebugString());
    }
    const int64_t n = ids.dim_size(0);
    if (splits.dims() != 1) {
      return errors::InvalidArgument(
          "row_splits must be a vector (rank 1), got shape ",
          splits.shape().DebugString());
    }
    int64_t num_rows = n;
    if (combiner_ == kNone) {
      if (splits.NumElements() != 0) {
        return errors::InvalidArgument(
            "row_splits must be empty when combiner is 'none', got shape ",
            splits.shape().DebugString());
      }
    } else {
      if (splits.NumElements() < 1) {
        return errors::InvalidArgument(
            "row_splits must hold B + 1 >= 1 offsets for B bags, got shape ",
            splits.shape().DebugString());
      }
      const auto s = splits.flat<int64_t>();
      num_rows = splits.NumElements() - 1;
      if (s(0) != 0) {
        return errors::InvalidArgument("row_splits[0] must be 0, got ", s(0));
      }
      for (int64_t b = 1; b <= num_rows; ++b) {
        if (s(b) < s(b - 1)) {
          return errors::InvalidArgument(
              "row_splits must be non-decreasing, but row_splits[", b,
              "] = ", s(b), " < row_splits[", b - 1, "] = ", s(b - 1));
        }
      }
      if (s(num_rows) != n) {
        return errors::InvalidArgument(
            "row_splits must end at the number of ids (", n, "), got row_splits[",
            num_rows, "] = ", s(num_rows));
      }
    }
    if (weights.dims() != 1 ||
        (weights.NumElements() != 0 && weights.NumElements() != n)) {
      return errors::InvalidArgument(
          "weights must be a vector of length 0 (no weights) or the number of "
          "ids (", n, "), got shape ", weights.shape().DebugString());
    }
    if (table.dims() != 2) {
      return errors::InvalidArgument(
          "token_table must be a matrix [m, d], got shape ",
          table.shape().DebugString());
    }
    const int width = per_hash_ ? attrs_.num_hashes : 1;
    if (weight_table.dims() != 2 || weight_table.dim_size(1) != width) {
      return errors::InvalidArgument(
          "weight_table must be a matrix [m_w, ", width, "] (weight_mode '",
          per_hash_ ? "per_hash" : "scalar", "' with num_hashes = ",
          attrs_.num_hashes, "), got shape ",
          weight_table.shape().DebugString());
    }
    if (at.token_scales >= 0) {
      TF_RETURN_IF_ERROR(ValidateScales<Table>(ctx->input(at.token_scales),
                                               table.dim_size(0), args));
    }
    TF_RETURN_IF_ERROR(attrs_.Make(table.dim_size(0), weight_table.dim_size(0),
                                   &args->signature));
    args->combiner = combiner_;
    args->per_hash = per_hash_;
    args->num_ids = n;
    args->num_rows = num_rows;
    args->dim = table.dim_size(1);
    args->weight_width = width;
    args->ids = ids.flat<int64_t>().data();
    args->row_splits = splits.flat<int64_t>().data();
    args->weights = weights.NumElements() == 0 ? nullptr : weights.flat<T>().data();
    args->token_table = table.flat<Table>().data();
    args->weight_table = weight_table.flat<T>().data();
    return ::tensorflow::OkStatus();
  }

 private:
  // An int8 table has one scale per row; a bfloat16 table has none.
  template <typename Table>
  static Status ValidateScales(const Tensor& scales, int64_t rows,
                               LookupArgs<T, Table>* args) {
    constexpr bool kInt8 = std::is_same<Table, int8_t>::value;
    if (kInt8 && (scales.dims() != 1 || scales.dim_size(0) != rows)) {
      return errors::InvalidArgument(
          "token_scales must hold one float32 scale per row of the int8 "
          "token_table: shape [", rows, "], got shape ",
          scales.shape().DebugString());
    }
    if (!kInt8 && (scales.dims() != 1 || scales.dim_size(0) != 0)) {
      return errors::InvalidArgument(
          "token_scales must be empty (shape [0]) for a ",
          ::tensorflow::DataTypeString(::tensorflow::DataTypeToEnum<Table>::v()),
          " token_table, whose rows have no scales; got shape ",
          scales.shape().DebugString());
    }
    args->token_scales = kInt8 ? scales.flat<float>().data() : nullptr;
    return ::tensorflow::OkStatus();
  }

  SignatureAttrs attrs_;
  int combiner_ = kSum;
  bool per_hash_ = false;
};

// Bounds of output row r in the ids.
template <typename T, typename Table>
inline void RowBounds(const LookupArgs<T, Table>& a, int64_t r, int64_t* lo,
                      int64_t* hi) {
  if (a.combiner == kNone) {
    *lo = r;
    *hi = r + 1;
  } else {
    *lo = a.row_splits[r];
    *hi = a.row_splits[r + 1];
  }
}

template <typename T, typename Acc, typename Table>
inline Acc BagScaleOf(const LookupArgs<T, Table>& a, int64_t lo, int64_t hi) {
  if (a.combiner != kMean && a.combiner != kSqrtn) return Acc(1);
  Acc sum = Acc(0), square_sum = Acc(0);
  for (int64_t n = lo; n < hi; ++n) {
    const Acc w = a.weights ? static_cast<Acc>(a.weights[n]) : Acc(1);
    sum += w;
    square_sum += w * w;
  }
  return BagScale<Acc>(a.combiner, sum, square_sum);
}

// Estimated CPU cycles of the units of work handed to ParallelFor below,
// from which the thread pool sizes its shards. They are rough and steer only
// how the work is split, never the results: every sum runs in an order fixed
// by the inputs, whatever the shards.
//
// One column of a row sum streamed from a token row: a load and a
// multiply-add (the forward pooling, the token-gradient scatter).
constexpr int64_t kColumnCost = 1;
// One column where an output-gradient row meets a token row: the dot product
// of the two, or the gradient row added into a row's sum in slot order.
constexpr int64_t kGradientColumnCost = 2;
// Hashing an id to one table row, and prefetching that row.
constexpr int64_t kRowHashCost = 40;
// An id's work in the lookup kernels besides its row hashes: its key, its
// weights alpha and the bag bookkeeping.
constexpr int64_t kIdCost = 40;
// An id's work in MemRecHashRows besides its row hashes: its key and the
// writes of its row indices.
constexpr int64_t kHashRowsIdCost = 80;
// The token-gradient scatter's test of one slot against a part's rows (every
// part scans every slot).
constexpr int64_t kSlotScanCost = 10;
// Finding one slot of a row group: its index, output row and factor.
constexpr int64_t kGroupedSlotCost = 20;
// One column of one weight-gradient entry: an indirect load and an add.
constexpr int64_t kWeightEntryCost = 4;
// Converting one float sum to a half-precision output element.
constexpr int64_t kConvertCost = 2;

// Runs work(begin, end) over [0, total) on the op's CPU thread pool, in
// shards sized from `cost_per_unit` (estimated cycles per unit, see above).
void ParallelFor(OpKernelContext* ctx, int64_t total, int64_t cost_per_unit,
                 const std::function<void(int64_t, int64_t)>& work) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  workers->ParallelFor(total, cost_per_unit, work);
}

// Entries (token or weight slots) grouped by the table row they touch.
// Within a row, entries keep ascending order, so sums are deterministic.
struct RowGroups {
  std::vector<int64_t> rows;    // distinct rows, ascending
  std::vector<int64_t> starts;  // group u is order[starts[u] .. starts[u+1])
  std::vector<int64_t> order;   // entry indices
};

void GroupByRow(const std::vector<int64_t>& entry_rows, int64_t table_rows,
                RowGroups* g) {
  const int64_t e = static_cast<int64_t>(entry_rows.size());
  g->rows.clear();
  g->starts.assign(1, 0);
  g->order.resize(e);
  if (table_rows <= 4 * e + 4096) {
    // Counting sort: linear in entries plus table rows.
    std::vector<int64_t> next(table_rows + 1, 0);
    for (int64_t i = 0; i < e; ++i) ++next[entry_rows[i] + 1];
    for (int64_t r = 0; r < table_rows; ++r) {
      if (next[r + 1] > 0) {
        g->rows.push_back(r);
        g->starts.push_back(g->starts.back() + next[r + 1]);
      }
      next[r + 1] += next[r];
    }
    for (int64_t i = 0; i < e; ++i) g->order[next[entry_rows[i]]++] = i;
  } else {
    // Few entries in a large table: sort them.
    std::iota(g->order.begin(), g->order.end(), 0);
    std::stable_sort(g->order.begin(), g->order.end(),
                     [&](int64_t x, int64_t y) {
                       return entry_rows[x] < entry_rows[y];
                     });
    for (int64_t i = 0; i < e; ++i) {
      if (i == 0 || entry_rows[g->order[i]] != entry_rows[g->order[i - 1]]) {
        if (i > 0) g->starts.push_back(i);
        g->rows.push_back(entry_rows[g->order[i]]);
      }
    }
    if (e > 0) g->starts.push_back(e);
  }
}

}  // namespace

// ---------------------------------------------------------------- CPU functors

namespace {

// The rows of the id kAhead positions ahead are hashed and prefetched while
// the current id is summed: a steady stream of a few outstanding row reads.
// (Prefetching a block of ids at once issued more reads than the core can
// keep in flight, and it stalled on them.)
constexpr int kAhead = 8;
constexpr int kRing = 16;  // a power of two above kAhead
static_assert(kRing > kAhead && (kRing & (kRing - 1)) == 0, "ring size");

// SaltKey of every salt, computed once per call (it does not depend on the
// id); with more than 65536 salts it is computed per id instead.
class SaltKeys {
 public:
  explicit SaltKeys(const Signature& s) : s_(s) {
    const int64_t n = s.num_salts > 1 ? s.num_salts : 1;
    if (n <= 65536) {
      keys_.resize(n);
      for (int64_t i = 0; i < n; ++i) keys_[i] = SaltKey(s.seed, i);
    }
  }
  uint64_t Key(int64_t id, int64_t position) const {
    const int64_t salt = PositionSalt(s_, position);
    return IdKey(id, keys_.empty() ? SaltKey(s_.seed, salt) : keys_[salt]);
  }

 private:
  const Signature& s_;
  std::vector<uint64_t> keys_;
};

template <typename T>
inline void PrefetchRow(const T* row, int64_t dim) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < dim * static_cast<int64_t>(sizeof(T)); b += 64) {
    __builtin_prefetch(p + b);
  }
}

// Eight independent partial sums: a single running sum is a chain of
// dependent adds the compiler may not reorder (and so cannot vectorise).
template <typename T, typename Acc>
inline Acc Dot(const T* a, const T* b, int64_t dim) {
  Acc part[8] = {};
  int64_t c = 0;
  for (; c + 8 <= dim; c += 8) {
    for (int l = 0; l < 8; ++l) {
      part[l] += static_cast<Acc>(a[c + l]) * static_cast<Acc>(b[c + l]);
    }
  }
  for (; c < dim; ++c) part[0] += static_cast<Acc>(a[c]) * static_cast<Acc>(b[c]);
  return ((part[0] + part[1]) + (part[2] + part[3])) +
         ((part[4] + part[5]) + (part[6] + part[7]));
}

template <typename T, typename Acc>
inline void AddScaledRow(Acc* acc, const T* row, Acc f, int64_t dim) {
  for (int64_t c = 0; c < dim; ++c) acc[c] += f * static_cast<Acc>(row[c]);
}

// acc += f * token row r, each entry read as memrec_math.h's TokenEntry does
// (float(q) * scale[r] for an int8 table): the forward's one row read, for
// every table format.
template <typename T, typename Table, typename Acc>
inline void AddTokenRow(const LookupArgs<T, Table>& a, int64_t r, Acc f,
                        Acc* acc) {
  const Table* row = a.token_table + r * a.dim;
  const Acc scale = TokenRowScale<Acc>(a.token_table, a.token_scales, r);
  for (int64_t c = 0; c < a.dim; ++c) acc[c] += f * TokenEntry(row[c], scale);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define MEMREC_INT8_ROWS_AVX2 1
// The int8 row read above, 8 columns at a time with AVX2 (the library is
// built for SSE2, whose int8 -> float conversion takes a dozen shuffles per
// 16 columns; the caller checks the CPU). The same IEEE products and sums in
// the same order per column, and no FMA (target "avx2" does not enable it),
// so the same bits as the scalar loop.
__attribute__((target("avx2"))) void AddInt8RowAvx2(const int8_t* row, float scale,
                                                   float f, int64_t dim, float* acc) {
  const __m256 scales = _mm256_set1_ps(scale);
  const __m256 factors = _mm256_set1_ps(f);
  int64_t c = 0;
  for (; c + 8 <= dim; c += 8) {
    const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c));
    const __m256 value = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), scales);
    _mm256_storeu_ps(acc + c, _mm256_add_ps(_mm256_loadu_ps(acc + c),
                                            _mm256_mul_ps(factors, value)));
  }
  for (; c < dim; ++c) acc[c] += f * TokenEntry(row[c], scale);
}

bool CpuHasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

template <typename T>
inline void AddTokenRow(const LookupArgs<T, int8_t>& a, int64_t r, float f,
                        float* acc) {
  const int8_t* row = a.token_table + r * a.dim;
  const float scale = a.token_scales[r];
#if defined(MEMREC_INT8_ROWS_AVX2)
  if (CpuHasAvx2()) return AddInt8RowAvx2(row, scale, f, a.dim, acc);
#endif
  for (int64_t c = 0; c < a.dim; ++c) acc[c] += f * TokenEntry(row[c], scale);
}

// Token and weight rows of id n, both prefetched (and an int8 row's scale).
template <typename T, typename Table>
inline void HashAndPrefetch(const LookupArgs<T, Table>& a, const SaltKeys& salts,
                            int64_t n, int64_t* token_rows,
                            int64_t* weight_rows) {
  const Signature& s = a.signature;
  const int64_t id = a.ids[n];
  const uint64_t key = salts.Key(id, n);
  TokenRows(s, id, key, token_rows);
  WeightRows(s, id, key, weight_rows);
  for (int i = 0; i < s.num_hashes; ++i) {
    PrefetchRow(a.token_table + token_rows[i] * a.dim, a.dim);
    if (std::is_same<Table, int8_t>::value) {
      __builtin_prefetch(a.token_scales + token_rows[i]);
    }
  }
  for (int i = 0; i < s.num_weight_hashes; ++i) {
    __builtin_prefetch(a.weight_table + weight_rows[i] * a.weight_width);
  }
}

// Runs body(n) for every id n of [lo, hi), each id fetched (fetch(n):
// hashed, its rows prefetched) kAhead ids before its body runs.
template <typename Fetch, typename Body>
inline void ForEachIdFetchedAhead(int64_t lo, int64_t hi, Fetch fetch, Body body) {
  for (int64_t n = lo; n < std::min(hi, lo + kAhead); ++n) fetch(n);
  for (int64_t n = lo; n < hi; ++n) {
    if (n + kAhead < hi) fetch(n + kAhead);
    body(n);
  }
}

// Writes one output row. Float rows go out with streaming stores: the
// output is written once and not read back, so it need not be fetched into
// the cache first (that read would cost as much as the lookup's own).
template <typename T, typename Acc>
inline void StoreRow(T* out, Acc* acc, Acc scale, int64_t d) {
  for (int64_t c = 0; c < d; ++c) {
    out[c] = static_cast<T>(scale * acc[c]);
    acc[c] = Acc(0);
  }
}

#if defined(__SSE__)
template <>
inline void StoreRow<float, float>(float* out, float* acc, float scale,
                                   int64_t d) {
  if (d % 4 != 0 || reinterpret_cast<uintptr_t>(out) % 16 != 0) {
    for (int64_t c = 0; c < d; ++c) {
      out[c] = scale * acc[c];
      acc[c] = 0.0f;
    }
    return;
  }
  const __m128 s = _mm_set1_ps(scale);
  const __m128 zero = _mm_setzero_ps();
  for (int64_t c = 0; c < d; c += 4) {
    _mm_stream_ps(out + c, _mm_mul_ps(s, _mm_loadu_ps(acc + c)));
    _mm_storeu_ps(acc + c, zero);
  }
}
#endif

}  // namespace

template <typename T, typename Table>
struct LookupFunctor<CPUDevice, T, Table> {
  Status operator()(OpKernelContext* ctx, const LookupArgs<T, Table>& a,
                    T* output) {
    using Acc = typename AccumulatorOf<T>::type;
    const Signature& s = a.signature;
    const int k = s.num_hashes;
    const int64_t d = a.dim;
    const SaltKeys salts(s);
    // Output rows [begin, end) read the contiguous ids [lo(begin), hi(end-1)).
    auto work = [&](int64_t begin, int64_t end) {
      std::vector<Acc> acc(d, Acc(0));
      int64_t token_rows[kRing][kMaxHashes];
      int64_t weight_rows[kRing][kMaxHashes];
      Acc alpha[kMaxHashes];
      int64_t id_lo, id_hi, unused, bag_end;
      RowBounds(a, begin, &id_lo, &unused);
      RowBounds(a, end - 1, &unused, &id_hi);
      int64_t r = begin;
      RowBounds(a, r, &unused, &bag_end);
      auto flush = [&]() {  // writes output row r and starts the next
        int64_t lo, hi;
        RowBounds(a, r, &lo, &hi);
        StoreRow<T, Acc>(output + r * d, acc.data(), BagScaleOf<T, Acc>(a, lo, hi), d);
        if (++r < end) RowBounds(a, r, &unused, &bag_end);
      };
      auto fetch = [&](int64_t n) {
        HashAndPrefetch(a, salts, n, token_rows[n & (kRing - 1)],
                        weight_rows[n & (kRing - 1)]);
      };
      ForEachIdFetchedAhead(id_lo, id_hi, fetch, [&](int64_t n) {
        while (n >= bag_end) flush();
        const int64_t* rows = token_rows[n & (kRing - 1)];
        Alpha(s, a.weight_table, a.weight_width, weight_rows[n & (kRing - 1)], alpha);
        const Acc w = a.weights ? static_cast<Acc>(a.weights[n]) : Acc(1);
        for (int i = 0; i < k; ++i) {
          AddTokenRow(a, rows[i], w * alpha[a.per_hash ? i : 0], acc.data());
        }
      });
      while (r < end) flush();  // the last bag, and trailing empty bags
#if defined(__SSE__)
      _mm_sfence();  // streaming stores are visible before the op returns
#endif
    };
    const int64_t ids_per_row =
        a.num_rows > 0 ? std::max<int64_t>(1, a.num_ids / a.num_rows) : 1;
    ParallelFor(ctx, a.num_rows,
                ids_per_row * (k * (d * kColumnCost + kRowHashCost) + kIdCost),
                work);
    return ::tensorflow::OkStatus();
  }
};

namespace {

// What the gradient kernels need of every id, from one pass over the ids:
// its token and weight rows, the output row it pooled into, the factor of
// each token slot (weight * bag scale * alpha_i), and d(loss)/d(alpha): the
// output gradient dotted with its token rows.
template <typename T>
struct GradientEntries {
  using Acc = typename AccumulatorOf<T>::type;
  std::vector<int64_t> token_rows;   // [N * k]
  std::vector<int64_t> weight_rows;  // [N * kw]
  std::vector<int64_t> out_row;      // [N]
  std::vector<Acc> slot_factor;      // [N * k]
  std::vector<Acc> dots;             // [N * width], empty when kw = 0

  void Compute(OpKernelContext* ctx, const LookupArgs<T>& a, const T* grad) {
    const Signature& s = a.signature;
    const int k = s.num_hashes, kw = s.num_weight_hashes;
    const int width = a.weight_width;
    const int64_t n_ids = a.num_ids, d = a.dim;
    const SaltKeys salts(a.signature);
    token_rows.resize(n_ids * k);
    weight_rows.resize(n_ids * kw);
    out_row.resize(n_ids);
    slot_factor.resize(n_ids * k);
    dots.resize(kw > 0 ? n_ids * width : 0);
    // Output rows [begin, end) own the contiguous ids [lo(begin), hi(end-1)),
    // hashed kAhead ids ahead so that the token rows the dot products read
    // are prefetched (see the forward functor).
    auto per_id = [&](int64_t begin, int64_t end) {
      Acc alpha[kMaxHashes];
      int64_t id_lo, id_hi, lo, bag_end;
      RowBounds(a, begin, &id_lo, &bag_end);
      RowBounds(a, end - 1, &lo, &id_hi);
      int64_t r = begin;
      Acc scale = BagScaleOf<T, Acc>(a, id_lo, bag_end);
      auto fetch = [&](int64_t n) {
        HashAndPrefetch(a, salts, n, &token_rows[n * k], &weight_rows[n * kw]);
      };
      ForEachIdFetchedAhead(id_lo, id_hi, fetch, [&](int64_t n) {
        while (n >= bag_end) {
          ++r;
          RowBounds(a, r, &lo, &bag_end);
          scale = BagScaleOf<T, Acc>(a, lo, bag_end);
        }
        const int64_t* rows = &token_rows[n * k];
        Alpha(s, a.weight_table, width, &weight_rows[n * kw], alpha);
        const Acc id_coef =
            scale * (a.weights ? static_cast<Acc>(a.weights[n]) : Acc(1));
        out_row[n] = r;
        const T* g = grad + r * d;
        Acc total = Acc(0);
        for (int i = 0; i < k; ++i) {
          slot_factor[n * k + i] = id_coef * alpha[a.per_hash ? i : 0];
          if (kw == 0) continue;
          const Acc dot = Dot<T, Acc>(g, a.token_table + rows[i] * d, d);
          if (a.per_hash) dots[n * width + i] = id_coef * dot;
          total += dot;
        }
        if (kw > 0 && !a.per_hash) dots[n] = id_coef * total;
      });
    };
    const int64_t ids_per_row =
        a.num_rows > 0 ? std::max<int64_t>(1, n_ids / a.num_rows) : 1;
    ParallelFor(ctx, a.num_rows,
                ids_per_row *
                    (k * (d * kGradientColumnCost + kRowHashCost) + kIdCost),
                per_id);
  }
};

// Sums each token row's gradient without grouping the slots by row: into
// sums[place(row) * d ...], where place maps a token row to its row of
// `sums` (the row itself for a table-shaped block, its index among the
// distinct rows for a compact one). Each part owns a range of token rows,
// scans every slot in ascending order and adds those of its rows, scaled,
// into `sums` (the first one stored, not added, so that `sums` need not be
// zeroed first; `seen` marks the rows written), then calls
// finish_part(lo, hi) on its rows while they are still warm
// (`finish_cost`: its estimated cycles per part). Sums run in ascending
// slot order within a row, however the parts are split.
template <typename T, typename Acc, typename Place, typename FinishPart>
void ScatterTokenRows(OpKernelContext* ctx, const LookupArgs<T>& a,
                      const GradientEntries<T>& e, const T* grad, Acc* sums, char* seen,
                      Place place, int64_t finish_cost, FinishPart finish_part) {
  const int k = a.signature.num_hashes;
  const int64_t m = a.signature.num_token_rows, d = a.dim;
  const int64_t slots = static_cast<int64_t>(e.token_rows.size());
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  const int64_t parts = std::max(1, workers->NumThreads());
  auto scatter = [&](int64_t p_begin, int64_t p_end) {
    for (int64_t p = p_begin; p < p_end; ++p) {
      const int64_t lo = m * p / parts, hi = m * (p + 1) / parts;
      for (int64_t i = 0; i < slots; ++i) {
        // Rows are written in random order: fetch them ahead.
        const int64_t i_ahead = i + kAhead * k;
        if (i_ahead < slots) {
          const int64_t ahead = e.token_rows[i_ahead];
          if (ahead >= lo && ahead < hi) PrefetchRow(sums + place(ahead) * d, d);
        }
        const int64_t row = e.token_rows[i];
        if (row < lo || row >= hi) continue;
        const T* g = grad + e.out_row[i / k] * d;
        Acc* acc = sums + place(row) * d;
        const Acc f = e.slot_factor[i];
        if (!seen[row]) {
          seen[row] = 1;
          for (int64_t c = 0; c < d; ++c) acc[c] = f * static_cast<Acc>(g[c]);
        } else {
          AddScaledRow(acc, g, f, d);
        }
      }
      finish_part(lo, hi);
    }
  };
  ParallelFor(ctx, parts, slots * (d * kColumnCost + kSlotScanCost) + finish_cost, scatter);
}

// A token row's row in a table-shaped block of sums: itself.
struct SameRow {
  int64_t operator()(int64_t row) const { return row; }
};

}  // namespace

template <typename T>
struct LookupGradFunctor<CPUDevice, T> {
  Status operator()(OpKernelContext* ctx, const LookupArgs<T>& a,
                    const T* grad) {
    GradientEntries<T> e;
    e.Compute(ctx, a, grad);
    TF_RETURN_IF_ERROR(
        TokenGradient(ctx, a, grad, e));
    return WeightGradient(ctx, a, e.weight_rows, e.dots);
  }

 private:
  using Acc = typename AccumulatorOf<T>::type;

  // Sums slot_factor[e] * grad[out_row[e / k]] into each distinct row.
  static Status TokenGradient(OpKernelContext* ctx, const LookupArgs<T>& a,
                              const T* grad, const GradientEntries<T>& e) {
    const std::vector<int64_t>& token_rows = e.token_rows;
    const std::vector<int64_t>& out_row = e.out_row;
    const std::vector<Acc>& slot_factor = e.slot_factor;
    const int k = a.signature.num_hashes;
    const int64_t m = a.signature.num_token_rows, d = a.dim;
    const int64_t slots = static_cast<int64_t>(token_rows.size());
    Tensor* rows_out = nullptr;
    Tensor* values_out = nullptr;
    if (m > 4 * slots + 4096) {
      // Few slots in a large table: group them by sorting.
      RowGroups groups;
      GroupByRow(token_rows, m, &groups);
      const int64_t u = static_cast<int64_t>(groups.rows.size());
      TF_RETURN_IF_ERROR(ctx->allocate_output(0, TensorShape({u}), &rows_out));
      TF_RETURN_IF_ERROR(
          ctx->allocate_output(1, TensorShape({u, d}), &values_out));
      std::copy(groups.rows.begin(), groups.rows.end(),
                rows_out->flat<int64_t>().data());
      T* values = values_out->flat<T>().data();
      auto work = [&](int64_t begin, int64_t end) {
        std::vector<Acc> acc(d);
        for (int64_t g = begin; g < end; ++g) {
          std::fill(acc.begin(), acc.end(), Acc(0));
          for (int64_t e = groups.starts[g]; e < groups.starts[g + 1]; ++e) {
            const int64_t slot = groups.order[e];
            AddScaledRow(acc.data(), grad + out_row[slot / k] * d,
                         slot_factor[slot], d);
          }
          for (int64_t c = 0; c < d; ++c) values[g * d + c] = static_cast<T>(acc[c]);
        }
      };
      const int64_t slots_per_row =
          std::max<int64_t>(1, slots / std::max<int64_t>(1, u));
      ParallelFor(ctx, u,
                  slots_per_row * (d * kGradientColumnCost + kGroupedSlotCost),
                  work);
      return ::tensorflow::OkStatus();
    }
    // The table is not much larger than the slots: find the distinct rows
    // with a table-sized index (at most 4 slots + 4096 entries), then
    // scatter each slot's contribution straight into its row's place in the
    // output. Each part owns a range of rows and visits the slots in order,
    // so sums are race-free and deterministic (ascending slot order within
    // a row).
    std::vector<int64_t> position(m, -1);
    for (int64_t e = 0; e < slots; ++e) position[token_rows[e]] = 0;
    int64_t u = 0;
    for (int64_t r = 0; r < m; ++r) {
      if (position[r] == 0) position[r] = ++u;  // 1-based while counting
    }
    TF_RETURN_IF_ERROR(ctx->allocate_output(0, TensorShape({u}), &rows_out));
    TF_RETURN_IF_ERROR(ctx->allocate_output(1, TensorShape({u, d}), &values_out));
    int64_t* rows = rows_out->flat<int64_t>().data();
    for (int64_t r = 0; r < m; ++r) {
      if (position[r] > 0) rows[--position[r]] = r;
    }
    T* values = values_out->flat<T>().data();
    // Half-precision tables sum in float: through a float scratch block of
    // the output's size, from TensorFlow's allocator (which reuses the pages
    // of earlier calls; a fresh heap block is page-faulted in on every call).
    Tensor scratch_tensor;
    Acc* sums = reinterpret_cast<Acc*>(values);
    if (!std::is_same<T, Acc>::value) {
      TF_RETURN_IF_ERROR(ctx->allocate_temp(::tensorflow::DataTypeToEnum<Acc>::value,
                                            TensorShape({u * d}), &scratch_tensor));
      sums = scratch_tensor.flat<Acc>().data();
    }
    std::vector<char> seen(m, 0);
    ScatterTokenRows(ctx, a, e, grad, sums, seen.data(),
                     [&](int64_t row) { return position[row]; }, 0,
                     [](int64_t, int64_t) {});
    if (!std::is_same<T, Acc>::value) {
      auto convert = [&](int64_t begin, int64_t end) {
        for (int64_t i = begin * d; i < end * d; ++i) values[i] = static_cast<T>(sums[i]);
      };
      ParallelFor(ctx, u, d * kConvertCost, convert);
    }
    return ::tensorflow::OkStatus();
  }

  // Sums each id's d(loss)/d(alpha) into its distinct weight rows.
  static Status WeightGradient(OpKernelContext* ctx, const LookupArgs<T>& a,
                               const std::vector<int64_t>& weight_rows,
                               const std::vector<Acc>& dots) {
    const int kw = a.signature.num_weight_hashes;
    const int width = a.weight_width;
    RowGroups groups;
    GroupByRow(weight_rows, kw > 0 ? a.signature.num_weight_rows : 0, &groups);
    const int64_t u = static_cast<int64_t>(groups.rows.size());
    Tensor* rows_out = nullptr;
    Tensor* values_out = nullptr;
    TF_RETURN_IF_ERROR(ctx->allocate_output(2, TensorShape({u}), &rows_out));
    TF_RETURN_IF_ERROR(
        ctx->allocate_output(3, TensorShape({u, width}), &values_out));
    std::copy(groups.rows.begin(), groups.rows.end(),
              rows_out->flat<int64_t>().data());
    T* values = values_out->flat<T>().data();
    auto work = [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        for (int c = 0; c < width; ++c) {
          Acc sum = Acc(0);
          for (int64_t e = groups.starts[g]; e < groups.starts[g + 1]; ++e) {
            sum += dots[(groups.order[e] / kw) * width + c];
          }
          values[g * width + c] = static_cast<T>(sum);
        }
      }
    };
    const int64_t entries = static_cast<int64_t>(weight_rows.size());
    const int64_t entries_per_row =
        std::max<int64_t>(1, entries / std::max<int64_t>(1, u));
    ParallelFor(ctx, u, entries_per_row * width * kWeightEntryCost, work);
    return ::tensorflow::OkStatus();
  }
};

namespace {

// Sums each entry's dots into its weight row, in ascending entry order
// (the weight table is small: one thread, in cache).
template <typename T, typename Acc>
void WeightScatter(const GradientEntries<T>& e, int kw, int width, int64_t m_w,
                   Acc* weight_sums) {
  std::fill(weight_sums, weight_sums + m_w * width, Acc(0));
  const int64_t entries = static_cast<int64_t>(e.weight_rows.size());
  for (int64_t i = 0; i < entries; ++i) {
    const Acc* dot = &e.dots[(i / kw) * width];
    Acc* acc = weight_sums + e.weight_rows[i] * width;
    for (int c = 0; c < width; ++c) acc[c] += dot[c];
  }
}

// The gradients of both tables as dense [m, d] and [m_w, width] tensors
// (MemRecLookupGradDense, CPU only): the token rows summed by
// ScatterTokenRows straight into the output, then the rows that no slot
// touched zeroed.
template <typename T>
struct LookupDenseGradFunctor {
  using Acc = typename AccumulatorOf<T>::type;

  Status operator()(OpKernelContext* ctx, const LookupArgs<T>& a, const T* grad,
                    T* token_out, T* weight_out) {
    GradientEntries<T> e;
    e.Compute(ctx, a, grad);
    const int width = a.weight_width;
    const int64_t m = a.signature.num_token_rows, d = a.dim;
    const int64_t m_w = a.signature.num_weight_rows;
    // Half-precision tables sum in float scratch blocks, converted at the end.
    Tensor token_scratch, weight_scratch;
    Acc* sums = reinterpret_cast<Acc*>(token_out);
    Acc* weight_sums = reinterpret_cast<Acc*>(weight_out);
    if (!std::is_same<T, Acc>::value) {
      const auto dtype = ::tensorflow::DataTypeToEnum<Acc>::value;
      TF_RETURN_IF_ERROR(ctx->allocate_temp(dtype, TensorShape({m * d}), &token_scratch));
      TF_RETURN_IF_ERROR(
          ctx->allocate_temp(dtype, TensorShape({m_w * width}), &weight_scratch));
      sums = token_scratch.flat<Acc>().data();
      weight_sums = weight_scratch.flat<Acc>().data();
    }
    std::vector<char> seen(m, 0);
    ScatterTokenRows(ctx, a, e, grad, sums, seen.data(), SameRow(), m * d * kColumnCost,
                     [&](int64_t lo, int64_t hi) {
      for (int64_t row = lo; row < hi; ++row) {
        if (!seen[row]) std::fill(sums + row * d, sums + (row + 1) * d, Acc(0));
      }
    });
    WeightScatter(e, a.signature.num_weight_hashes, width, m_w, weight_sums);
    if (!std::is_same<T, Acc>::value) {
      auto convert = [&](const Acc* from, T* to, int64_t cols) {
        return [=](int64_t begin, int64_t end) {
          for (int64_t i = begin * cols; i < end * cols; ++i) to[i] = static_cast<T>(from[i]);
        };
      };
      ParallelFor(ctx, m, d * kConvertCost, convert(sums, token_out, d));
      ParallelFor(ctx, m_w, width * kConvertCost,
                  convert(weight_sums, weight_out, width));
    }
    return ::tensorflow::OkStatus();
  }
};

// Keras' update of one token row from its summed gradient g (no FMA: the
// products and sums round as Keras' separate ops round them).
struct SgdRowUpdate {
  static constexpr bool kEveryRow = false;  // untouched rows stay as they are
  float learning_rate;
  void operator()(float* row, const float* g, int64_t /*r*/, int64_t d) const {
    for (int64_t c = 0; c < d; ++c) row[c] = row[c] - g[c] * learning_rate;
  }
};

struct AdagradRowUpdate {
  static constexpr bool kEveryRow = false;
  float learning_rate;
  float epsilon;
  float* accumulator;  // [m, d]
  void operator()(float* row, const float* g, int64_t r, int64_t d) const {
    float* acc = accumulator + r * d;
    for (int64_t c = 0; c < d; ++c) {
      const float square = g[c] * g[c];
      acc[c] = acc[c] + square;
      const float step = learning_rate * g[c];
      row[c] = row[c] - step / std::sqrt(acc[c] + epsilon);
    }
  }
};

// Keras 3's Adam moves every row, an untouched one with a zero gradient.
struct AdamRowUpdate {
  static constexpr bool kEveryRow = true;
  float step_size;  // lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
  float epsilon;
  float one_minus_beta_1;
  float one_minus_beta_2;
  float* momentum;  // [m, d]
  float* velocity;  // [m, d]
  void operator()(float* row, const float* g, int64_t r, int64_t d) const {
    float* m = momentum + r * d;
    float* v = velocity + r * d;
    for (int64_t c = 0; c < d; ++c) {
      m[c] = m[c] + (g[c] - m[c]) * one_minus_beta_1;
      v[c] = v[c] + (g[c] * g[c] - v[c]) * one_minus_beta_2;
      row[c] = row[c] - (m[c] * step_size) / (std::sqrt(v[c]) + epsilon);
    }
  }
};

// MemRecLookupGradApply: the token rows summed by ScatterTokenRows into a
// scratch block, each part's touched rows (every row for Adam) updated in
// place right after its scatter; the weight table's gradient written to
// weight_out.
struct LookupGradApplyFunctor {
  template <typename RowUpdate>
  Status operator()(OpKernelContext* ctx, const LookupArgs<float>& a, const float* grad,
                    float* table, const RowUpdate& update, float* weight_out) {
    GradientEntries<float> e;
    e.Compute(ctx, a, grad);  // the dots read the table before the update
    const int64_t m = a.signature.num_token_rows, d = a.dim;
    Tensor scratch;
    TF_RETURN_IF_ERROR(ctx->allocate_temp(::tensorflow::DT_FLOAT, TensorShape({m * d}),
                                          &scratch));
    float* sums = scratch.flat<float>().data();
    std::vector<char> seen(m, 0);
    const std::vector<float> zeros(RowUpdate::kEveryRow ? d : 0, 0.f);
    ScatterTokenRows(ctx, a, e, grad, sums, seen.data(), SameRow(), m * d * kColumnCost,
                     [&](int64_t lo, int64_t hi) {
      for (int64_t row = lo; row < hi; ++row) {
        if (seen[row]) {
          update(table + row * d, sums + row * d, row, d);
        } else if (RowUpdate::kEveryRow) {
          update(table + row * d, zeros.data(), row, d);
        }
      }
    });
    WeightScatter(e, a.signature.num_weight_hashes, a.weight_width,
                  a.signature.num_weight_rows, weight_out);
    return ::tensorflow::OkStatus();
  }
};

}  // namespace

template <>
struct HashRowsFunctor<CPUDevice> {
  Status operator()(OpKernelContext* ctx, const Signature& s,
                    const int64_t* ids, int64_t num_ids, int64_t* token_rows,
                    int64_t* weight_rows) {
    const SaltKeys salts(s);
    auto work = [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const uint64_t key = salts.Key(ids[n], n);
        TokenRows(s, ids[n], key, token_rows + n * s.num_hashes);
        WeightRows(s, ids[n], key, weight_rows + n * s.num_weight_hashes);
      }
    };
    ParallelFor(ctx, num_ids,
                (s.num_hashes + s.num_weight_hashes) * kRowHashCost +
                    kHashRowsIdCost,
                work);
    return ::tensorflow::OkStatus();
  }
};

// ------------------------------------------------------------------ OpKernels

template <typename Device, typename T>
class LookupOp : public OpKernel {
 public:
  explicit LookupOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, inputs_.Read(ctx));
  }

  void Compute(OpKernelContext* ctx) override {
    LookupArgs<T> args;
    OP_REQUIRES_OK(ctx, inputs_.Validate(ctx, 0, &args));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({args.num_rows, args.dim}), &output));
    if (output->NumElements() == 0) return;
    OP_REQUIRES_OK(ctx, LookupFunctor<Device, T>()(ctx, args,
                                                    output->flat<T>().data()));
  }

 private:
  LookupInputs<T> inputs_;
};

// MemRecLookupQuantized: float weights, weight table and output; the token
// table stored as Table (int8 with a float scale per row, or bfloat16).
template <typename Device, typename Table>
class QuantizedLookupOp : public OpKernel {
 public:
  explicit QuantizedLookupOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, inputs_.Read(ctx));
  }

  void Compute(OpKernelContext* ctx) override {
    LookupArgs<float, Table> args;
    OP_REQUIRES_OK(ctx, inputs_.Validate(ctx, kQuantizedInputs, &args));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({args.num_rows, args.dim}), &output));
    if (output->NumElements() == 0) return;
    OP_REQUIRES_OK(ctx, (LookupFunctor<Device, float, Table>()(
                            ctx, args, output->flat<float>().data())));
  }

 private:
  LookupInputs<float> inputs_;
};

// The inputs of a gradient op: those of the forward op after `grad` (input
// 0), and `grad` of the forward output's shape. `token_table_value` is the
// token table when input 4 is the handle of a variable, else null.
template <typename T>
Status ValidateGradInputs(OpKernelContext* ctx, const LookupInputs<T>& inputs,
                          LookupArgs<T>* args, const Tensor* token_table_value = nullptr) {
  InputPositions at = InputPositions::Consecutive(1);
  at.token_table_value = token_table_value;
  TF_RETURN_IF_ERROR(inputs.Validate(ctx, at, args));
  const Tensor& grad = ctx->input(0);
  if (grad.dims() != 2 || grad.dim_size(0) != args->num_rows ||
      grad.dim_size(1) != args->dim) {
    return errors::InvalidArgument("grad must have the forward output's shape [",
                                   args->num_rows, ", ", args->dim, "], got ",
                                   grad.shape().DebugString());
  }
  return ::tensorflow::OkStatus();
}

template <typename Device, typename T>
class LookupGradOp : public OpKernel {
 public:
  explicit LookupGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, inputs_.Read(ctx));
  }

  void Compute(OpKernelContext* ctx) override {
    LookupArgs<T> args;
    OP_REQUIRES_OK(ctx, ValidateGradInputs(ctx, inputs_, &args));
    const Tensor& grad = ctx->input(0);
    OP_REQUIRES_OK(ctx, LookupGradFunctor<Device, T>()(
                            ctx, args, grad.flat<T>().data()));
  }

 private:
  LookupInputs<T> inputs_;
};

// MemRecLookupGradDense: CPU only (see LookupDenseGradFunctor).
template <typename T>
class LookupDenseGradOp : public OpKernel {
 public:
  explicit LookupDenseGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, inputs_.Read(ctx));
  }

  void Compute(OpKernelContext* ctx) override {
    LookupArgs<T> args;
    OP_REQUIRES_OK(ctx, ValidateGradInputs(ctx, inputs_, &args));
    const Tensor& grad = ctx->input(0);
    Tensor* token_grad = nullptr;
    Tensor* weight_grad = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(4).shape(), &token_grad));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, ctx->input(5).shape(), &weight_grad));
    OP_REQUIRES_OK(ctx, LookupDenseGradFunctor<T>()(
                            ctx, args, grad.flat<T>().data(),
                            token_grad->flat<T>().data(),
                            weight_grad->flat<T>().data()));
  }

 private:
  LookupInputs<T> inputs_;
};

// MemRecLookupGradApply: CPU only, float32 (see LookupGradApplyFunctor).
class LookupGradApplyOp : public OpKernel {
 public:
  explicit LookupGradApplyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, inputs_.Read(ctx));
    std::string optimizer;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("optimizer", &optimizer));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_slots", &num_slots_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("one_minus_beta_1", &one_minus_beta_1_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("one_minus_beta_2", &one_minus_beta_2_));
    optimizer_ = optimizer == "adam" ? kAdam : optimizer == "adagrad" ? kAdagrad : kSgd;
    const int slots = optimizer_ == kAdam ? 2 : optimizer_ == kAdagrad ? 1 : 0;
    OP_REQUIRES(ctx, num_slots_ == slots,
                errors::InvalidArgument("optimizer '", optimizer, "' takes ", slots,
                                        " slot variables, got ", num_slots_));
  }

  void Compute(OpKernelContext* ctx) override {
    // The token table, then the slots: distinct variables, locked in
    // address order (as TensorFlow's training ops lock theirs).
    std::vector<::tensorflow::core::RefCountPtr<::tensorflow::Var>> vars(1 + num_slots_);
    OP_REQUIRES_OK(ctx, LookupResource(ctx, HandleFromInput(ctx, kTableInput), &vars[0]));
    for (int i = 0; i < num_slots_; ++i) {
      OP_REQUIRES_OK(ctx,
                     LookupResource(ctx, HandleFromInput(ctx, kTableInput + 2 + i), &vars[1 + i]));
    }
    std::vector<::tensorflow::mutex*> mutexes;
    for (auto& var : vars) mutexes.push_back(var->mu());
    std::sort(mutexes.begin(), mutexes.end());
    OP_REQUIRES(ctx, std::adjacent_find(mutexes.begin(), mutexes.end()) == mutexes.end(),
                errors::InvalidArgument("the token table and its slots must be distinct "
                                        "variables"));
    std::vector<std::unique_ptr<::tensorflow::mutex_lock>> locks;
    for (auto* mu : mutexes) locks.emplace_back(new ::tensorflow::mutex_lock{*mu});

    Tensor* table = vars[0]->tensor();
    OP_REQUIRES(ctx, vars[0]->is_initialized && table->dtype() == ::tensorflow::DT_FLOAT,
                errors::InvalidArgument("token_table must be an initialized float32 variable"));
    for (int i = 0; i < num_slots_; ++i) {
      const Tensor& slot = *vars[1 + i]->tensor();
      OP_REQUIRES(ctx, vars[1 + i]->is_initialized && slot.dtype() == ::tensorflow::DT_FLOAT &&
                           slot.shape() == table->shape(),
                  errors::InvalidArgument("slot ", i, " must be an initialized float32 "
                                          "variable of the token table's shape ",
                                          table->shape().DebugString(), ", got ",
                                          slot.shape().DebugString()));
    }
    const Tensor& learning_rate = ctx->input(kTableInput + 2 + num_slots_);
    OP_REQUIRES(ctx, ::tensorflow::TensorShapeUtils::IsScalar(learning_rate.shape()),
                errors::InvalidArgument("learning_rate must be a scalar, got shape ",
                                        learning_rate.shape().DebugString()));
    for (auto& var : vars) OP_REQUIRES_OK(ctx, PrepareToUpdate(ctx, var.get()));

    LookupArgs<float> args;
    OP_REQUIRES_OK(ctx, ValidateGradInputs(ctx, inputs_, &args, table));
    Tensor* weight_grad = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(kTableInput + 1).shape(),
                                             &weight_grad));
    const float lr = learning_rate.scalar<float>()();
    const float* grad = ctx->input(0).flat<float>().data();
    float* values = table->flat<float>().data();
    float* weight_out = weight_grad->flat<float>().data();
    auto slot = [&](int i) { return vars[1 + i]->tensor()->flat<float>().data(); };
    if (optimizer_ == kAdam) {
      const AdamRowUpdate update{lr, epsilon_, one_minus_beta_1_, one_minus_beta_2_, slot(0),
                                 slot(1)};
      OP_REQUIRES_OK(ctx, LookupGradApplyFunctor()(ctx, args, grad, values, update, weight_out));
    } else if (optimizer_ == kAdagrad) {
      const AdagradRowUpdate update{lr, epsilon_, slot(0)};
      OP_REQUIRES_OK(ctx, LookupGradApplyFunctor()(ctx, args, grad, values, update, weight_out));
    } else {
      OP_REQUIRES_OK(ctx, LookupGradApplyFunctor()(ctx, args, grad, values,
                                                   SgdRowUpdate{lr}, weight_out));
    }
  }

 private:
  static constexpr int kTableInput = 4;

  // As TensorFlow's PrepareToUpdateVariable: a buffer that a read still
  // holds (or that reads share in copy-on-read mode) is copied first, so
  // that no tensor read before this update changes under its reader.
  static Status PrepareToUpdate(OpKernelContext* ctx, ::tensorflow::Var* var) {
    Tensor* value = var->tensor();
    if (!var->copy_on_read_mode.load() && value->RefCountIsOne()) {
      return ::tensorflow::OkStatus();
    }
    Tensor copy;
    TF_RETURN_IF_ERROR(ctx->allocate_temp(value->dtype(), value->shape(), &copy));
    std::copy_n(value->flat<float>().data(), value->NumElements(), copy.flat<float>().data());
    *value = copy;
    return ::tensorflow::OkStatus();
  }

  enum Optimizer { kSgd, kAdagrad, kAdam };

  LookupInputs<float> inputs_;
  int num_slots_ = 0;
  float epsilon_ = 0.f;
  float one_minus_beta_1_ = 0.f;
  float one_minus_beta_2_ = 0.f;
  Optimizer optimizer_ = kSgd;
};

template <typename Device>
class HashRowsOp : public OpKernel {
 public:
  explicit HashRowsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_token_rows", &token_rows_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_weight_rows", &weight_rows_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& ids = ctx->input(0);
    OP_REQUIRES(ctx, ids.dims() == 1,
                errors::InvalidArgument("ids must be a vector (rank 1), got shape ",
                                        ids.shape().DebugString()));
    Signature s;
    OP_REQUIRES_OK(ctx, attrs_.Make(token_rows_, weight_rows_, &s));
    const int64_t n = ids.dim_size(0);
    Tensor* token = nullptr;
    Tensor* weight = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({n, s.num_hashes}), &token));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            1, TensorShape({n, s.num_weight_hashes}), &weight));
    if (n == 0) return;
    OP_REQUIRES_OK(ctx, HashRowsFunctor<Device>()(
                            ctx, s, ids.flat<int64_t>().data(), n,
                            token->flat<int64_t>().data(),
                            weight->flat<int64_t>().data()));
  }

 private:
  SignatureAttrs attrs_;
  int64_t token_rows_ = 1;
  int64_t weight_rows_ = 0;
};

#define MEMREC_REGISTER_CPU(T)                                         \
  REGISTER_KERNEL_BUILDER(Name("MemRecLookup")                         \
                              .Device(DEVICE_CPU)                      \
                              .TypeConstraint<T>("T"),                 \
                          LookupOp<CPUDevice, T>);                     \
  REGISTER_KERNEL_BUILDER(Name("MemRecLookupGrad")                     \
                              .Device(DEVICE_CPU)                      \
                              .TypeConstraint<T>("T"),                 \
                          LookupGradOp<CPUDevice, T>);         \
  REGISTER_KERNEL_BUILDER(Name("MemRecLookupGradDense")                \
                              .Device(DEVICE_CPU)                      \
                              .TypeConstraint<T>("T"),                 \
                          LookupDenseGradOp<T>);
MEMREC_REGISTER_CPU(float);
MEMREC_REGISTER_CPU(double);
MEMREC_REGISTER_CPU(Eigen::half);
MEMREC_REGISTER_CPU(Eigen::bfloat16);
#undef MEMREC_REGISTER_CPU

#define MEMREC_REGISTER_QUANTIZED_CPU(Q)                                \
  REGISTER_KERNEL_BUILDER(Name("MemRecLookupQuantized")                 \
                              .Device(DEVICE_CPU)                       \
                              .TypeConstraint<Q>("Q"),                  \
                          QuantizedLookupOp<CPUDevice, Q>);
MEMREC_REGISTER_QUANTIZED_CPU(int8_t);
MEMREC_REGISTER_QUANTIZED_CPU(Eigen::bfloat16);
#undef MEMREC_REGISTER_QUANTIZED_CPU

REGISTER_KERNEL_BUILDER(Name("MemRecHashRows").Device(DEVICE_CPU),
                        HashRowsOp<CPUDevice>);
REGISTER_KERNEL_BUILDER(Name("MemRecLookupGradApply").Device(DEVICE_CPU),
                        LookupGradApplyOp);

#if GOOGLE_CUDA
// Defined and explicitly instantiated in memrec_kernels_gpu.cu.cc.
#define MEMREC_DECLARE_GPU(T)                                  \
  extern template struct LookupFunctor<GPUDevice, T>;          \
  extern template struct LookupGradFunctor<GPUDevice, T>;
MEMREC_DECLARE_GPU(float);
MEMREC_DECLARE_GPU(double);
MEMREC_DECLARE_GPU(Eigen::half);
MEMREC_DECLARE_GPU(Eigen::bfloat16);
#undef MEMREC_DECLARE_GPU
extern template struct LookupFunctor<GPUDevice, float, int8_t>;
extern template struct LookupFunctor<GPUDevice, float, Eigen::bfloat16>;
extern template struct HashRowsFunctor<GPUDevice>;

// row_splits stays in host memory: it is validated on the host before any
// output is allocated, and the GPU functor copies it to the device.
#define MEMREC_REGISTER_GPU(T)                                         \
  REGISTER_KERNEL_BUILDER(Name("MemRecLookup")                         \
                              .Device(::tensorflow::DEVICE_GPU)        \
                              .HostMemory("row_splits")                \
                              .TypeConstraint<T>("T"),                 \
                          LookupOp<GPUDevice, T>);                     \
  REGISTER_KERNEL_BUILDER(Name("MemRecLookupGrad")                     \
                              .Device(::tensorflow::DEVICE_GPU)        \
                              .HostMemory("row_splits")                \
                              .TypeConstraint<T>("T"),                 \
                          LookupGradOp<GPUDevice, T>);
MEMREC_REGISTER_GPU(float);
MEMREC_REGISTER_GPU(double);
MEMREC_REGISTER_GPU(Eigen::half);
MEMREC_REGISTER_GPU(Eigen::bfloat16);
#undef MEMREC_REGISTER_GPU
#define MEMREC_REGISTER_QUANTIZED_GPU(Q)                                \
  REGISTER_KERNEL_BUILDER(Name("MemRecLookupQuantized")                 \
                              .Device(::tensorflow::DEVICE_GPU)         \
                              .HostMemory("row_splits")                 \
                              .TypeConstraint<Q>("Q"),                  \
                          QuantizedLookupOp<GPUDevice, Q>);
MEMREC_REGISTER_QUANTIZED_GPU(int8_t);
MEMREC_REGISTER_QUANTIZED_GPU(Eigen::bfloat16);
#undef MEMREC_REGISTER_QUANTIZED_GPU
REGISTER_KERNEL_BUILDER(Name("MemRecHashRows").Device(::tensorflow::DEVICE_GPU),
                        HashRowsOp<GPUDevice>);
#endif  // GOOGLE_CUDA

}  // namespace memrec
