"""Label smoothing on real data: an MLP on scikit-learn's bundled digits, trained through smoothing_ext.

Trains the same network with each label-smoothing value (default eps = 0 and eps = 0.1) for several
seeds on a fixed, stratified train/test split of ``sklearn.datasets.load_digits`` (1797 8x8 images,
10 classes; the data ships inside scikit-learn, nothing is downloaded). For each eps it reports the
mean +- std over seeds of

* test accuracy,
* test NLL: the *unsmoothed* cross entropy of the predicted distribution on the test labels,
* ECE: expected calibration error with 15 equal-width confidence bins,
* mean confidence (max softmax probability) and the gap confidence - accuracy
  (> 0: over-confident on average, < 0: under-confident),
* mean confidence on the misclassified test images,

and writes, under ``--out`` (default ``examples/out``):

* ``reliability_diagram.png``: accuracy vs confidence per bin, one curve per eps (test predictions of
  all seeds pooled), with the diagonal of perfect calibration;
* ``confidence_histogram.png``: distribution of the confidence per eps;
* ``results.json`` (config, environment, per-seed and aggregated metrics) and ``results.md`` (table).

    python examples/label_smoothing_digits.py                 # full run, < 2 min on a 2-core CPU
    python examples/label_smoothing_digits.py --quick         # CI smoke mode, a few seconds
    python examples/label_smoothing_digits.py --eps 0 0.02 0.05 0.1 --seeds 3

Needs the optional extras: ``pip install scikit-learn matplotlib`` (tqdm optional, for a progress bar).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch
from torch import nn

import smoothing_ext

N_BINS = 15
MIN_BIN = 10  # reliability diagram: bins with fewer pooled predictions are drawn hollow


# --------------------------------------------------------------------------------------------- data
def load_data(test_size: float, split_seed: int):
    """Fixed stratified split of the digits, standardized with the training statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, stratify=y, random_state=split_seed)
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # some border pixels are always 0 in the training set
    to_x = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32)  # noqa: E731
    return to_x(x_tr), torch.tensor(y_tr), to_x(x_te), torch.tensor(y_te)


