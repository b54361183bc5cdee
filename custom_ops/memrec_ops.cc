// Registration, shape functions and documentation of the MEM-REC ops.
// Registered in every build; only the GPU kernels depend on GOOGLE_CUDA.
//
// The op names carry no namespace ("Foo>Bar") so that a SavedModel holding
// them is written by model.export() without extra SaveOptions.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

#ifndef MEMREC_BUILD_TAG
#define MEMREC_BUILD_TAG "tensorflow=unknown;cuda=0;sanitized=0"
#endif

// Read from the file (not through dlopen) by memrec_tf/ops.py, to tell which
// TensorFlow this library was built for before trying to load it.
extern "C" __attribute__((used, visibility("default")))
const char memrec_build_tag[] = "MEMREC_BUILD_TAG[" MEMREC_BUILD_TAG "]";

namespace memrec {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// Attributes shared by every op: together they fix which rows a value uses.
#define MEMREC_SIGNATURE_ATTRS                                   \
  Attr("num_hashes: int >= 1")                                   \
      .Attr("num_weight_hashes: int >= 0")                       \
      .Attr("seed: int = 0")                                     \
      .Attr("num_salts: int >= 0 = 0")                           \
      .Attr("vocab_size: int >= 0 = 0")                          \
      .Attr("num_head: int >= 0 = 0")

// How the lookups pool and weigh the rows.
#define MEMREC_POOLING_ATTRS                                        \
  Attr("combiner: {'none', 'sum', 'mean', 'sqrtn'} = 'sum'")        \
      .Attr("weight_mode: {'scalar', 'per_hash'} = 'scalar'")

#define MEMREC_LOOKUP_ATTRS                                         \
  Attr("T: {float, double, half, bfloat16}")                        \
      .MEMREC_SIGNATURE_ATTRS.MEMREC_POOLING_ATTRS

constexpr char kSignatureDoc[] = R"doc(
num_hashes: k, the number of token-table rows per value (1..16).
num_weight_hashes: kw, the number of weight-table rows per value (0..16);
  0 means alpha = 1 and the weight table is not read.
seed: seeds every hash of this table pair.
num_salts: when > 1, the id at flat position p is hashed with salt
  p % num_salts, so that the columns of a dense [B, F] input are F features
  whose equal raw ids do not collide.
vocab_size: when > 0, ids in [0, vocab_size) are dense indices and take
  collision-free mixed-radix signatures; other ids use the random hashes.
num_head: with a vocabulary, ids below num_head each own one token row.
)doc";

// The forward's output [B, d] ([N, d] with combiner 'none'); ids,
// row_splits and weights are inputs 0..2.
Status PooledShape(InferenceContext* c, int table_input, int weight_table_input) {
  ShapeHandle ids, splits, weights, table, weight_table;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &ids));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &splits));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &weights));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(table_input), 2, &table));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(weight_table_input), 2, &weight_table));
  std::string combiner;
  TF_RETURN_IF_ERROR(c->GetAttr("combiner", &combiner));
  DimensionHandle rows = c->Dim(ids, 0);
  if (combiner != "none") {
    TF_RETURN_IF_ERROR(c->Subtract(c->Dim(splits, 0), 1, &rows));
  }
  c->set_output(0, c->Matrix(rows, c->Dim(table, 1)));
  return ::tensorflow::OkStatus();
}

Status LookupShape(InferenceContext* c) { return PooledShape(c, 3, 4); }

// MemRecLookupQuantized: token_scales (input 4) is a vector.
Status QuantizedLookupShape(InferenceContext* c) {
  ShapeHandle scales;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 1, &scales));
  return PooledShape(c, 3, 5);
}

Status LookupGradShape(InferenceContext* c) {
  ShapeHandle table, weight_table;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &table));  // grad
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 2, &table));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(5), 2, &weight_table));
  c->set_output(0, c->Vector(InferenceContext::kUnknownDim));
  c->set_output(1, c->Matrix(InferenceContext::kUnknownDim, c->Dim(table, 1)));
  c->set_output(2, c->Vector(InferenceContext::kUnknownDim));
  c->set_output(3, c->Matrix(InferenceContext::kUnknownDim,
                             c->Dim(weight_table, 1)));
  return ::tensorflow::OkStatus();
}

Status HashRowsShape(InferenceContext* c) {
  ShapeHandle ids;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &ids));
  int64_t k, kw;
  TF_RETURN_IF_ERROR(c->GetAttr("num_hashes", &k));
  TF_RETURN_IF_ERROR(c->GetAttr("num_weight_hashes", &kw));
  c->set_output(0, c->Matrix(c->Dim(ids, 0), k));
  c->set_output(1, c->Matrix(c->Dim(ids, 0), kw));
  return ::tensorflow::OkStatus();
}

