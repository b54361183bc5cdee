"""A MEM-REC lookup whose backward pass updates its token table (see
`memrec_tf.optimizers`).

Two paths, chosen when the gradient is built (under `tf.function`, when
the step is traced):

* the fused kernel (MemRecLookupGradApply; CPU, float32, one replica, and
  tables whose gradient would be dense: see `table_gradients`): the token
  table's gradient is summed per row and applied in place, never written
  out;
* everywhere else (the built-in-ops implementation, a GPU, more than one
  replica, larger tables): the gradient is computed as the lookup's own
  gradient (for a large table `tf.IndexedSlices` of the touched rows),
  summed over the replicas, and applied with `EmbeddingOptimizer.apply`,
  which then updates only the touched rows.

Either way the weight table's gradient is returned for the model's
optimizer, and the step counter that a learning-rate schedule reads goes
up by one.
"""
import tensorflow as tf

from memrec_tf.ops import core, fused, table_gradients


def _replicas():
    """The replica context's number of replicas in sync (1 outside a strategy)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def uses_fused_kernel(token_table, weight_table, fused_op):
    """True when the update runs in MemRecLookupGradApply (see the module).

    Its scratch block is table-sized, as a dense gradient is: the kernel is
    used where a dense gradient would be (`table_gradients.use_dense`: at
    most 64 MiB of tables, no GPU, or `gradient_format("dense")`)."""
    return (fused_op and token_table.dtype == tf.float32 and _replicas() == 1
            and table_gradients.use_dense(token_table, weight_table))


def lookup_and_update(ids, row_splits, weights, token_table, weight_table, signature,
                      optimizer, slots, iterations, combiner, weight_mode, fused_op):
    """The lookup of `fused.lookup` (fused_op) or `core.lookup`, whose gradient
    applies `optimizer` to the `token_table` variable.

    Args:
      ids, row_splits, weights, signature, combiner, weight_mode: those of
        `fused.lookup`.
      token_table: the token table's tf.Variable (float32 for the fused kernel;
        under a strategy of several replicas, with aggregation
        ONLY_FIRST_REPLICA: every replica applies the same summed update).
      weight_table: the weight table, a tensor: its gradient is returned.
      optimizer: a `memrec_tf.optimizers.EmbeddingOptimizer`.
      slots: its slot variables, in `optimizer.slot_names` order.
      iterations: int64 tf.Variable, the number of updates applied.
      fused_op: True for the fused op's lookup, False for the built-in ops'.

    Returns:
      The lookup's output, as `fused.lookup` returns it.
    """
    lookup = fused.lookup if fused_op else core.lookup
    args = dict(combiner=combiner, weight_mode=weight_mode)

    @tf.custom_gradient
    def forward(weight_values):
        table = tf.convert_to_tensor(token_table)
        if uses_fused_kernel(token_table, weight_values, fused_op):
            out = lookup(ids, row_splits, weights, table, weight_values, signature, **args)

            def gradient(upstream):
                weight_grad = fused.lookup_grad_apply(
                    upstream, ids, row_splits, weights, token_table, weight_values, signature,
                    optimizer.name, slots, optimizer.kernel_learning_rate(iterations),
                    **optimizer.kernel_attrs(), **args)
                return _after_counting(iterations, weight_grad)
            return out, gradient

        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch([table, weight_values])
            out = lookup(ids, row_splits, weights, table, weight_values, signature, **args)

        def generic_gradient(upstream):
            token_grad, weight_grad = tape.gradient(out, [table, weight_values],
                                                    output_gradients=upstream)
            if _replicas() > 1:
                # Each replica applies the same sum to its copy.
                token_grad = tf.distribute.get_replica_context().all_reduce(
                    tf.distribute.ReduceOp.SUM, tf.convert_to_tensor(token_grad))
            update = optimizer.apply(token_table, token_grad, slots, iterations)
            with tf.control_dependencies([update]):
                return _after_counting(iterations, weight_grad)
        return out, generic_gradient

    return forward(weight_table)


def _after_counting(iterations, weight_grad):
    """`weight_grad`, after the step counter went up by one."""
    with tf.control_dependencies([iterations.assign_add(1)]):
        return tf.identity(weight_grad)
