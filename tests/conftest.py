"""Shared fixtures: every numerical test runs on each available device (CPU here; CUDA too where a
GPU exists), against float64 references."""

from __future__ import annotations

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


# Tolerances of the returned loss (rounded to the input dtype) and of the gradient, relative to
# the float64 reference evaluated on the same (already rounded) logits.
TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-10),
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


# The files that compile something (minutes on 2 cores) run first: under `make test`'s two xdist
# workers (--dist loadfile --no-loadscope-reorder) they then overlap with the many small cases
# instead of running one after another at the end. The CUDA build goes first: the SASS report, the
# cu130 wheel and the GPU-check dry run reuse it.
_BUILDS_FIRST = ("test_cuda_build.py", "test_cmake.py", "test_packaging.py")


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        name = item.path.name
        return _BUILDS_FIRST.index(name) if name in _BUILDS_FIRST else len(_BUILDS_FIRST)

    items.sort(key=rank)  # stable: the order within each file and among the others is kept
