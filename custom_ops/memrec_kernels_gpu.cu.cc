// GPU functors of the MEM-REC ops: the host side that sizes, allocates and
// launches the kernels of memrec_kernels_gpu.cuh on the op's stream.
//
// Host <-> device traffic per call:
//  - the Signature (under 1 KiB) and, for bags, row_splits (declared
//    HostMemory by the kernel registrations) are copied to the device with
//    cudaMemcpyAsync from pageable host memory, which returns once the
//    source has been read, so the host buffers may go away afterwards;
//  - the gradient reads back the number of distinct token and weight rows
//    (16 bytes) and synchronises the stream once: the sizes of its outputs
//    depend on them, as in TensorFlow's own Unique and Where kernels. The
//    forward pass and MemRecHashRows never synchronise.
// Temporary buffers come from ctx->allocate_temp; TensorFlow's GPU allocator
// is ordered on the compute stream, so releasing them when Compute returns
// is safe while the kernels are still queued.
//
// Determinism: no atomics anywhere; sorting is CUB's stable radix sort of
// (row, entry index) pairs, and every sum runs in an order fixed by the
// inputs (see memrec_kernels_gpu.cuh), so results are bitwise reproducible
// and tf.config.experimental.enable_op_determinism() is satisfied.
#if GOOGLE_CUDA

#define EIGEN_USE_GPU

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <utility>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "memrec_functors.h"
#include "memrec_kernels_gpu.cuh"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"

namespace memrec {

using GPUDevice = Eigen::GpuDevice;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
namespace errors = ::tensorflow::errors;

namespace {

Status CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return ::tensorflow::OkStatus();
  cudaGetLastError();  // clear the error so that it is not reported twice
  return errors::Internal("MemRec GPU kernel: ", what, " failed: ",
                          cudaGetErrorName(error), ": ",
                          cudaGetErrorString(error));
}

template <typename... Params, std::size_t... I>
Status LaunchPacked(const char* what, void (*kernel)(Params...), int64_t blocks,
                    int threads, std::size_t shared_bytes, cudaStream_t stream,
                    std::tuple<Params...>& params, std::index_sequence<I...>) {
  void* pointers[] = {static_cast<void*>(&std::get<I>(params))...};
  return CudaStatus(
      cudaLaunchKernel(reinterpret_cast<const void*>(kernel),
                       dim3(static_cast<unsigned>(blocks)), dim3(threads),
                       pointers, shared_bytes, stream),
      what);
}

// Launches `kernel` on `blocks` x `threads` and returns the launch's own
// status (cudaLaunchKernel reports this launch, not an earlier error).
// Arguments are converted to the kernel's exact parameter types first.
// blocks == 0 (empty input) launches nothing.
template <typename... Params, typename... Args>
Status Launch(const char* what, void (*kernel)(Params...), int64_t blocks,
              int threads, std::size_t shared_bytes, cudaStream_t stream,
              Args... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "argument count");
  if (blocks <= 0) return ::tensorflow::OkStatus();
  std::tuple<Params...> params(static_cast<Params>(args)...);
  return LaunchPacked(what, kernel, blocks, threads, shared_bytes, stream,
                      params, std::index_sequence_for<Params...>{});
}

// A temporary buffer of `count` elements of E (at least one byte, so that
// the pointer is valid even when empty).
template <typename E>
Status AllocateScratch(OpKernelContext* ctx, int64_t count, Tensor* holder,
                       E** data) {
  const int64_t bytes =
      std::max<int64_t>(1, count * static_cast<int64_t>(sizeof(E)));
  TF_RETURN_IF_ERROR(ctx->allocate_temp(::tensorflow::DT_INT8,
                                        TensorShape({bytes}), holder));
  *data = reinterpret_cast<E*>(holder->flat<int8_t>().data());
  return ::tensorflow::OkStatus();
}

Status CopyToDevice(void* device, const void* host, int64_t bytes,
                    cudaStream_t stream, const char* what) {
  if (bytes == 0) return ::tensorflow::OkStatus();
  return CudaStatus(
      cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream),
      what);
}

