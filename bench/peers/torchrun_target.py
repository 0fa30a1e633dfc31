"""Script run by ``torchrun --standalone --nproc_per_node=2``: one workload, by name."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bench.workloads import WORKLOADS  # noqa: E402

WORKLOADS[sys.argv[1]]()
