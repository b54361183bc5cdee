// CUDA kernels of the MEM-REC ops, free of TensorFlow and of any header but
// memrec_math.h, so that the very same source is compiled by nvcc inside the
// op library (memrec_kernels_gpu.cu.cc) and by NVRTC through CuPy in
// tests/gpu/check_kernels.py, on a GPU machine that has no TensorFlow.
//
// Every kernel is templated on the table type T and the accumulation type Acc
// (float for float, half and bfloat16; double for double). T only needs
// static_cast to and from Acc on the device: Eigen::half / Eigen::bfloat16 in
// the op library, __half / __nv_bfloat16 under NVRTC. The forward kernels
// also take the token table's own type Table (T by default): a serving format
// of MemRecLookupQuantized, int8 (signed char) with token_scales [m] or
// bfloat16, read with T = Acc = float through memrec_math.h's TokenEntry.
//
// Conventions shared by all kernels:
//  - The signature is read through a pointer to device memory and copied
//    once per block into shared memory (kernel arguments stay plain pointers
//    and integers, which CuPy can pass).
//  - Loops are grid-stride, so any grid size is correct; the host sizes the
//    grid from the problem (BlocksFor) and never launches an empty grid.
//  - Nothing here uses atomics: every output element is written by exactly
//    one thread, and every sum is taken in an order fixed by the inputs
//    alone, so results are bitwise reproducible run to run, whatever the
//    grid (tf.config.experimental.enable_op_determinism() holds always).
//
// Gradient pipeline (the host side drives it; see memrec_kernels_gpu.cu.cc
// and tests/gpu/check_kernels.py):
//   GradPrepKernel      per id: rows, bag, coefficient, alpha, dot products;
//                       (key = table row, value = entry index) pairs
//   <stable sort of the pairs by key>           cub / cupy
//   SegmentFlagsKernel  1 where a new row starts in the sorted keys
//   <inclusive scan of the flags>               -> segment id + 1 per entry,
//                                                  U = last value (host reads)
//   SegmentScatterKernel distinct rows (ascending) and segment starts
//   ChunkCountKernel    chunks per segment; <exclusive scan> -> chunk starts
//   *EntryMetaKernel    per sorted entry: factor and source offset
//   SegmentChunkKernel  one warp per chunk: sum of its entries, in order
//   SegmentFinalizeKernel one warp per multi-chunk row: sum of its chunks
// A row hit L times is split into about sqrt(L) chunks of about sqrt(L)
// entries (at least kMinChunk), so a Zipf-heavy row costs O(sqrt(L)) serial
// steps instead of O(L), and the split depends on L only (deterministic).
#ifndef MEMREC_TF_CUSTOM_OPS_MEMREC_KERNELS_GPU_CUH_
#define MEMREC_TF_CUSTOM_OPS_MEMREC_KERNELS_GPU_CUH_

#include "memrec_math.h"