Status SignatureToDevice(OpKernelContext* ctx, const Signature& signature,
                         cudaStream_t stream, Tensor* holder,
                         const Signature** device) {
  Signature* data = nullptr;
  TF_RETURN_IF_ERROR(AllocateScratch(ctx, 1, holder, &data));
  TF_RETURN_IF_ERROR(CopyToDevice(data, &signature, sizeof(Signature), stream,
                                  "copying the signature to the device"));
  *device = data;
  return ::tensorflow::OkStatus();
}

// Number of significant bits of the largest key (>= 1): radix sort passes.
int KeyBits(int64_t table_rows) {
  int bits = 1;
  while (bits < 63 && (int64_t{1} << bits) < table_rows) ++bits;
  return bits;
}

// Sorted (row, entry) pairs and the segments of equal rows in them.
struct Segments {
  int64_t num_entries = 0;
  int64_t* sorted_keys = nullptr;
  int64_t* sorted_entries = nullptr;
  int64_t* segment_ids = nullptr;  // inclusive scan of the start flags
  Tensor keys_holder, entries_holder, ids_holder;
};

// Stable radix sort of the pairs by row, then flags and their inclusive
// scan. The count of distinct rows is segment_ids[num_entries - 1].
Status SortIntoSegments(OpKernelContext* ctx, cudaStream_t stream,
                        int64_t num_entries, int64_t table_rows,
                        const int64_t* keys, const int64_t* entries,
                        Segments* out) {
  out->num_entries = num_entries;
  if (num_entries == 0) return ::tensorflow::OkStatus();
  TF_RETURN_IF_ERROR(
      AllocateScratch(ctx, num_entries, &out->keys_holder, &out->sorted_keys));
  TF_RETURN_IF_ERROR(AllocateScratch(ctx, num_entries, &out->entries_holder,
                                     &out->sorted_entries));
  TF_RETURN_IF_ERROR(
      AllocateScratch(ctx, num_entries, &out->ids_holder, &out->segment_ids));
  // Rows are in [0, table_rows): sort them as unsigned keys over their
  // significant bits only. The sort is stable and the entries go in
  // ascending, so each row's entries stay in ascending order.
  const auto* keys_in = reinterpret_cast<const unsigned long long*>(keys);
  auto* keys_out = reinterpret_cast<unsigned long long*>(out->sorted_keys);
  const int end_bit = KeyBits(table_rows);
  std::size_t sort_bytes = 0, scan_bytes = 0;
  TF_RETURN_IF_ERROR(CudaStatus(
      cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys_in, keys_out,
                                      entries, out->sorted_entries, num_entries,
                                      0, end_bit, stream),
      "sizing the radix sort"));
  int64_t* flags = out->segment_ids;  // scanned in place
  TF_RETURN_IF_ERROR(CudaStatus(
      cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, flags, flags,
                                    num_entries, stream),
      "sizing the segment scan"));
  Tensor temp_holder;
  unsigned char* temp = nullptr;
  const std::size_t temp_bytes = std::max(sort_bytes, scan_bytes);
  TF_RETURN_IF_ERROR(AllocateScratch(ctx, temp_bytes, &temp_holder, &temp));
  TF_RETURN_IF_ERROR(CudaStatus(
      cub::DeviceRadixSort::SortPairs(temp, sort_bytes, keys_in, keys_out,
                                      entries, out->sorted_entries, num_entries,
                                      0, end_bit, stream),
      "radix sort of the table rows"));
  const int threads = gpu::kThreadsPerBlock;
  TF_RETURN_IF_ERROR(Launch("SegmentFlagsKernel", gpu::SegmentFlagsKernel,
                            gpu::BlocksFor(num_entries, threads), threads, 0,
                            stream, num_entries, out->sorted_keys, flags));
  return CudaStatus(cub::DeviceScan::InclusiveSum(temp, scan_bytes, flags,
                                                  flags, num_entries, stream),
                    "segment scan");
}

