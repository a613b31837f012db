"""Shared test setup: deterministic, single-threaded torch so runs are repeatable and the suite fits 2 cores."""
import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def host():
    """A fresh plugin host with built-ins and installed plugins."""
    from statesim.plugin_manager import build_plugin_host

    return build_plugin_host()


@pytest.fixture
def builtin_host():
    """A plugin host with built-ins only (no entry points)."""
    from statesim.plugin_manager import build_plugin_host

    return build_plugin_host(autoload=False)


os.environ.setdefault("MPLBACKEND", "Agg")