namespace memrec {
namespace gpu {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
// Threads per block of every kernel (8 warps), except the lookup kernels,
// whose warps per block shrink when their staging area is large.
constexpr int kThreadsPerBlock = 256;
constexpr int kMaxWarpsPerBlock = kThreadsPerBlock / kWarpSize;
// Columns one lane keeps in registers in the pooling kernels: a warp covers
// 32 * 4 = 128 columns per pass over its entries (more passes when d > 128).
constexpr int kColumnsPerLane = 4;
// Smallest number of entries a gradient chunk sums.
constexpr int64_t kMinChunk = 32;
// Per-block budget of the lookup kernels' staging area (dynamic shared
// memory), under the 48 KiB that needs no opt-in.
constexpr int64_t kStageBudgetBytes = 32 * 1024;
constexpr int64_t kMaxGridBlocks = 2147483647;  // gridDim.x limit

static_assert(sizeof(Signature) % 8 == 0, "Signature is copied as 8-byte words");

// ------------------------------------------------------------ host helpers

// Blocks for `items` work items of `items_per_block` each: ceil, capped at
// the grid limit (the kernels' grid-stride loops cover the rest). 0 items:
// 0 blocks, and the host launches nothing.
MEMREC_HD int64_t BlocksFor(int64_t items, int64_t items_per_block) {
  if (items <= 0) return 0;
  const int64_t blocks = (items + items_per_block - 1) / items_per_block;
  return blocks < kMaxGridBlocks ? blocks : kMaxGridBlocks;
}

// Bytes of one warp's staging area in the lookup kernels, for up to 32 ids:
// token rows [32 * k] int64, factors w * alpha [32 * k] Acc, weights [32] Acc.
// Every part is a multiple of 16 bytes, so the parts stay aligned.
MEMREC_HD int64_t StageBytes(int num_hashes, int acc_bytes) {
  return kWarpSize * (static_cast<int64_t>(num_hashes) * (8 + acc_bytes) +
                      acc_bytes);
}

// Warps per block of the lookup kernels (1..8): as many as fit the budget.
MEMREC_HD int LookupWarpsPerBlock(int num_hashes, int acc_bytes) {
  const int64_t warps = kStageBudgetBytes / StageBytes(num_hashes, acc_bytes);
  if (warps < 1) return 1;
  return warps > kMaxWarpsPerBlock ? kMaxWarpsPerBlock : static_cast<int>(warps);
}

// Entries per chunk of a segment of `length` entries: the smallest power of
// two >= max(kMinChunk, sqrt(length)). Integer-only, hence identical on the
// host and every device.
MEMREC_HD int64_t ChunkSize(int64_t length) {
  int64_t size = kMinChunk;
  while (size * size < length) size *= 2;
  return size;
}

MEMREC_HD int64_t ChunkCount(int64_t length) {
  const int64_t size = ChunkSize(length);
  return (length + size - 1) / size;
}

// Upper bound on the total chunk count of `segments` segments holding
// `entries` entries in all (each segment has ceil(L / size) <= 1 + L / 32).
MEMREC_HD int64_t MaxChunks(int64_t segments, int64_t entries) {
  return segments + entries / kMinChunk;
}

// First index i in [0, n) with a[i] > value, or n (a non-decreasing).
MEMREC_HD int64_t UpperBound(const int64_t* a, int64_t n, int64_t value) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] <= value) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

MEMREC_HD int64_t MinI64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---------------------------------------------------------- device helpers

// Copies the signature into shared memory. Every thread of the block calls
// this first (it ends with __syncthreads and no thread has left yet).
__device__ __forceinline__ void LoadSignature(const Signature* __restrict__ src,
                                              Signature* dst) {
  const unsigned long long* from =
      reinterpret_cast<const unsigned long long*>(src);
  unsigned long long* to = reinterpret_cast<unsigned long long*>(dst);
  const int words = static_cast<int>(sizeof(Signature) / 8);
  for (int i = threadIdx.x; i < words; i += blockDim.x) to[i] = from[i];
  __syncthreads();
}

// Warp index over the whole grid and number of warps in the grid.
__device__ __forceinline__ int64_t GlobalWarp() {
  return static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) +
         threadIdx.x / kWarpSize;
}
__device__ __forceinline__ int64_t GridWarps() {
  return static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarpSize);
}
__device__ __forceinline__ int64_t GlobalThread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t GridThreads() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Sum over the 32 lanes by a fixed butterfly: the same order on every run,
// and every lane ends with the same value (IEEE addition is commutative).
template <typename Acc>
__device__ __forceinline__ Acc WarpSum(Acc value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(kFullMask, value, offset);
  }
  return value;
}

// One warp's staging area in the lookup kernels (see StageBytes).
template <typename Acc>
struct Stage {
  int64_t* rows;  // [32 * k] token rows, id j at [j * k, (j + 1) * k)
  Acc* factor;    // [32 * k] w * alpha of slot (j, i)
  Acc* weight;    // [32] w of id j
};

template <typename Acc>
__device__ __forceinline__ Stage<Acc> WarpStage(unsigned char* memory, int warp,
                                                int num_hashes) {
  unsigned char* base =
      memory + warp * StageBytes(num_hashes, static_cast<int>(sizeof(Acc)));
  Stage<Acc> stage;
  stage.rows = reinterpret_cast<int64_t*>(base);
  stage.factor = reinterpret_cast<Acc*>(base + kWarpSize * num_hashes * 8);
  stage.weight = reinterpret_cast<Acc*>(base + kWarpSize * num_hashes *
                                                   (8 + sizeof(Acc)));
  return stage;
}

