"""Test-wide settings."""

import torch

# Two intra-op threads on a shared 2-core machine can make a small step 30x slower (measured:
# 11 ms instead of 0.35 ms); the suite's models are small enough for one thread.
torch.set_num_threads(1)
