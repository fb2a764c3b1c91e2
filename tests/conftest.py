import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

PRESETS = ["latent_mim", "mae", "pilamim", "naive_latent_mim"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
