"""Gradient algorithms over a kernel: full, checkpointed and truncated BPTT and the cost model
that chooses between them (``methods``), and real-time recurrent learning (``rtrl``)."""