// Sums, per distinct row, the entries of `segments` (entry p contributes
// factor[p] * source[offset[p] + c], factor null meaning 1) into
// values[U, cols], and writes the distinct rows ascending into rows[U].
// `fill_meta(factor, offset)` launches the kernel that fills the per-entry
// factor (if any) and offset in sorted order.
template <typename S, typename T, typename Acc, typename FillMeta>
Status ReduceSegments(OpKernelContext* ctx, cudaStream_t stream,
                      const Segments& segments, int64_t num_segments,
                      int64_t cols, bool with_factor, const S* source,
                      int64_t* rows, T* values, FillMeta fill_meta) {
  const int64_t e = segments.num_entries;
  if (e == 0) return ::tensorflow::OkStatus();
  const int threads = gpu::kThreadsPerBlock;
  const int warps = gpu::kMaxWarpsPerBlock;
  Tensor start_holder, count_holder, chunk_holder, factor_holder,
      offset_holder, partial_holder, temp_holder;
  int64_t *segment_start, *chunk_count, *chunk_start, *offset;
  Acc* factor = nullptr;
  TF_RETURN_IF_ERROR(
      AllocateScratch(ctx, num_segments + 1, &start_holder, &segment_start));
  TF_RETURN_IF_ERROR(
      AllocateScratch(ctx, num_segments + 1, &count_holder, &chunk_count));
  TF_RETURN_IF_ERROR(
      AllocateScratch(ctx, num_segments + 1, &chunk_holder, &chunk_start));
  TF_RETURN_IF_ERROR(AllocateScratch(ctx, e, &offset_holder, &offset));
  if (with_factor) {
    TF_RETURN_IF_ERROR(AllocateScratch(ctx, e, &factor_holder, &factor));
  }
  TF_RETURN_IF_ERROR(Launch(
      "SegmentScatterKernel", gpu::SegmentScatterKernel,
      gpu::BlocksFor(e, threads), threads, 0, stream, e, segments.sorted_keys,
      segments.segment_ids, segment_start, rows));
  TF_RETURN_IF_ERROR(Launch("ChunkCountKernel", gpu::ChunkCountKernel,
                            gpu::BlocksFor(num_segments + 1, threads), threads,
                            0, stream, num_segments, segment_start,
                            chunk_count));
  std::size_t scan_bytes = 0;
  TF_RETURN_IF_ERROR(CudaStatus(
      cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, chunk_count,
                                    chunk_start, num_segments + 1, stream),
      "sizing the chunk scan"));
  unsigned char* temp = nullptr;
  TF_RETURN_IF_ERROR(AllocateScratch(ctx, scan_bytes, &temp_holder, &temp));
  TF_RETURN_IF_ERROR(CudaStatus(
      cub::DeviceScan::ExclusiveSum(temp, scan_bytes, chunk_count, chunk_start,
                                    num_segments + 1, stream),
      "chunk scan"));
  TF_RETURN_IF_ERROR(fill_meta(factor, offset));
  if (cols == 0) return ::tensorflow::OkStatus();
  // Partial sums of the rows that take several chunks; the exact chunk count
  // stays on the device, MaxChunks bounds it from the sizes known here.
  const int64_t max_chunks = gpu::MaxChunks(num_segments, e);
  Acc* partial = nullptr;
  TF_RETURN_IF_ERROR(
      AllocateScratch(ctx, max_chunks * cols, &partial_holder, &partial));
  TF_RETURN_IF_ERROR(Launch(
      "SegmentChunkKernel", gpu::SegmentChunkKernel<S, T, Acc>,
      gpu::BlocksFor(max_chunks, warps), threads, 0, stream, num_segments, cols,
      segment_start, chunk_start, factor, offset, source, values, partial));
  return Launch("SegmentFinalizeKernel", gpu::SegmentFinalizeKernel<T, Acc>,
                gpu::BlocksFor(num_segments, warps), threads, 0, stream,
                num_segments, cols, chunk_start, partial, values);
}

}  // namespace

// ------------------------------------------------------------------ forward

