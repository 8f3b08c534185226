"""Shared test configuration: one intra-op thread per process (CI runs 2 xdist workers on 2
cores; OMP_NUM_THREADS overrides), a hypothesis profile."""

import os

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

# without a GPU, the Triton kernels' tests run in Triton's interpreter on CPU tensors; it has to be
# on before triton is first imported (a later switch leaves the kernels' helpers uncallable)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=50
)
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))