// Lane j < count hashes the id at flat position first + j and stages its
// token rows, its factors w * alpha_i and its weight w. Ends with __syncwarp,
// after which every lane reads every staged id.
template <typename T, typename Acc>
__device__ __forceinline__ void StageIds(
    const Signature& s, int per_hash, int64_t first, int count, int lane,
    const int64_t* __restrict__ ids, const T* __restrict__ weights,
    const T* __restrict__ weight_table, const Stage<Acc>& stage) {
  if (lane < count) {
    const int k = s.num_hashes;
    const int64_t n = first + lane;
    const int64_t id = ids[n];
    const uint64_t key = PositionKey(s, id, n);
    TokenRows(s, id, key, stage.rows + lane * k);
    int64_t weight_rows[kMaxHashes];
    WeightRows(s, id, key, weight_rows);
    Acc alpha[kMaxHashes];
    Alpha(s, weight_table, per_hash ? k : 1, weight_rows, alpha);
    const Acc w = weights != nullptr ? static_cast<Acc>(weights[n]) : Acc(1);
    for (int i = 0; i < k; ++i) {
      stage.factor[lane * k + i] = w * alpha[per_hash ? i : 0];
    }
    stage.weight[lane] = w;
  }
  __syncwarp();
}

// ------------------------------------------------------------------ forward

// Forward, combiner 'none' (output row n is id n).
// Thread -> data: warp g owns the 32 ids [32 g, 32 g + 32). Phase 1: lane j
// hashes id 32 g + j (one lane per id, so the 64-bit hashing runs on all
// lanes) into the warp's staging area. Phase 2: the warp writes the 32
// output rows one after the other; within a row, lane l computes columns
// l, l + 32, ... (coalesced reads of the k token rows and of the output row).
// Per element: acc = sum_i (w alpha_i) M[h_i][c], in slot order, as the CPU,
// with M[h][c] read by TokenEntry (float(q) * token_scales[h] for int8).
// token_scales: [m] for an int8 Table, else null (never read).
// Block: LookupWarpsPerBlock warps, dynamic shared memory warps * StageBytes.
template <typename T, typename Acc, typename Table = T>
__global__ void LookupIdsKernel(const Signature* __restrict__ signature,
                                int per_hash, int64_t num_ids, int64_t dim,
                                const int64_t* __restrict__ ids,
                                const T* __restrict__ weights,
                                const Table* __restrict__ token_table,
                                const float* __restrict__ token_scales,
                                const T* __restrict__ weight_table,
                                T* __restrict__ output) {
  __shared__ Signature s;
  LoadSignature(signature, &s);
  extern __shared__ __align__(16) unsigned char stage_memory[];
  const int lane = threadIdx.x % kWarpSize;
  const Stage<Acc> stage =
      WarpStage<Acc>(stage_memory, threadIdx.x / kWarpSize, s.num_hashes);
  const int k = s.num_hashes;
  const int64_t groups = (num_ids + kWarpSize - 1) / kWarpSize;
  for (int64_t g = GlobalWarp(); g < groups; g += GridWarps()) {
    const int64_t first = g * kWarpSize;
    const int count = static_cast<int>(MinI64(kWarpSize, num_ids - first));
    StageIds<T, Acc>(s, per_hash, first, count, lane, ids, weights,
                     weight_table, stage);
#pragma unroll 4
    for (int j = 0; j < count; ++j) {
      const int64_t* rows = stage.rows + j * k;
      const Acc* factor = stage.factor + j * k;
      T* out = output + (first + j) * dim;
      for (int64_t c = lane; c < dim; c += kWarpSize) {
        Acc acc = Acc(0);
        for (int i = 0; i < k; ++i) {
          const Acc scale = TokenRowScale<Acc>(token_table, token_scales, rows[i]);
          acc += factor[i] * TokenEntry(token_table[rows[i] * dim + c], scale);
        }
        out[c] = static_cast<T>(acc);
      }
    }
    __syncwarp();  // the staging area is rewritten by the next group
  }
}

