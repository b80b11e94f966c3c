import pytest
import torch

torch.set_num_threads(2)

collect_ignore = ["ddp_worker.py", "ddp_stages.py"]  # scripts torchrun starts, not test modules


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny models train fastest on one thread, and a loaded machine cannot make them wait for a second one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
