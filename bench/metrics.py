"""Scoring speed: `aer.metrics.summarize` against torchmetrics' per-class AP and AUROC, same data;
and the bootstrap intervals (`aer.metrics.bootstrap_ci`, 1,000 replicates) against a plain loop
that scores each resample with `summarize` (timed on a few replicates, scaled to all; a timing
reference only, as its AP counts a clip drawn k times k times in its own precision).

    python bench/metrics.py [--clips 20000] [--classes 527] [--repeat 5] [--seed 0] [--replicates 1000]

The data is AudioSet-shaped: long-tailed class frequencies from 5% down to 0.05% (every class has
positives and negatives), ~6 labels per clip (AudioSet's ~2.7, doubled), float32 scores in [0, 1]
that rank positives higher, and every other class's scores rounded to 3 decimals so that tied
scores occur and must be grouped
the way scikit-learn groups them. aer is timed `--repeat` times after a warm-up (median shown);
torchmetrics' functional `multilabel_average_precision` and `multilabel_auroc` (average=None,
exact: thresholds=None) once each, as they take several seconds apiece. The per-class values
must agree to 1e-6; the exit status is 1 when they do not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_S = 2.0
TOL = 1e-6


def make_data(clips: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # class prevalence from ~5% down to ~0.05%, like AudioSet's head and tail
    prevalence = 0.05 * torch.logspace(0, -2, classes, dtype=torch.float64)
    labels = torch.rand(clips, classes, generator=g, dtype=torch.float64) < prevalence
    rows = torch.randint(0, clips, (classes,), generator=g)
    labels[rows, torch.arange(classes)] = True  # at least one positive per class
    labels[(rows + 1) % clips, torch.arange(classes)] = False  # and at least one negative
    logits = torch.randn(clips, classes, generator=g) + 1.5 * labels.float()
    scores = torch.sigmoid(logits)
    scores[:, ::2] = torch.round(scores[:, ::2], decimals=3)  # ties within a class
    return scores.float().contiguous(), labels


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process summed over its threads, result)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def time_it(fn, repeat: int) -> tuple[float, float, list[float], object]:
    """Median wall and CPU seconds of `repeat` runs after a warm-up, every wall time, the last result."""
    fn()  # warm-up: first-call allocations are not what a training run pays each epoch
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        wall, cpu, out = timed(fn)
        walls.append(wall)
        cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus), walls, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=20_000)
    ap.add_argument("--classes", type=int, default=527)
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of aer (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates (0: skip the bootstrap)")
    ap.add_argument("--loop-replicates", type=int, default=5, help="resamples the plain loop is timed on")
    args = ap.parse_args()

    import torchmetrics
    from torchmetrics.functional.classification import multilabel_auroc, multilabel_average_precision

    from aer.metrics import summarize

    load0, cpus = os.getloadavg()[0], os.cpu_count() or 1  # before this run adds its own threads
    scores, labels = make_data(args.clips, args.classes, args.seed)
    target = labels.long()
    print(f"{args.clips:,} clips × {args.classes} classes, {int(labels.sum()):,} positives; "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads, {cpus} CPUs, load {load0:.1f}), "
          f"torchmetrics {torchmetrics.__version__}")

    aer_s, aer_cpu, aer_times, s = time_it(lambda: summarize(scores, labels), args.repeat)
    tm_ap_s, tm_ap_cpu, tm_ap = timed(lambda: multilabel_average_precision(
        scores, target, num_labels=args.classes, average=None, thresholds=None))
    tm_auc_s, tm_auc_cpu, tm_auc = timed(lambda: multilabel_auroc(
        scores, target, num_labels=args.classes, average=None, thresholds=None))
    tm_s, tm_cpu = tm_ap_s + tm_auc_s, tm_ap_cpu + tm_auc_cpu

    ap_diff = float((s["ap"] - tm_ap.double()).abs().max())
    auc_diff = float((s["auc"] - tm_auc.double()).abs().max())
    map_diff = abs(s["mAP"] - float(tm_ap.double().mean()))
    mauc_diff = abs(s["mAUC"] - float(tm_auc.double().mean()))

    print()
    print(f"{'scorer':<34} {'wall s':>8} {'CPU s':>8} {'mAP':>10} {'mAUC':>10}")
    print(f"{'aer.metrics.summarize (median)':<34} {aer_s:>8.3f} {aer_cpu:>8.3f} {s['mAP']:>10.6f} {s['mAUC']:>10.6f}")
    print(f"{'torchmetrics AP (average=None)':<34} {tm_ap_s:>8.3f} {tm_ap_cpu:>8.3f} {float(tm_ap.mean()):>10.6f}")
    print(f"{'torchmetrics AUROC (average=None)':<34} {tm_auc_s:>8.3f} {tm_auc_cpu:>8.3f} {'':>10} "
          f"{float(tm_auc.mean()):>10.6f}")
    print(f"{'torchmetrics AP + AUROC':<34} {tm_s:>8.3f} {tm_cpu:>8.3f}")
    print()
    print(f"aer runs (wall): {', '.join(f'{t:.3f}' for t in aer_times)} s")
    print(f"speed-up: {tm_s / aer_s:.1f}x wall, {tm_cpu / aer_cpu:.1f}x CPU (torchmetrics AP + AUROC / aer)")
    if load0 > cpus / 2:
        # shared cores, caches and memory bandwidth slow both wall and CPU time, torchmetrics' more than aer's
        print(f"note: load average {load0:.1f} on {cpus} CPUs before the run: other processes competed for the "
              f"machine, so these times are higher than on an idle one; rerun when it is idle")
    agree = max(ap_diff, auc_diff, map_diff, mauc_diff) <= TOL
    print(f"max |difference|: per-class AP {ap_diff:.2e}, AUC {auc_diff:.2e}; mAP {map_diff:.2e}, mAUC {mauc_diff:.2e}"
          f" (tolerance {TOL:g}): {'agree' if agree else 'DISAGREE'}")
    print(f"target: aer under {TARGET_S:g} s: {'met' if aer_s < TARGET_S else 'MISSED'} ({aer_s:.3f} s)")
    if args.replicates:
        bench_bootstrap(scores, labels, args.replicates, args.loop_replicates)
    return 0 if agree else 1


def bench_bootstrap(scores: torch.Tensor, labels: torch.Tensor, replicates: int, loop_replicates: int) -> None:
    """bootstrap_ci against summarize on each resample, the plain loop's time scaled to `replicates`."""
    from aer.metrics import bootstrap_ci, resample_counts, summarize

    n = len(labels)
    boot_s, boot_cpu, ci = timed(lambda: bootstrap_ci(scores, labels, replicates))

    def loop():
        for counts in resample_counts(n, loop_replicates, seed=0):
            for row in counts:
                idx = torch.repeat_interleave(torch.arange(n), row.long())
                summarize(scores[idx], labels[idx])

    loop_s, loop_cpu, _ = timed(loop)
    per = loop_s / loop_replicates
    print()
    print(f"bootstrap, {replicates} replicates of {n:,} clips × {labels.shape[1]} classes: {boot_s:.1f} s wall, "
          f"{boot_cpu:.1f} s CPU; mAP 95% interval [{ci['mAP_ci_low']:.4f}, {ci['mAP_ci_high']:.4f}]")
    print(f"plain loop (summarize of each resample): {per:.2f} s a replicate over {loop_replicates}, "
          f"{per * replicates:.0f} s for {replicates} (estimated): {per * replicates / boot_s:.0f}x the bootstrap")


if __name__ == "__main__":
    sys.exit(main())
