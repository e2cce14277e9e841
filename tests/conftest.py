"""Test-wide settings."""

import torch

# Two intra-op threads on a shared 2-core machine can make a small step 30x slower (measured:
# 11 ms instead of 0.35 ms); the suite's models are small enough for one thread.
torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """The demo test (minutes, the longest by far) first: with several workers (``-n auto``)
    the others run the rest meanwhile instead of waiting for it at the end."""
    items.sort(key=lambda item: item.path.name != "test_demo.py")