// Forward, combiners sum / mean / sqrtn (output row b is bag b).
// Thread -> data: warp b owns bag b. It walks the bag's ids in chunks of 32:
// lane j hashes id j of the chunk into the staging area, then every lane
// adds the chunk's k * count token rows, in id then slot order (the CPU's
// order), to its columns: lane l holds columns c0 + l + 32 q, q < 4, of the
// current 128-column pass in registers (d > 128 takes several passes, each
// re-hashing the bag). The bag's weight sums are taken in the same order by
// every lane, and the pooled row is scale * acc, written once.
// row_splits: [num_bags + 1] in device memory. Token rows are read as in
// LookupIdsKernel (token_scales: [m] for an int8 Table, else null).
template <typename T, typename Acc, typename Table = T>
__global__ void LookupBagsKernel(const Signature* __restrict__ signature,
                                 int combiner, int per_hash, int64_t num_bags,
                                 int64_t dim,
                                 const int64_t* __restrict__ row_splits,
                                 const int64_t* __restrict__ ids,
                                 const T* __restrict__ weights,
                                 const Table* __restrict__ token_table,
                                 const float* __restrict__ token_scales,
                                 const T* __restrict__ weight_table,
                                 T* __restrict__ output) {
  __shared__ Signature s;
  LoadSignature(signature, &s);
  extern __shared__ __align__(16) unsigned char stage_memory[];
  const int lane = threadIdx.x % kWarpSize;
  const Stage<Acc> stage =
      WarpStage<Acc>(stage_memory, threadIdx.x / kWarpSize, s.num_hashes);
  const int k = s.num_hashes;
  for (int64_t b = GlobalWarp(); b < num_bags; b += GridWarps()) {
    const int64_t lo = row_splits[b], hi = row_splits[b + 1];
    T* out = output + b * dim;
    for (int64_t c0 = 0; c0 < dim; c0 += kWarpSize * kColumnsPerLane) {
      Acc acc[kColumnsPerLane];
#pragma unroll
      for (int q = 0; q < kColumnsPerLane; ++q) acc[q] = Acc(0);
      Acc weight_sum = Acc(0), weight_square_sum = Acc(0);
      for (int64_t first = lo; first < hi; first += kWarpSize) {
        const int count = static_cast<int>(MinI64(kWarpSize, hi - first));
        StageIds<T, Acc>(s, per_hash, first, count, lane, ids, weights,
                         weight_table, stage);
        for (int j = 0; j < count; ++j) {
          const Acc w = stage.weight[j];
          weight_sum += w;
          weight_square_sum += w * w;
          for (int i = 0; i < k; ++i) {
            const Acc f = stage.factor[j * k + i];
            const int64_t r = stage.rows[j * k + i];
            const Table* row = token_table + r * dim;
            const Acc scale = TokenRowScale<Acc>(token_table, token_scales, r);
#pragma unroll
            for (int q = 0; q < kColumnsPerLane; ++q) {
              const int64_t c = c0 + lane + kWarpSize * q;
              if (c < dim) acc[q] += f * TokenEntry(row[c], scale);
            }
          }
        }
        __syncwarp();  // the staging area is rewritten by the next chunk
      }
      const Acc scale = BagScale<Acc>(combiner, weight_sum, weight_square_sum);
#pragma unroll
      for (int q = 0; q < kColumnsPerLane; ++q) {
        const int64_t c = c0 + lane + kWarpSize * q;
        if (c < dim) out[c] = static_cast<T>(scale * acc[q]);
      }
    }
  }
}

// MemRecHashRows. Thread -> data: thread n hashes id n and writes its k token
// rows and kw weight rows (rows of the row-major [N, k] / [N, kw] outputs).
__global__ void HashRowsKernel(const Signature* __restrict__ signature,
                               int64_t num_ids, const int64_t* __restrict__ ids,
                               int64_t* __restrict__ token_rows,
                               int64_t* __restrict__ weight_rows) {
  __shared__ Signature s;
  LoadSignature(signature, &s);
  for (int64_t n = GlobalThread(); n < num_ids; n += GridThreads()) {
    const int64_t id = ids[n];
    const uint64_t key = PositionKey(s, id, n);
    TokenRows(s, id, key, token_rows + n * s.num_hashes);
    WeightRows(s, id, key, weight_rows + n * s.num_weight_hashes);
  }
}

