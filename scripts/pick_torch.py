"""Which torch `make` installs into the venv; prints one version for pip (``torch==<it>``).

    python scripts/pick_torch.py --gpu 0|1 --default 2.14.1 --venv .venv

- A venv that `make` set up before keeps its torch (read from its ``.deps-<version>-<n>`` stamp), so
  that a plain `make test` never swaps the torch of an existing environment.
- A machine with an NVIDIA GPU gets ``--default`` (the CUDA build of torch on PyPI).
- A CPU-only machine gets the newest CPU build of torch (``X.Y.Z+cpu``) that the package index lists and
  that is not newer than ``--default``: the extension's CPU kernels are the same, and it avoids about
  2 GB of CUDA wheels. Without one (or without a reachable index) it gets ``--default``.

`make TORCH_VERSION=...` bypasses this script (CI passes the CUDA build of torch: its CUDA build checks
need it).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def venv_torch(venv: str) -> str | None:
    """The torch version of an existing `make` venv, from its stamp file (newest stamp wins)."""
    try:
        names = os.listdir(venv)
    except OSError:
        return None
    stamps = []
    for name in names:
        m = re.fullmatch(r"\.deps-([^-]+)(?:-\d+)?", name)
        if m:
            stamps.append((os.path.getmtime(os.path.join(venv, name)), m.group(1)))
    return max(stamps)[1] if stamps else None


def index_versions(python: str = sys.executable, timeout: float = 60.0) -> list[str]:
    """The torch versions pip's configured index (and find-links) offers; [] when it cannot say."""
    try:
        r = subprocess.run([python, "-m", "pip", "index", "versions", "torch"], capture_output=True,
                           text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return []
    m = re.search(r"Available versions:\s*(.+)", r.stdout)
    return [v.strip() for v in m.group(1).split(",") if v.strip()] if m else []


def pick(available: list[str], have_gpu: bool, default: str, existing: str | None = None) -> str:
    if existing:
        return existing
    if have_gpu:
        return default
    cpu = [v for v in available if v.endswith("+cpu") and _key(v) <= _key(default)]
    return max(cpu, key=_key) if cpu else default


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", type=int, choices=(0, 1), required=True, help="1 if an NVIDIA GPU is present")
    ap.add_argument("--default", required=True, help="the pinned torch (GPU machines, and the fallback)")
    ap.add_argument("--venv", default=None, help="the venv `make` uses; an existing one keeps its torch")
    args = ap.parse_args(argv)
    existing = venv_torch(args.venv) if args.venv else None
    available = [] if (existing or args.gpu) else index_versions()
    print(pick(available, bool(args.gpu), args.default, existing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