template <typename T, typename Table>
struct LookupFunctor<GPUDevice, T, Table> {
  Status operator()(OpKernelContext* ctx, const LookupArgs<T, Table>& a,
                    T* output) {
    using Acc = typename AccumulatorOf<T>::type;
    if (a.num_rows == 0 || a.dim == 0) return ::tensorflow::OkStatus();
    const cudaStream_t stream = ctx->eigen_gpu_device().stream();
    const int k = a.signature.num_hashes;
    Tensor signature_holder, splits_holder;
    const Signature* signature = nullptr;
    TF_RETURN_IF_ERROR(
        SignatureToDevice(ctx, a.signature, stream, &signature_holder, &signature));
    const int warps = gpu::LookupWarpsPerBlock(k, sizeof(Acc));
    const int threads = warps * gpu::kWarpSize;
    const std::size_t shared = warps * gpu::StageBytes(k, sizeof(Acc));
    const int per_hash = a.per_hash ? 1 : 0;
    if (a.combiner == kNone) {
      const int64_t groups = (a.num_ids + gpu::kWarpSize - 1) / gpu::kWarpSize;
      return Launch("LookupIdsKernel", gpu::LookupIdsKernel<T, Acc, Table>,
                    gpu::BlocksFor(groups, warps), threads, shared, stream,
                    signature, per_hash, a.num_ids, a.dim, a.ids, a.weights,
                    a.token_table, a.token_scales, a.weight_table, output);
    }
    int64_t* splits = nullptr;
    TF_RETURN_IF_ERROR(
        AllocateScratch(ctx, a.num_rows + 1, &splits_holder, &splits));
    TF_RETURN_IF_ERROR(CopyToDevice(splits, a.row_splits,
                                    (a.num_rows + 1) * sizeof(int64_t), stream,
                                    "copying row_splits to the device"));
    return Launch("LookupBagsKernel", gpu::LookupBagsKernel<T, Acc, Table>,
                  gpu::BlocksFor(a.num_rows, warps), threads, shared, stream,
                  signature, a.combiner, per_hash, a.num_rows, a.dim, splits,
                  a.ids, a.weights, a.token_table, a.token_scales,
                  a.weight_table, output);
  }
};

// ----------------------------------------------------------------- gradient

