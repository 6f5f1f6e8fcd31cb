"""Suite-wide settings: under pytest-xdist each worker computes on one thread (two workers on
a 2-core machine would otherwise each start a thread per core)."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)