// ----------------------------------------------------------------- gradient

// Per bag: the factor turning its weighted sum into its pooled value (only
// for mean and sqrtn; otherwise the host passes bag_scale = nullptr).
// Thread -> data: thread b sums bag b's weights in id order, as the CPU.
template <typename T, typename Acc>
__global__ void BagScaleKernel(int combiner, int64_t num_bags,
                               const int64_t* __restrict__ row_splits,
                               const T* __restrict__ weights,
                               Acc* __restrict__ bag_scale) {
  for (int64_t b = GlobalThread(); b < num_bags; b += GridThreads()) {
    Acc sum = Acc(0), square_sum = Acc(0);
    for (int64_t n = row_splits[b]; n < row_splits[b + 1]; ++n) {
      const Acc w = weights != nullptr ? static_cast<Acc>(weights[n]) : Acc(1);
      sum += w;
      square_sum += w * w;
    }
    bag_scale[b] = BagScale<Acc>(combiner, sum, square_sum);
  }
}

// Everything the gradient needs per id, and the (row, entry) pairs to sort.
// Thread -> data: warp g owns ids [32 g, 32 g + 32). Phase 1: lane j takes id
// n = 32 g + j: its output row (n, or its bag by binary search in
// row_splits), coef = w * bag scale, token rows (token_keys[n k + i], entry
// n k + i), weight rows (weight_keys[n kw + j], entry n kw + j) and alpha
// [width]. Phase 2 (only when kw > 0): for each of the 32 ids in turn the
// warp forms the dot products of the output gradient row with the id's k
// token rows, lane l taking columns l, l + 32, ..., then a butterfly sum;
// dots[n, i] = coef * dot_i (per_hash) or dots[n, 0] = coef * sum_i dot_i.
// row_splits: device [num_bags + 1], unused (may be null) for combiner none.
// bag_scale: [num_bags], or null for scale 1.
template <typename T, typename Acc>
__global__ void GradPrepKernel(
    const Signature* __restrict__ signature, int combiner, int per_hash,
    int64_t num_ids, int64_t num_bags, int64_t dim,
    const int64_t* __restrict__ row_splits, const int64_t* __restrict__ ids,
    const T* __restrict__ weights, const Acc* __restrict__ bag_scale,
    const T* __restrict__ token_table, const T* __restrict__ weight_table,
    const T* __restrict__ grad, int64_t* __restrict__ token_keys,
    int64_t* __restrict__ token_entries, int64_t* __restrict__ weight_keys,
    int64_t* __restrict__ weight_entries, Acc* __restrict__ coef,
    int64_t* __restrict__ out_row, Acc* __restrict__ alpha,
    Acc* __restrict__ dots) {
  __shared__ Signature s;
  LoadSignature(signature, &s);
  const int lane = threadIdx.x % kWarpSize;
  const int k = s.num_hashes, kw = s.num_weight_hashes;
  const int width = per_hash ? k : 1;
  const int64_t groups = (num_ids + kWarpSize - 1) / kWarpSize;
  for (int64_t g = GlobalWarp(); g < groups; g += GridWarps()) {
    const int64_t first = g * kWarpSize;
    const int count = static_cast<int>(MinI64(kWarpSize, num_ids - first));
    if (lane < count) {
      const int64_t n = first + lane;
      const int64_t id = ids[n];
      const uint64_t key = PositionKey(s, id, n);
      const int64_t r =
          combiner == kNone ? n : UpperBound(row_splits, num_bags + 1, n) - 1;
      const Acc scale = bag_scale != nullptr ? bag_scale[r] : Acc(1);
      const Acc w = weights != nullptr ? static_cast<Acc>(weights[n]) : Acc(1);
      coef[n] = w * scale;
      out_row[n] = r;
      TokenRows(s, id, key, token_keys + n * k);
      for (int i = 0; i < k; ++i) token_entries[n * k + i] = n * k + i;
      WeightRows(s, id, key, weight_keys + n * kw);
      for (int j = 0; j < kw; ++j) weight_entries[n * kw + j] = n * kw + j;
      Alpha(s, weight_table, width, weight_keys + n * kw, alpha + n * width);
    }
    __syncwarp();  // phase 2 reads what the other lanes wrote
    if (kw == 0) continue;
    for (int j = 0; j < count; ++j) {
      const int64_t n = first + j;
      const T* g_row = grad + out_row[n] * dim;
      const Acc c_n = coef[n];
      Acc total = Acc(0);
      for (int i = 0; i < k; ++i) {
        const T* row = token_table + token_keys[n * k + i] * dim;
        Acc part = Acc(0);
        for (int64_t c = lane; c < dim; c += kWarpSize) {
          part += static_cast<Acc>(g_row[c]) * static_cast<Acc>(row[c]);
        }
        const Acc dot = WarpSum(part);
        if (per_hash && lane == 0) dots[n * width + i] = c_n * dot;
        total += dot;
      }
      if (!per_hash && lane == 0) dots[n] = c_n * total;
    }
  }
}

