"""Profiling tests run their forwards single-threaded: the counts do not depend on threads, and on a shared
2-core machine OpenMP's barrier spinning makes a 2-thread forward of a small input ~30x slower under load."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
