"""Test configuration: one intra-op thread.

The suite runs thousands of small tensor operations; with torch's default of one thread per core,
a second busy process on a 2-core machine makes them spin-wait on each other (measured: ~15x
slower). One thread is as fast for these sizes and keeps the run time predictable.
"""

import torch

torch.set_num_threads(1)