// flags[p] = 1 where sorted_keys[p] starts a new row, else 0.
// Thread -> data: thread p, entry p.
__global__ void SegmentFlagsKernel(int64_t num_entries,
                                   const int64_t* __restrict__ sorted_keys,
                                   int64_t* __restrict__ flags) {
  for (int64_t p = GlobalThread(); p < num_entries; p += GridThreads()) {
    flags[p] = (p == 0 || sorted_keys[p] != sorted_keys[p - 1]) ? 1 : 0;
  }
}

// segment_ids: the inclusive scan of the flags (segment index + 1 per
// entry). Writes the distinct rows, ascending, and segment_start[0..U]
// (segment_start[U] = num_entries). Thread -> data: thread p, entry p.
__global__ void SegmentScatterKernel(int64_t num_entries,
                                     const int64_t* __restrict__ sorted_keys,
                                     const int64_t* __restrict__ segment_ids,
                                     int64_t* __restrict__ segment_start,
                                     int64_t* __restrict__ rows) {
  for (int64_t p = GlobalThread(); p < num_entries; p += GridThreads()) {
    if (p == 0 || sorted_keys[p] != sorted_keys[p - 1]) {
      const int64_t g = segment_ids[p] - 1;
      segment_start[g] = p;
      rows[g] = sorted_keys[p];
    }
    if (p == num_entries - 1) segment_start[segment_ids[p]] = num_entries;
  }
}

// chunk_count[g] = ChunkCount(length of segment g) for g < U, and
// chunk_count[U] = 0, so that the exclusive scan of these U + 1 numbers
// gives chunk_start[0..U] with chunk_start[U] = the number of chunks.
// Thread -> data: thread g, segment g.
__global__ void ChunkCountKernel(int64_t num_segments,
                                 const int64_t* __restrict__ segment_start,
                                 int64_t* __restrict__ chunk_count) {
  for (int64_t g = GlobalThread(); g <= num_segments; g += GridThreads()) {
    chunk_count[g] = g < num_segments
                         ? ChunkCount(segment_start[g + 1] - segment_start[g])
                         : 0;
  }
}

// Token-table entries in sorted order: entry e = n k + i (slot i of id n)
// carries factor coef[n] * alpha[n, per_hash ? i : 0] and reads the output
// gradient row out_row[n] (offset out_row[n] * d). Thread p, entry p.
template <typename Acc>
__global__ void TokenEntryMetaKernel(int64_t num_entries, int num_hashes,
                                     int per_hash, int64_t dim,
                                     const int64_t* __restrict__ sorted_entries,
                                     const Acc* __restrict__ coef,
                                     const Acc* __restrict__ alpha,
                                     const int64_t* __restrict__ out_row,
                                     Acc* __restrict__ factor,
                                     int64_t* __restrict__ offset) {
  const int width = per_hash ? num_hashes : 1;
  for (int64_t p = GlobalThread(); p < num_entries; p += GridThreads()) {
    const int64_t e = sorted_entries[p];
    const int64_t n = e / num_hashes;
    const int i = static_cast<int>(e % num_hashes);
    factor[p] = coef[n] * alpha[n * width + (per_hash ? i : 0)];
    offset[p] = out_row[n] * dim;
  }
}

