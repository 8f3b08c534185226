"""The ``cpu`` backend: fused CPU nodes (hand-written backward, cache-sized in-place chunks) and
direct oneDNN calls. Only ever called for CPU tensors in eager mode (see :mod:`lowrank.kernels`)."""
