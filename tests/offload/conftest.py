"""Offload tests: one CPU thread (the CI machine has 2 cores shared by everyone; tiny ops thrash with 2)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
