// Device functors of the MEM-REC ops. The OpKernels in memrec_kernels.cc
// validate the inputs, then call the functor of their device: the CPU one is
// defined in memrec_kernels.cc, the GPU one in memrec_kernels_gpu.cu.cc.
#ifndef MEMREC_TF_CUSTOM_OPS_MEMREC_FUNCTORS_H_
#define MEMREC_TF_CUSTOM_OPS_MEMREC_FUNCTORS_H_

#include "memrec_math.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace memrec {

// Accumulation type of the kernels: float for float, half and bfloat16;
// double for double.
template <typename T>
struct AccumulatorOf {
  using type = float;
};
template <>
struct AccumulatorOf<double> {
  using type = double;
};

// Inputs of one lookup, already validated. Pointers are in the functor's
// device memory, except row_splits, which is always in host memory (the GPU
// kernels declare it HostMemory and copy it over themselves).
//
// T is the type of the weights, the weight table and the output; Table that
// of the token table: T itself (MemRecLookup), or a serving format of
// MemRecLookupQuantized with T = float (int8 with a float scale per row, or
// bfloat16), whose rows are read as float(q) * scale[r] or float(q).
template <typename T, typename Table = T>
struct LookupArgs {
  Signature signature;
  int combiner;                // Combiner
  bool per_hash;               // weight_mode == "per_hash"
  int64_t num_ids;             // N
  int64_t num_rows;            // output rows: bags, or N with combiner none
  int64_t dim;                 // d
  int weight_width;            // 1 or num_hashes
  const int64_t* ids;          // [N]
  const int64_t* row_splits;   // [num_rows + 1], unused with combiner none
  const T* weights;            // [N], or nullptr for all ones
  const Table* token_table;    // [m, d]
  const float* token_scales = nullptr;  // [m] for an int8 table, else null
  const T* weight_table;       // [m_w, weight_width]
};

template <typename Device, typename T, typename Table = T>
struct LookupFunctor {
  // Writes output [num_rows, dim].
  ::tensorflow::Status operator()(::tensorflow::OpKernelContext* ctx,
                                  const LookupArgs<T, Table>& args, T* output);
};

template <typename Device, typename T>
struct LookupGradFunctor {
  // grad: [num_rows, dim]. Allocates and writes outputs 0..3 of
  // MemRecLookupGrad (distinct rows ascending, gradients summed per row).
  ::tensorflow::Status operator()(::tensorflow::OpKernelContext* ctx,
                                  const LookupArgs<T>& args, const T* grad);
};

template <typename Device>
struct HashRowsFunctor {
  // token_rows: [N, num_hashes], weight_rows: [N, num_weight_hashes].
  ::tensorflow::Status operator()(::tensorflow::OpKernelContext* ctx,
                                  const Signature& signature,
                                  const int64_t* ids, int64_t num_ids,
                                  int64_t* token_rows, int64_t* weight_rows);
};

}  // namespace memrec

#endif  // MEMREC_TF_CUSTOM_OPS_MEMREC_FUNCTORS_H_