template <typename T>
struct LookupGradFunctor<GPUDevice, T> {
  Status operator()(OpKernelContext* ctx, const LookupArgs<T>& a,
                    const T* grad) {
    using Acc = typename AccumulatorOf<T>::type;
    const Signature& sig = a.signature;
    const int k = sig.num_hashes, kw = sig.num_weight_hashes;
    const int width = a.weight_width;
    const int64_t n = a.num_ids, d = a.dim;
    const int per_hash = a.per_hash ? 1 : 0;
    const cudaStream_t stream = ctx->eigen_gpu_device().stream();
    const int threads = gpu::kThreadsPerBlock;
    const int warps = gpu::kMaxWarpsPerBlock;

    Tensor* token_rows = nullptr;
    Tensor* token_values = nullptr;
    Tensor* weight_rows = nullptr;
    Tensor* weight_values = nullptr;
    if (n == 0) {  // nothing touched: four empty outputs, no launch
      TF_RETURN_IF_ERROR(ctx->allocate_output(0, TensorShape({0}), &token_rows));
      TF_RETURN_IF_ERROR(
          ctx->allocate_output(1, TensorShape({0, d}), &token_values));
      TF_RETURN_IF_ERROR(ctx->allocate_output(2, TensorShape({0}), &weight_rows));
      return ctx->allocate_output(3, TensorShape({0, width}), &weight_values);
    }

    Tensor signature_holder;
    const Signature* signature = nullptr;
    TF_RETURN_IF_ERROR(
        SignatureToDevice(ctx, sig, stream, &signature_holder, &signature));
    int64_t* splits = nullptr;
    Tensor splits_holder, scale_holder;
    Acc* bag_scale = nullptr;
    if (a.combiner != kNone) {
      TF_RETURN_IF_ERROR(
          AllocateScratch(ctx, a.num_rows + 1, &splits_holder, &splits));
      TF_RETURN_IF_ERROR(CopyToDevice(splits, a.row_splits,
                                      (a.num_rows + 1) * sizeof(int64_t),
                                      stream, "copying row_splits to the device"));
      if (a.combiner == kMean || a.combiner == kSqrtn) {
        TF_RETURN_IF_ERROR(
            AllocateScratch(ctx, a.num_rows, &scale_holder, &bag_scale));
        TF_RETURN_IF_ERROR(Launch(
            "BagScaleKernel", gpu::BagScaleKernel<T, Acc>,
            gpu::BlocksFor(a.num_rows, threads), threads, 0, stream,
            a.combiner, a.num_rows, splits, a.weights, bag_scale));
      }
    }

    // Per id and per entry: see GradPrepKernel.
    Tensor holders[8];
    int64_t *token_keys, *token_entries, *weight_keys, *weight_entries, *out_row;
    Acc *coef, *alpha, *dots = nullptr;
    TF_RETURN_IF_ERROR(AllocateScratch(ctx, n * k, &holders[0], &token_keys));
    TF_RETURN_IF_ERROR(AllocateScratch(ctx, n * k, &holders[1], &token_entries));
    TF_RETURN_IF_ERROR(AllocateScratch(ctx, n * kw, &holders[2], &weight_keys));
    TF_RETURN_IF_ERROR(
        AllocateScratch(ctx, n * kw, &holders[3], &weight_entries));
    TF_RETURN_IF_ERROR(AllocateScratch(ctx, n, &holders[4], &out_row));
    TF_RETURN_IF_ERROR(AllocateScratch(ctx, n, &holders[5], &coef));
    TF_RETURN_IF_ERROR(AllocateScratch(ctx, n * width, &holders[6], &alpha));
    if (kw > 0) {
      TF_RETURN_IF_ERROR(AllocateScratch(ctx, n * width, &holders[7], &dots));
    }
    const int64_t groups = (n + gpu::kWarpSize - 1) / gpu::kWarpSize;
    TF_RETURN_IF_ERROR(Launch(
        "GradPrepKernel", gpu::GradPrepKernel<T, Acc>,
        gpu::BlocksFor(groups, warps), threads, 0, stream, signature,
        a.combiner, per_hash, n, a.num_rows, d, splits, a.ids, a.weights,
        bag_scale, a.token_table, a.weight_table, grad, token_keys,
        token_entries, weight_keys, weight_entries, coef, out_row, alpha, dots));

    Segments token, weight;
    TF_RETURN_IF_ERROR(SortIntoSegments(ctx, stream, n * k, sig.num_token_rows,
                                        token_keys, token_entries, &token));
    TF_RETURN_IF_ERROR(SortIntoSegments(ctx, stream, n * kw,
                                        sig.num_weight_rows, weight_keys,
                                        weight_entries, &weight));

    // The one synchronisation: the numbers of distinct rows size the outputs.
    Tensor counts_holder;
    int64_t* counts_device = nullptr;
    TF_RETURN_IF_ERROR(AllocateScratch(ctx, 2, &counts_holder, &counts_device));
    TF_RETURN_IF_ERROR(CudaStatus(
        cudaMemsetAsync(counts_device, 0, 2 * sizeof(int64_t), stream),
        "clearing the row counts"));
    if (token.num_entries > 0) {
      TF_RETURN_IF_ERROR(CudaStatus(
          cudaMemcpyAsync(counts_device, token.segment_ids + token.num_entries - 1,
                          sizeof(int64_t), cudaMemcpyDeviceToDevice, stream),
          "reading the token row count"));
    }
    if (weight.num_entries > 0) {
      TF_RETURN_IF_ERROR(CudaStatus(
          cudaMemcpyAsync(counts_device + 1,
                          weight.segment_ids + weight.num_entries - 1,
                          sizeof(int64_t), cudaMemcpyDeviceToDevice, stream),
          "reading the weight row count"));
    }
    int64_t counts[2] = {0, 0};
    TF_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(counts, counts_device, sizeof(counts),
                        cudaMemcpyDeviceToHost, stream),
        "copying the row counts to the host"));
    TF_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream),
                                  "waiting for the row counts"));
    const int64_t u = counts[0], uw = counts[1];

    TF_RETURN_IF_ERROR(ctx->allocate_output(0, TensorShape({u}), &token_rows));
    TF_RETURN_IF_ERROR(
        ctx->allocate_output(1, TensorShape({u, d}), &token_values));
    TF_RETURN_IF_ERROR(ctx->allocate_output(2, TensorShape({uw}), &weight_rows));
    TF_RETURN_IF_ERROR(
        ctx->allocate_output(3, TensorShape({uw, width}), &weight_values));

    const int64_t e = n * k;
    TF_RETURN_IF_ERROR(ReduceSegments<T, T, Acc>(
        ctx, stream, token, u, d, /*with_factor=*/true, grad,
        token_rows->flat<int64_t>().data(), token_values->flat<T>().data(),
        [&](Acc* factor, int64_t* offset) {
          return Launch("TokenEntryMetaKernel", gpu::TokenEntryMetaKernel<Acc>,
                        gpu::BlocksFor(e, threads), threads, 0, stream, e, k,
                        per_hash, d, token.sorted_entries, coef, alpha, out_row,
                        factor, offset);
        }));
    const int64_t ew = n * kw;
    return ReduceSegments<Acc, T, Acc>(
        ctx, stream, weight, uw, width, /*with_factor=*/false, dots,
        weight_rows->flat<int64_t>().data(), weight_values->flat<T>().data(),
        [&](Acc*, int64_t* offset) {
          return Launch("WeightEntryMetaKernel", gpu::WeightEntryMetaKernel,
                        gpu::BlocksFor(ew, threads), threads, 0, stream, ew, kw,
                        width, weight.sorted_entries, offset);
        });
  }
};

