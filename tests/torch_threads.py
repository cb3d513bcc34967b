"""One intra-op torch thread for model tests: on the shared 2-core machine two threads wait on each other
(about 10x slower). Import `one_thread` into a test module to apply it there."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
