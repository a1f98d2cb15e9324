from __future__ import annotations

import torch

from conftest import TOL


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0, msg: str = ""):
    """Compare against a float64 reference; `scale` widens the tolerance for sums of many terms."""
    tol = TOL[dtype]
    torch.testing.assert_close(
        actual.double().cpu(),
        expected.double().cpu(),
        rtol=tol["rtol"] * scale,
        atol=tol["atol"] * scale,
        equal_nan=True,
        msg=lambda m: f"{msg}\n{m}",
    )


def make_target(shape, C, ignore_index=None, ignore_frac=0.0, dtype=torch.int64, device="cpu", generator=None):
    t = torch.randint(0, C, shape, generator=generator).to(dtype)
    if ignore_index is not None and ignore_frac > 0 and t.numel() > 0:
        mask = torch.rand(shape, generator=generator) < ignore_frac
        t = torch.where(mask, torch.tensor(ignore_index, dtype=torch.int64), t.long()).to(dtype)
    return t.to(device)