REGISTER_OP("MemRecLookup")
    .Input("ids: int64")
    .Input("row_splits: int64")
    .Input("weights: T")
    .Input("token_table: T")
    .Input("weight_table: T")
    .Output("output: T")
    .MEMREC_LOOKUP_ATTRS
    .SetShapeFn(LookupShape)
    .Doc(std::string(R"doc(
Looks up and pools MEM-REC embeddings in one pass over the ids.

For a value x with token rows h_1..h_k and weight rows g_1..g_kw:
  scalar mode:   z(x) = (sum_j W[g_j, 0]) * sum_i M[h_i]
  per_hash mode: z(x) = sum_i (sum_j W[g_j, i]) * M[h_i]
Each bag b (ids[row_splits[b]:row_splits[b+1]]) pools w_n * z(x_n) with the
combiner: sum, mean (divide by the sum of weights) or sqrtn (divide by the
root of the sum of squared weights); an empty bag, or one whose weights sum
to zero, gives zeros. With combiner 'none' every id is its own output row.

ids: [N] values to embed; any int64 value is valid.
row_splits: [B + 1] non-decreasing, starting at 0 and ending at N; must be
  empty when combiner is 'none'.
weights: [N] per-id weights, or [0] for all ones.
token_table: [m, d] the token table M.
weight_table: [m_w, 1] in scalar mode, [m_w, k] in per_hash mode.
output: [B, d], or [N, d] when combiner is 'none'.
)doc") + kSignatureDoc);

REGISTER_OP("MemRecLookupQuantized")
    .Input("ids: int64")
    .Input("row_splits: int64")
    .Input("weights: float")
    .Input("token_table: Q")
    .Input("token_scales: float")
    .Input("weight_table: float")
    .Output("output: float")
    .Attr("Q: {int8, bfloat16}")
    .MEMREC_SIGNATURE_ATTRS.MEMREC_POOLING_ATTRS
    .SetShapeFn(QuantizedLookupShape)
    .Doc(std::string(R"doc(
MemRecLookup on a token table stored for serving in fewer bits (forward only).

The token table is int8 with one float32 scale per row, or bfloat16; its
entry q of row r reads as float(q) * token_scales[r] (int8) or float(q)
(bfloat16), and every sum is taken in float32 as MemRecLookup<float> takes
it, so the output equals MemRecLookup on the float32 table those reads give
(memrec_tf.ops.quantize.round_trip). The weights and the weight table stay
float32. See MemRecLookup for the formula and the other inputs.

token_table: [m, d], int8 or bfloat16.
token_scales: [m] float32 for an int8 table; [0] for a bfloat16 table.
output: [B, d] float32, or [N, d] when combiner is 'none'.
)doc") + kSignatureDoc);

REGISTER_OP("MemRecLookupGrad")
    .Input("grad: T")
    .Input("ids: int64")
    .Input("row_splits: int64")
    .Input("weights: T")
    .Input("token_table: T")
    .Input("weight_table: T")
    .Output("token_rows: int64")
    .Output("token_values: T")
    .Output("weight_rows: int64")
    .Output("weight_values: T")
    .MEMREC_LOOKUP_ATTRS
    .SetShapeFn(LookupGradShape)
    .Doc(std::string(R"doc(
Gradient of MemRecLookup with respect to both tables, as sparse rows.

grad: the gradient of the output of MemRecLookup.
token_rows: [U] the distinct token-table rows touched, ascending.
token_values: [U, d] the gradient of each of those rows (duplicates summed).
weight_rows: [Uw] the distinct weight-table rows touched, ascending.
weight_values: [Uw, width] their gradients.
The other inputs and attributes are those of the forward op.
)doc") + kSignatureDoc);

Status LookupDenseGradShape(InferenceContext* c) {
  ShapeHandle unused, table, weight_table;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &unused));  // grad
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 2, &table));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(5), 2, &weight_table));
  c->set_output(0, table);
  c->set_output(1, weight_table);
  return ::tensorflow::OkStatus();
}