// ---------------------------------------------------------------- hash rows

// A full specialization: its operator() is defined out of line below, so it
// is an ordinary (non-inline) function that this file always emits.
template <>
struct HashRowsFunctor<GPUDevice> {
  Status operator()(OpKernelContext* ctx, const Signature& signature,
                    const int64_t* ids, int64_t num_ids, int64_t* token_rows,
                    int64_t* weight_rows);
};

Status HashRowsFunctor<GPUDevice>::operator()(
    OpKernelContext* ctx, const Signature& signature, const int64_t* ids,
    int64_t num_ids, int64_t* token_rows, int64_t* weight_rows) {
  if (num_ids == 0) return ::tensorflow::OkStatus();
  const cudaStream_t stream = ctx->eigen_gpu_device().stream();
  Tensor signature_holder;
  const Signature* device_signature = nullptr;
  TF_RETURN_IF_ERROR(SignatureToDevice(ctx, signature, stream,
                                       &signature_holder, &device_signature));
  const int threads = gpu::kThreadsPerBlock;
  return Launch("HashRowsKernel", gpu::HashRowsKernel,
                gpu::BlocksFor(num_ids, threads), threads, 0, stream,
                device_signature, num_ids, ids, token_rows, weight_rows);
}

#define MEMREC_INSTANTIATE_GPU(T)                     \
  template struct LookupFunctor<GPUDevice, T>;        \
  template struct LookupGradFunctor<GPUDevice, T>;
MEMREC_INSTANTIATE_GPU(float);
MEMREC_INSTANTIATE_GPU(double);
MEMREC_INSTANTIATE_GPU(Eigen::half);
MEMREC_INSTANTIATE_GPU(Eigen::bfloat16);
#undef MEMREC_INSTANTIATE_GPU
// MemRecLookupQuantized: float sums of int8 (scaled) or bfloat16 token rows.
template struct LookupFunctor<GPUDevice, float, int8_t>;
template struct LookupFunctor<GPUDevice, float, Eigen::bfloat16>;

}  // namespace memrec

#endif  // GOOGLE_CUDA
