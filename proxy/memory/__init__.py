"""The memory pipeline, one module per stage in the order data flows."""
