"""pytest plugin for the dry run of scripts/gpu_verify.sh (`-p gpu_verify_fake_cuda --collect-only`):
torch.cuda.is_available() answers True while the tests are collected, so that the CUDA
parametrizations (tests/conftest.py's `device` fixture) are collected and counted on a machine
without a GPU. Collection only: running a test with it would fail at the first CUDA call."""

from __future__ import annotations

import torch

# At import (-p loads the plugin before tests/conftest.py is imported, which reads is_available()).
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1


def pytest_configure(config):
    if not config.getoption("collectonly"):
        raise RuntimeError("gpu_verify_fake_cuda is for --collect-only")