# ------------------------------------------------------------------------------------------ metrics
def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE = sum over bins of (fraction of samples in the bin) * |accuracy(bin) - mean confidence(bin)|.

    Bins are equal-width in confidence: (0, 1/n], (1/n, 2/n], ..., ((n-1)/n, 1].
    """
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def reliability_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS):
    """Per non-empty bin: (mean confidence, accuracy, count)."""
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            rows.append((float(conf[in_bin].mean()), float(correct[in_bin].mean()), int(in_bin.sum())))
    return rows


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    model.eval()
    with torch.no_grad():
        logits = model(x)
        # Unsmoothed NLL of the predictions: smoothing_ext with label_smoothing=0 is plain cross entropy.
        nll = float(smoothing_ext.cross_entropy(logits, y, label_smoothing=0.0))
        prob = torch.softmax(logits.double(), dim=1)
        conf, pred = prob.max(dim=1)
    conf = conf.numpy()
    correct = (pred == y).numpy()
    acc = float(correct.mean())
    return {
        "accuracy": acc,
        "nll": nll,
        "ece": expected_calibration_error(conf, correct),
        "mean_confidence": float(conf.mean()),
        "confidence_minus_accuracy": float(conf.mean() - acc),
        "confidence_on_errors": float(conf[~correct].mean()) if (~correct).any() else float("nan"),
        "_conf": conf,
        "_correct": correct,
    }


# ------------------------------------------------------------------------------------------ training
def make_mlp(n_in: int, width: int, depth: int, n_classes: int) -> nn.Module:
    layers, d = [], n_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, n_classes))
    return nn.Sequential(*layers)


def train_one(eps: float, seed: int, data, args, on_epoch=None) -> nn.Module:
    x_tr, y_tr, _, _ = data
    torch.manual_seed(seed)  # same init and batch order for every eps at a given seed
    model = make_mlp(x_tr.shape[1], args.width, args.depth, 10)
    criterion = smoothing_ext.CrossEntropyLoss(label_smoothing=eps)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    n = x_tr.shape[0]
    for _ in range(args.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, args.batch_size):
            idx = perm[i : i + args.batch_size]
            loss = criterion(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(loss.item())
    return model


class Progress:
    """tqdm when installed, otherwise one plain line per finished run."""

    def __init__(self, total_runs: int, epochs: int, disable: bool = False):
        self.total_runs, self.epochs, self.done = total_runs, epochs, 0
        self.bar = None
        if disable:
            self.mode = "off"
            return
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total_runs * epochs, unit="epoch", dynamic_ncols=True)
            self.mode = "tqdm"
        except ImportError:
            self.mode = "print"

    def start(self, eps: float, seed: int):
        self.eps, self.seed, self.t0 = eps, seed, time.perf_counter()
        if self.bar is not None:
            self.bar.set_description(f"eps={eps:g} seed={seed}")

    def epoch(self, loss: float):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(train_loss=f"{loss:.3f}", refresh=False)

    def finish(self, metrics: dict):
        self.done += 1
        if self.mode == "print":
            print(
                f"[{self.done}/{self.total_runs}] eps={self.eps:g} seed={self.seed}: "
                f"acc={metrics['accuracy']:.4f} nll={metrics['nll']:.4f} ece={metrics['ece']:.4f} "
                f"({time.perf_counter() - self.t0:.1f}s)",
                flush=True,
            )

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------- outputs
METRICS = [
    ("accuracy", "test accuracy"),
    ("nll", "test NLL"),
    ("ece", f"ECE ({N_BINS} bins)"),
    ("mean_confidence", "mean confidence"),
    ("confidence_minus_accuracy", "confidence - accuracy"),
    ("confidence_on_errors", "confidence on errors"),
]


def aggregate(per_seed: list[dict]) -> dict:
    out = {}
    for key, _ in METRICS:
        vals = np.array([r[key] for r in per_seed], dtype=float)
        out[key] = {
            "mean": float(np.nanmean(vals)),
            "std": float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else 0.0,
        }
    return out


def markdown_table(summary: dict, n_seeds: int) -> str:
    head = "| eps | " + " | ".join(label for _, label in METRICS) + " |"
    sep = "|---:|" + "---:|" * len(METRICS)
    rows = [head, sep]
    for eps, agg in summary.items():
        cells = [f"{agg[k]['mean']:.4f} ± {agg[k]['std']:.4f}" for k, _ in METRICS]
        rows.append(f"| {eps} | " + " | ".join(cells) + " |")
    note = (
        f"\nMean ± sample std over {n_seeds} seed(s). NLL is the unsmoothed cross entropy on the test labels; "
        "ECE uses equal-width confidence bins; confidence = max softmax probability; "
        "confidence - accuracy > 0 means over-confident.\n"
    )
    return "\n".join(rows) + "\n" + note


def plot(pooled: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    paths = []

    # Reliability diagram: accuracy vs mean confidence of each non-empty bin; marker area ~ bin count.
    # Bins holding fewer than MIN_BIN predictions (pooled over seeds) are drawn hollow and not joined:
    # their accuracy is too noisy to read (but they still count, weighted by size, in the ECE).
    fig, ax = plt.subplots(figsize=(6.4, 6.0), dpi=120)
    ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="perfect calibration")
    total = max(len(c) for c, _ in pooled.values())
    for i, (eps, (conf, correct)) in enumerate(pooled.items()):
        color = colors[i % len(colors)]
        rows = reliability_bins(conf, correct)
        big = [r for r in rows if r[2] >= MIN_BIN]
        small = [r for r in rows if r[2] < MIN_BIN]
        ece = expected_calibration_error(conf, correct)
        if big:
            xs, ys, ns = zip(*big)
            ax.plot(xs, ys, "-", color=color, lw=1.5, alpha=0.8)
            ax.scatter(xs, ys, s=[20 + 500 * n / total for n in ns], color=color, alpha=0.85,
                       edgecolor="k", linewidth=0.5, zorder=3,
                       label=f"eps = {eps:g}: ECE {ece:.3f}, acc {correct.mean():.3f}, conf {conf.mean():.3f}")
        if small:
            xs, ys, _ = zip(*small)
            ax.scatter(xs, ys, s=18, facecolor="none", edgecolor=color, linewidth=1.0, zorder=3)
    ax.scatter([], [], s=18, facecolor="none", edgecolor="0.3", label=f"bin with < {MIN_BIN} predictions")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("confidence (max softmax probability), mean of the bin")
    ax.set_ylabel("accuracy of the bin")
    ax.set_title(f"Reliability diagram, digits test set ({N_BINS} equal-width bins, all seeds pooled)\n"
                 "below the diagonal: over-confident, above: under-confident; "
                 "marker area ~ bin count", fontsize=9)
    ax.grid(alpha=0.3)
    leg = ax.legend(loc="lower right", fontsize=8)
    for h in getattr(leg, "legend_handles", None) or getattr(leg, "legendHandles", []):
        if hasattr(h, "set_sizes"):
            h.set_sizes([40])  # same legend marker size for every curve
    fig.tight_layout()
    p = os.path.join(out_dir, "reliability_diagram.png")
    fig.savefig(p)
    plt.close(fig)
    paths.append(p)

    # Confidence histogram: fraction of test predictions per confidence bin (log scale: the top bin dominates).
    fig, ax = plt.subplots(figsize=(6.2, 4.2), dpi=120)
    edges = np.linspace(0, 1, N_BINS + 1)
    for i, (eps, (conf, correct)) in enumerate(pooled.items()):
        c = colors[i % len(colors)]
        ax.hist(conf, bins=edges, weights=np.full(len(conf), 1 / len(conf)), histtype="stepfilled",
                alpha=0.25, color=c)
        ax.hist(conf, bins=edges, weights=np.full(len(conf), 1 / len(conf)), histtype="step", lw=1.8,
                color=c, label=f"eps = {eps:g}")
        ax.axvline(conf.mean(), color=c, ls="-", lw=1, alpha=0.9)
        ax.axvline(correct.mean(), color=c, ls=":", lw=1.5, alpha=0.9)
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_xlabel("confidence (max softmax probability)")
    ax.set_ylabel("fraction of test predictions")
    ax.set_title("Confidence histogram, digits test set (all seeds pooled)\n"
                 "solid vertical: mean confidence, dotted: accuracy", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    p = os.path.join(out_dir, "confidence_histogram.png")
    fig.savefig(p)
    plt.close(fig)
    paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eps", type=float, nargs="+", default=None,
                    help="label-smoothing values to compare (default: 0 0.1)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds 0..N-1 (default 5; --quick: 2)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default 100; --quick: 15)")
    ap.add_argument("--out", default=os.path.join("examples", "out"), help="output directory (default: examples/out)")
    ap.add_argument("--quick", action="store_true", help="reduced CI mode: 2 seeds, 15 epochs, all outputs")
    ap.add_argument("--width", type=int, default=256, help="hidden width of the MLP (default: 256)")
    ap.add_argument("--depth", type=int, default=2, help="number of hidden layers (default: 2)")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    ap.add_argument("--batch-size", type=int, default=64, help="(default: 64)")
    ap.add_argument("--test-size", type=float, default=0.5, help="fraction of the 1797 images held out (default: 0.5)")
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the (fixed) train/test split (default: 0)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: 1)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar / per-run lines")
    args = ap.parse_args(argv)
    args.eps = [0.0, 0.1] if args.eps is None else list(dict.fromkeys(args.eps))  # drop duplicates
    if args.seeds is None:
        args.seeds = 2 if args.quick else 5
    if args.epochs is None:
        args.epochs = 15 if args.quick else 100
    for e in args.eps:
        if not 0.0 <= e <= 1.0:
            ap.error(f"--eps values must be in [0, 1], got {e}")
    if args.seeds < 1 or args.epochs < 1:
        ap.error("--seeds and --epochs must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.perf_counter()

    data = load_data(args.test_size, args.split_seed)
    n_train, n_test = data[0].shape[0], data[2].shape[0]
    print(f"digits: {n_train} train / {n_test} test images, MLP 64-{'-'.join([str(args.width)] * args.depth)}-10, "
          f"Adam lr={args.lr}, batch {args.batch_size}, {args.epochs} epochs, seeds 0..{args.seeds - 1}, "
          f"eps {args.eps}", flush=True)

    progress = Progress(len(args.eps) * args.seeds, args.epochs, disable=args.no_progress)
    per_seed, pooled = {}, {}
    for eps in args.eps:
        key = f"{eps:g}"
        per_seed[key], confs, corrects = [], [], []
        for seed in range(args.seeds):
            progress.start(eps, seed)
            model = train_one(eps, seed, data, args, on_epoch=progress.epoch)
            m = evaluate(model, data[2], data[3])
            progress.finish(m)
            confs.append(m.pop("_conf"))
            corrects.append(m.pop("_correct"))
            per_seed[key].append({"seed": seed, **m})
        pooled[eps] = (np.concatenate(confs), np.concatenate(corrects))
    progress.close()

    summary = {k: aggregate(v) for k, v in per_seed.items()}
    table = markdown_table(summary, args.seeds)
    images = plot(pooled, args.out)
    elapsed = time.perf_counter() - t_start

    results = {
        "config": {k: v for k, v in vars(args).items()},
        "data": {"dataset": "sklearn.datasets.load_digits", "n_train": n_train, "n_test": n_test},
        "environment": {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "smoothing_ext": smoothing_ext.__version__,
            "numpy": np.__version__,
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
        },
        "ece_bins": N_BINS,
        "summary": summary,
        "per_seed": per_seed,
        "elapsed_s": round(elapsed, 2),
        "images": [os.path.basename(p) for p in images],
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, allow_nan=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"# Label smoothing on digits ({n_train} train / {n_test} test)\n\n{table}")

    print()
    print(table)
    print(f"wrote {', '.join(sorted(os.listdir(args.out)))} to {args.out}/ in {elapsed:.1f}s")
    if any(not math.isfinite(r["nll"]) for rs in per_seed.values() for r in rs):
        print("warning: non-finite test NLL", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
