import pytest
import torch

torch.set_num_threads(2)

collect_ignore = ["ddp_worker.py"]  # a script torchrun starts, not a test module


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
