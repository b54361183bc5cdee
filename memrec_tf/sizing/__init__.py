"""Sizing: the bytes of every table (`tables`), every method sized to a byte
budget (`budget`), and the per-layer report of `memrec_tf.memory_report`
(`report`). Every byte count in memrec_tf comes from here.
"""
from memrec_tf.sizing.budget import (HEAD_FRACTION, BudgetConfig, budget_bytes, budget_configs,
                                     full_config, hashing_config, head_rows, memrec_config,
                                     memrec_per_feature_config, qr_config)
from memrec_tf.sizing.report import LayerMemory, format_report, memory_report
from memrec_tf.sizing.tables import (FULL_TABLE_DTYPE, WEIGHT_TABLE_DTYPE, EmbeddingBytes,
                                     full_table_bytes, memrec_bytes, memrec_table_shapes,
                                     stored_table_bytes, table_bytes, vocabulary_mapping_bytes,
                                     weight_width)

__all__ = ["FULL_TABLE_DTYPE", "HEAD_FRACTION", "WEIGHT_TABLE_DTYPE", "BudgetConfig",
           "EmbeddingBytes", "LayerMemory", "budget_bytes",
           "budget_configs", "format_report", "full_config", "full_table_bytes",
           "hashing_config", "head_rows", "memory_report", "memrec_bytes", "memrec_config",
           "memrec_per_feature_config", "memrec_table_shapes", "qr_config",
           "stored_table_bytes", "table_bytes",
           "vocabulary_mapping_bytes", "weight_width"]