// Weight-table entries in sorted order: entry e = n kw + j adds the row
// dots[n, 0..width) (offset n * width), with factor 1. Thread p, entry p.
__global__ void WeightEntryMetaKernel(int64_t num_entries,
                                      int num_weight_hashes, int width,
                                      const int64_t* __restrict__ sorted_entries,
                                      int64_t* __restrict__ offset) {
  for (int64_t p = GlobalThread(); p < num_entries; p += GridThreads()) {
    offset[p] = (sorted_entries[p] / num_weight_hashes) * width;
  }
}

// Sums each chunk of each segment: entry p contributes
// factor[p] * source[offset[p] + c] (factor null: 1) to column c < cols.
// Thread -> data: warp q owns chunk q (chunks numbered by chunk_start), i.e.
// the sorted entries [start + j size, min(start + (j + 1) size, end)) of its
// segment; it adds them in ascending order, lane l holding columns
// c0 + l + 32 r, r < 4, per 128-column pass. A segment with one chunk is
// written directly to values[g] (type T); otherwise the chunk's sum goes to
// partial[q] (type Acc) for SegmentFinalizeKernel.
// Grid: MaxChunks(U, E) warps at least to cover every chunk in one pass.
template <typename S, typename T, typename Acc>
__global__ void SegmentChunkKernel(int64_t num_segments, int64_t cols,
                                   const int64_t* __restrict__ segment_start,
                                   const int64_t* __restrict__ chunk_start,
                                   const Acc* __restrict__ factor,
                                   const int64_t* __restrict__ offset,
                                   const S* __restrict__ source,
                                   T* __restrict__ values,
                                   Acc* __restrict__ partial) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t num_chunks = chunk_start[num_segments];
  for (int64_t q = GlobalWarp(); q < num_chunks; q += GridWarps()) {
    const int64_t g = UpperBound(chunk_start, num_segments + 1, q) - 1;
    const int64_t begin = segment_start[g], end = segment_start[g + 1];
    const int64_t size = ChunkSize(end - begin);
    const int64_t lo = begin + (q - chunk_start[g]) * size;
    const int64_t hi = MinI64(lo + size, end);
    const bool whole = chunk_start[g + 1] - chunk_start[g] == 1;
    for (int64_t c0 = 0; c0 < cols; c0 += kWarpSize * kColumnsPerLane) {
      Acc acc[kColumnsPerLane];
#pragma unroll
      for (int r = 0; r < kColumnsPerLane; ++r) acc[r] = Acc(0);
#pragma unroll 4
      for (int64_t p = lo; p < hi; ++p) {
        const Acc f = factor != nullptr ? factor[p] : Acc(1);
        const S* x = source + offset[p];
#pragma unroll
        for (int r = 0; r < kColumnsPerLane; ++r) {
          const int64_t c = c0 + lane + kWarpSize * r;
          if (c < cols) acc[r] += f * static_cast<Acc>(x[c]);
        }
      }
#pragma unroll
      for (int r = 0; r < kColumnsPerLane; ++r) {
        const int64_t c = c0 + lane + kWarpSize * r;
        if (c >= cols) continue;
        if (whole) {
          values[g * cols + c] = static_cast<T>(acc[r]);
        } else {
          partial[q * cols + c] = acc[r];
        }
      }
    }
  }
}

// Rows split into several chunks: values[g] = the sum of their partial sums
// in chunk order. Thread -> data: warp g owns segment g (returns at once
// when it has one chunk); lane l takes columns l, l + 32, ...
template <typename T, typename Acc>
__global__ void SegmentFinalizeKernel(int64_t num_segments, int64_t cols,
                                      const int64_t* __restrict__ chunk_start,
                                      const Acc* __restrict__ partial,
                                      T* __restrict__ values) {
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t g = GlobalWarp(); g < num_segments; g += GridWarps()) {
    const int64_t q0 = chunk_start[g], q1 = chunk_start[g + 1];
    if (q1 - q0 <= 1) continue;
    for (int64_t c = lane; c < cols; c += kWarpSize) {
      Acc acc = Acc(0);
#pragma unroll 4
      for (int64_t q = q0; q < q1; ++q) acc += partial[q * cols + c];
      values[g * cols + c] = static_cast<T>(acc);
    }
  }
}

}  // namespace gpu
}  // namespace memrec

#endif  // MEMREC_TF_CUSTOM_OPS_MEMREC_KERNELS_GPU_CUH_