REGISTER_OP("MemRecLookupGradDense")
    .Input("grad: T")
    .Input("ids: int64")
    .Input("row_splits: int64")
    .Input("weights: T")
    .Input("token_table: T")
    .Input("weight_table: T")
    .Output("token_grad: T")
    .Output("weight_grad: T")
    .MEMREC_LOOKUP_ATTRS
    .SetShapeFn(LookupDenseGradShape)
    .Doc(std::string(R"doc(
Gradient of MemRecLookup with respect to both tables, as dense tensors.

The sums of MemRecLookupGrad, in the same order, written into table-shaped
outputs (rows no id touched are zero). Cheaper than the sparse form when
most rows of a small table are touched, and what optimizers that densify a
sparse gradient (those of Keras 3) use as is. CPU kernel only.

grad: the gradient of the output of MemRecLookup.
token_grad: [m, d] the gradient of the token table.
weight_grad: [m_w, width] the gradient of the weight table.
The other inputs and attributes are those of the forward op.
)doc") + kSignatureDoc);

// The weight table's gradient: the shape of input 5.
Status LookupGradApplyShape(InferenceContext* c) {
  ShapeHandle unused, weight_table;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &unused));  // grad
  TF_RETURN_IF_ERROR(c->WithRank(c->input(5), 2, &weight_table));
  c->set_output(0, weight_table);
  return ::tensorflow::OkStatus();
}

REGISTER_OP("MemRecLookupGradApply")
    .Input("grad: float")
    .Input("ids: int64")
    .Input("row_splits: int64")
    .Input("weights: float")
    .Input("token_table: resource")
    .Input("weight_table: float")
    .Input("slots: num_slots * resource")
    .Input("learning_rate: float")
    .Output("weight_grad: float")
    .Attr("optimizer: {'sgd', 'adagrad', 'adam'}")
    .Attr("num_slots: int >= 0")
    .Attr("epsilon: float = 1e-7")
    .Attr("one_minus_beta_1: float = 0.1")
    .Attr("one_minus_beta_2: float = 0.001")
    .MEMREC_SIGNATURE_ATTRS.MEMREC_POOLING_ATTRS
    .SetShapeFn(LookupGradApplyShape)
    .Doc(std::string(R"doc(
Applies the token table's gradient of MemRecLookup to the token table in
place, and returns the weight table's gradient.

The token table's gradient is summed per row as MemRecLookupGradDense sums
it, and never written out: each touched row is updated as soon as its sum
is complete, with the formulas of Keras' optimizers:
  sgd:      table[r] -= grad[r] * learning_rate
  adagrad:  slots[0][r] += grad[r]^2
            table[r] -= learning_rate * grad[r] / sqrt(slots[0][r] + epsilon)
  adam:     slots[0][r] += (grad[r] - slots[0][r]) * one_minus_beta_1
            slots[1][r] += (grad[r]^2 - slots[1][r]) * one_minus_beta_2
            table[r] -= slots[0][r] * learning_rate / (sqrt(slots[1][r]) + epsilon)
sgd and adagrad leave the rows no id touched as they are (their gradient is
zero, so the formulas would too); adam updates every row, as Keras' Adam
does, the untouched ones with a zero gradient. The weight table's gradient (whose
dot products read the token table before the update) is returned for the
model's optimizer. float32 tables, CPU kernel only.

grad: the gradient of the output of MemRecLookup.
token_table: the float32 [m, d] variable that MemRecLookup read.
slots: the optimizer's state, each a float32 [m, d] variable: none for sgd,
  the accumulator for adagrad, the first and second moments for adam.
learning_rate: the step size, a scalar; for adam the bias-corrected one,
  lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) at step t.
optimizer: the update applied, 'sgd', 'adagrad' or 'adam'.
num_slots: 0 for sgd, 1 for adagrad, 2 for adam.
epsilon: adagrad's and adam's epsilon.
one_minus_beta_1, one_minus_beta_2: adam's 1 - beta_1 and 1 - beta_2.
weight_grad: [m_w, width] the gradient of the weight table.
The other inputs and attributes are those of the forward op.
)doc") + kSignatureDoc);

REGISTER_OP("MemRecHashRows")
    .Input("ids: int64")
    .Output("token_rows: int64")
    .Output("weight_rows: int64")
    .MEMREC_SIGNATURE_ATTRS
    .Attr("num_token_rows: int >= 1")
    .Attr("num_weight_rows: int >= 0")
    .SetShapeFn(HashRowsShape)
    .Doc(std::string(R"doc(
The rows that MemRecLookup reads for each id (for inspection and tests).

ids: [N] values, position p hashed with salt p % num_salts.
token_rows: [N, num_hashes] rows of the token table.
weight_rows: [N, num_weight_hashes] rows of the weight table.
num_token_rows: m, the number of rows of the token table.
num_weight_rows: m_w, the number of rows of the weight table.
)doc") + kSignatureDoc);

}  // namespace memrec
