"""Shared test settings: offline hubs, one torch thread, a headless matplotlib backend."""

import os

# Offline before anything imports huggingface_hub / timm / transformers: a hub lookup then
# fails in under a second instead of retrying for ~45 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

# The CI machine has two cores; tests that compete for them run far slower with two
# threads each than with one.
torch.set_num_threads(1)


@pytest.fixture
def cuda_device():
    """A CUDA device, or a clean skip when this machine has none."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda", 0)
