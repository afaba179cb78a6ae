"""Fixtures shared by the library tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The library tests run many tiny tensor ops; on a shared 2-core machine intra-op threads only contend
    (measured up to 18x slower with 2 threads). Code under test that sets its own thread count still does."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
