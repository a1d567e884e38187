"""Statistics: bootstrap intervals (exact replicates, coverage), paired tests, seed grouping, ontology."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from aer.cli import compare as main
from aer.compare import band, compare_sweeps, group_jobs, metric_stats, sweep_runs
from aer.data.ontology import category_scores, read_ontology, top_level_classes
from aer.metrics import (
    bootstrap,
    bootstrap_ci,
    bootstrap_classes,
    interval,
    paired_bootstrap,
    resample_counts,
    summarize,
)
from conftest import ROOT, compose_cfg, config, run_script, train_overrides


def _data(n: int, c: int, seed: int, ties: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.rand(n, c, generator=g) < torch.linspace(0.02, 0.3, c)
    labels[:, -1] = False  # a class without positives: never scored
    scores = torch.sigmoid(torch.randn(n, c, generator=g) + 1.5 * labels)
    return (torch.round(scores, decimals=1) if ties else scores), labels


# ---- bootstrap
def _loop_ap(scores: np.ndarray, labels: np.ndarray, w: np.ndarray) -> float:
    """AP of one class on a resample with clip counts `w`, positive by positive: a clip drawn k
    times counts k times in others' precision and once in its own."""
    total, pos = 0.0, 0.0
    for i in np.flatnonzero(labels & (w > 0)):
        at_or_above = scores >= scores[i]
        tp = (w * labels)[at_or_above].sum() - w[i] + 1
        total += w[i] * tp / (w[at_or_above].sum() - w[i] + 1)
        pos += w[i]
    return total / pos if pos else float("nan")


@pytest.mark.parametrize("ties", [True, False])
def test_bootstrap_equals_a_plain_loop_over_resampled_clips(ties):
    scores, labels = _data(200, 8, 0, ties)
    reps = bootstrap(scores, labels, 60, seed=3)
    s_np, l_np = scores.numpy(), labels.numpy()
    loop = []
    for counts in resample_counts(200, 60, 3):
        for row in counts:
            w = row.numpy().astype(np.int64)
            idx = np.repeat(np.arange(200), w)  # each clip as often as it was drawn
            s = summarize(scores[idx], labels[idx])  # AUC has no self term: the resample's own
            loop.append([np.nanmean([_loop_ap(s_np[:, c], l_np[:, c], w) for c in range(8)]), s["mAUC"], s["dprime"]])
    loop = torch.tensor(loop, dtype=torch.float64)
    for i, k in enumerate(("mAP", "mAUC", "dprime")):
        assert reps[k].shape == (1, 60)
        torch.testing.assert_close(reps[k][0], loop[:, i], rtol=0, atol=1e-12)


def test_a_replicate_that_draws_every_clip_once_is_the_sample():
    from aer.metrics import _Groups

    scores, labels = _data(300, 12, 1)
    ap, auc = _Groups(scores, labels).score(torch.ones(300, 1), 300.0)
    s = summarize(scores, labels)
    torch.testing.assert_close(ap[:, 0], s["ap"], equal_nan=True, rtol=0, atol=1e-12)
    torch.testing.assert_close(auc[:, 0], s["auc"], equal_nan=True, rtol=0, atol=1e-12)


def test_bootstrap_is_seeded_and_draws_whole_clips():
    n = 500
    a, b = (torch.cat(list(resample_counts(n, 120, seed=s))) for s in (5, 5))
    assert torch.equal(a, b) and a.shape == (120, n)
    assert (a.sum(1) == n).all() and not torch.equal(a, torch.cat(list(resample_counts(n, 120, seed=6))))
    scores, labels = _data(n, 6, 1)
    assert torch.equal(bootstrap(scores, labels, 60, seed=2)["mAP"], bootstrap(scores, labels, 60, seed=2)["mAP"])


def _population_ap(prevalence: float, shift: float) -> float:
    """AP of an infinite population: positives' scores N(shift, 1), negatives' N(0, 1)."""
    from scipy.stats import norm

    s = np.linspace(shift - 10, shift + 10, 200_001)
    tp, fp = prevalence * norm.sf(s - shift), (1 - prevalence) * norm.sf(s)
    return float(np.trapezoid(norm.pdf(s - shift) * tp / (tp + fp), s))


@pytest.mark.slow  # 200 bootstrap draws
def test_90_percent_interval_covers_the_population_map_in_85_to_95_percent_of_draws():
    prevalence, shift = np.array([0.1, 0.2]), np.array([1.0, 2.0])
    population = np.mean([_population_ap(p, d) for p, d in zip(prevalence, shift)])
    draws, n, c = 200, 1000, len(prevalence)
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(n, draws, c, generator=g) < torch.tensor(prevalence)
    scores = torch.randn(n, draws, c, generator=g, dtype=torch.float64) + torch.tensor(shift) * labels
    # the draws side by side as columns, scored in one call: each draw's mAP is the mean over its columns
    ap, _ = bootstrap_classes([scores.reshape(n, -1).float()], labels.reshape(n, -1), 1000, seed=1)
    per_draw = ap[0].reshape(draws, c, -1).nanmean(1)
    covered = [lo <= population <= hi for lo, hi in (interval(per_draw[i], 0.90) for i in range(draws))]
    assert 0.85 <= np.mean(covered) <= 0.95, np.mean(covered)


def test_paired_bootstrap_of_identical_models_is_zero_with_p_one():
    scores, labels = _data(400, 8, 2)
    out = paired_bootstrap(scores, scores.clone(), labels, 200)
    for k in ("mAP", "mAUC", "dprime"):
        assert out[k]["diff"] == 0 and out[k]["ci_low"] == 0 and out[k]["ci_high"] == 0 and out[k]["p"] == 1.0


def test_paired_bootstrap_finds_a_better_model_and_its_difference():
    scores, labels = _data(600, 8, 3, ties=False)
    better = torch.sigmoid(torch.logit(scores) + 1.0 * labels)  # same clips, positives pushed up
    out = paired_bootstrap(scores, better, labels, 300, level=0.9)
    s_a, s_b = summarize(scores, labels), summarize(better, labels)
    d = out["mAP"]
    assert d["diff"] == pytest.approx(s_b["mAP"] - s_a["mAP"]) and d["diff"] > 0
    assert 0 < d["ci_low"] <= d["diff"] <= d["ci_high"] and d["p"] < 0.01
    swapped = paired_bootstrap(better, scores, labels, 300, level=0.9)["mAP"]
    assert swapped["diff"] == pytest.approx(-d["diff"]) and swapped["ci_high"] < 0


def test_bootstrap_rejects_bad_input():
    scores, labels = _data(50, 4, 0)
    with pytest.raises(ValueError, match="must be equal"):
        bootstrap(scores[:, :3], labels, 10)
    with pytest.raises(ValueError, match="replicates=0"):
        bootstrap(scores, labels, 0)
    with pytest.raises(ValueError, match="level=1.5"):
        interval(torch.zeros(3), 1.5)


# ---- grouping over seeds
def _fake_sweep(root: Path, jobs: list[tuple[dict, dict | None]]) -> Path:
    """Job dirs 0..n with .hydra/overrides.yaml and (unless None) metrics.json, as train.py -m leaves them."""
    for i, (overrides, metrics) in enumerate(jobs):
        job = root / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"{k}={v}" for k, v in overrides.items()]))
        if metrics is not None:
            (job / "metrics.json").write_text(json.dumps({"status": "ok", **metrics}))
    return root


def test_grouping_of_a_sweep_with_seeds_is_exact(tmp_path):
    values = {("xavier", "1"): 0.25, ("xavier", "2"): 0.27, ("xavier", "3"): 0.26,
              ("kaiming", "1"): 0.20, ("kaiming", "2"): 0.22, ("kaiming", "3"): None}  # None: killed job
    jobs = [({"experiment": "report_init", "init": i, "seed": s}, None if v is None else {"val/mAP": v, "epochs": 5})
            for (i, s), v in values.items()]
    sweep = _fake_sweep(tmp_path / "sweep", jobs)
    keys, groups = group_jobs(sweep_runs([sweep]))
    assert keys == ["init"] and list(groups) == [("xavier",), ("kaiming",)]
    assert [r.name for r in groups[("xavier",)]] == ["0", "1", "2"]
    assert [r.name for r in groups[("kaiming",)]] == ["3", "4", "5"]
    x, k = metric_stats(groups[("xavier",)]), metric_stats(groups[("kaiming",)])
    assert x["val/mAP"] == (3, pytest.approx(0.26), pytest.approx(0.01))
    assert k["val/mAP"] == (2, pytest.approx(0.21), pytest.approx(np.std([0.20, 0.22], ddof=1)))
    out = tmp_path / "out"
    before = sorted(p.relative_to(sweep) for p in sweep.rglob("*"))
    paths = compare_sweeps([sweep], out)
    assert sorted(p.relative_to(sweep) for p in sweep.rglob("*")) == before, "the input dir was written to"
    assert {p.name for p in paths} == {"groups.md", "groups.csv", "compare.md"}  # no event files: no curves
    md = (out / "groups.md").read_text()
    assert "| xavier | 3 | 1 2 3 |" in md and "0.2600 ± 0.0100" in md and "| kaiming | 2 | 1 2 |" in md
    rows = list(csv.DictReader(open(out / "groups.csv")))
    assert [(r["init"], r["n"], r["val/mAP_n"]) for r in rows] == [("xavier", "3", "3"), ("kaiming", "2", "2")]


def test_grouping_several_dirs_and_by(tmp_path):
    a = _fake_sweep(tmp_path / "a", [({"model": "fc", "seed": s}, {"val/mAP": 0.1 * s}) for s in (1, 2)])
    b = _fake_sweep(tmp_path / "b", [({"model": "attention", "seed": s, "lr": 1}, {"val/mAP": 0.3}) for s in (1, 2)])
    keys, groups = group_jobs(sweep_runs([a, b]))
    # lr is set in b only: a ran with its default, so it is swept too (aer.runs.swept_keys)
    assert keys == ["model", "lr"] and list(groups) == [("fc", "(default)"), ("attention", "1")]
    assert [len(v) for v in groups.values()] == [2, 2]
    keys, groups = group_jobs(sweep_runs([a, b]), by=["model", "seed"])
    assert keys == ["model"] and list(groups) == [("fc",), ("attention",)]


def test_grouping_keeps_values_with_spaces_whole(tmp_path):
    sweep = _fake_sweep(tmp_path / "s", [({"+tag": t, "seed": s}, {"val/mAP": 0.1 * s}) for t in ("a b", "a c")
                                         for s in (1, 2)])
    keys, groups = group_jobs(sweep_runs([sweep]))
    assert keys == ["tag"] and list(groups) == [("a b",), ("a c",)] and [len(v) for v in groups.values()] == [2, 2]
    paths = compare_sweeps([sweep], tmp_path / "out")
    assert "| a b | 2 | 1 2 |" in (tmp_path / "out" / "groups.md").read_text() and len(paths) == 3


def test_band_over_runs_of_different_lengths():
    b = band([(np.array([1, 2, 3]), np.array([0.1, 0.2, 0.3])), (np.array([1, 2]), np.array([0.3, 0.4]))])
    assert b["epoch"].tolist() == [1, 2, 3] and b["n"].tolist() == [2, 2, 1]
    np.testing.assert_allclose(b["mean"], [0.2, 0.3, 0.3])
    np.testing.assert_allclose(b["min"], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(b["max"], [0.3, 0.4, 0.3])
    assert np.isnan(b["sd"][2]) and b["sd"][0] == pytest.approx(np.std([0.1, 0.3], ddof=1))


def test_epoch_table_of_known_curves(tmp_path):
    from aer.compare import epoch_rows, first_epochs, write_epoch_tables

    sweep = _fake_sweep(tmp_path / "s", [({"init": "a", "seed": s}, {"val/mAP": 0.1}) for s in (1, 2)])
    keys, groups = group_jobs(sweep_runs([sweep]))
    x = np.arange(1, 6)
    curves = {sweep.resolve() / "0": {"val/mAP": (x, np.array([0.1, 0.25, 0.3, 0.2, 0.15])),
                                      "val/mAUC": (x, np.array([0.5, 0.6, 0.7, 0.8, 0.9]))},
              sweep.resolve() / "1": {"val/mAP": (x, np.array([0.05, 0.1, 0.15, 0.18, 0.22]))}}
    rows = epoch_rows(groups, {d: first_epochs(c, 4) for d, c in curves.items()}, reach=0.2)
    assert [(r["seed"], r["epochs"], r["last"], r["best"], r["best_epoch"], r["reached"], r["auc_last"])
            for r in rows] == [("1", 4, 0.2, 0.3, 3, 2, 0.8), ("2", 4, 0.18, 0.18, 4, None, None)]
    assert epoch_rows(groups, curves, reach=0.2)[1]["reached"] == 5  # all five epochs
    md = write_epoch_tables(tmp_path / "out", keys, rows, 0.2)[0].read_text()
    assert keys == [] and "| 2 | 1 2 | 4 | 0.1900 ± 0.0141 | 0.2400 ± 0.0849 | 3, 4 | 2, — | 0.8000 |" in md


def test_cli_refuses_to_write_into_an_input_dir(tmp_path, capsys):
    sweep = _fake_sweep(tmp_path / "s", [({"init": "a", "seed": 1}, {"val/mAP": 0.1})])
    assert main([str(sweep), "--out", str(sweep / "cmp")]) == 1
    assert "inside the input dir" in capsys.readouterr().err and not (sweep / "cmp").exists()
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    assert "no such directory" in capsys.readouterr().err


# ---- seeds through training, compare end to end
def test_seed_override_reaches_every_seed_use():
    cfg = compose_cfg("train", ["experiment=report_init", "seed=7"])
    assert cfg.seed == 7 and cfg.data.seed == 7  # the batch sampler's seed follows the run's
    assert cfg.data.split_seed == 0  # the dev split stays put: seeds are compared on the same clips


@pytest.fixture(scope="module")
def seed_sweep(demo_root, tmp_path_factory) -> Path:
    """A four-job multirun: two inits × two seeds, as a user types it."""
    tmp = tmp_path_factory.mktemp("seeds")
    overrides = [o for o in train_overrides(demo_root, tmp) if not o.startswith("paths.output_dir")]
    proc = run_script("train.py", "-m", "init=xavier,kaiming", "seed=1,2", *overrides,
                      f"hydra.sweep.dir={tmp / 'sweep'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "sweep"


@pytest.mark.slow
def test_compare_a_seed_sweep(seed_sweep, tmp_path):
    m = [json.loads((seed_sweep / str(i) / "metrics.json").read_text()) for i in range(4)]
    assert len({x["val/mAP"] for x in m}) == 4, "another seed must give another run"
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "-m", "aer.compare", str(seed_sweep), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {"groups.md", "groups.csv", "curves.csv", "curves.png", "compare.md",
                                               "epochs.md", "epochs.csv"}
    epochs = list(csv.DictReader(open(out / "epochs.csv")))  # two epochs a job: the last is its metrics.json's
    assert [(r["init"], r["seed"], r["epochs"]) for r in epochs] == [("xavier", "1", "2"), ("xavier", "2", "2"),
                                                                      ("kaiming", "1", "2"), ("kaiming", "2", "2")]
    for r, job in zip(epochs, m):
        assert float(r["val_mAP_last"]) == pytest.approx(job["val/mAP"], rel=1e-6)
        assert float(r["val_mAP_best"]) == pytest.approx(job["val/mAP_best"], rel=1e-6)
    rows = list(csv.DictReader(open(out / "groups.csv")))
    assert [(r["init"], r["n"], r["seeds"]) for r in rows] == [("xavier", "2", "1 2"), ("kaiming", "2", "1 2")]
    for r, jobs in zip(rows, ([m[0], m[1]], [m[2], m[3]])):
        assert float(r["val/mAP_mean"]) == pytest.approx(np.mean([j["val/mAP"] for j in jobs]))
    curves = list(csv.DictReader(open(out / "curves.csv")))
    last = [c for c in curves if c["tag"] == "val/mAP" and c["epoch"] == "2"]
    assert [(c["init"], c["n"]) for c in last] == [("xavier", "2"), ("kaiming", "2")]
    assert float(last[0]["max"]) == pytest.approx(max(m[0]["val/mAP"], m[1]["val/mAP"]), rel=1e-5)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not (seed_sweep / "cmp").exists() and not list(seed_sweep.rglob("groups.md"))


@pytest.mark.slow
def test_compare_two_checkpoints(seed_sweep, tmp_path):
    a, b = (seed_sweep / j / "checkpoints" / "best.ckpt" for j in ("0", "2"))
    out = tmp_path / "paired"
    assert main(["--ckpts", str(a), str(b), "--split", "val", "--out", str(out), "--replicates", "200"]) == 0
    assert {p.name for p in out.iterdir()} == {"paired.md", "paired.json", "per_class_diff.csv",
                                               "ap_vs_train_positives.png", "gain_loss.png"}
    paired = json.loads((out / "paired.json").read_text())
    ma, mb = (json.loads((seed_sweep / j / "metrics.json").read_text()) for j in ("0", "2"))
    assert paired["mAP"]["a"] == pytest.approx(ma["val/mAP_best"], abs=1e-6)
    assert paired["mAP"]["diff"] == pytest.approx(mb["val/mAP_best"] - ma["val/mAP_best"], abs=1e-6)
    assert paired["mAP"]["ci_low"] <= paired["mAP"]["diff"] <= paired["mAP"]["ci_high"]
    assert 0 < paired["mAP"]["p"] <= 1 and paired["mAP"]["replicates"] == 200
    rows = list(csv.DictReader(open(out / "per_class_diff.csv")))
    assert len(rows) == 527 and sum(int(r["positives"]) for r in rows) > 0
    assert main(["--ckpts", str(a), str(a), "--out", str(tmp_path / "same"), "--replicates", "50"]) == 0
    same = json.loads((tmp_path / "same" / "paired.json").read_text())
    assert same["mAP"]["diff"] == 0 and same["mAP"]["p"] == 1


def _predictions(d: Path, scores: torch.Tensor, labels: torch.Tensor, vids: list[str] | None = None,
                 per_class: bool = True) -> Path:
    """A predictions.h5 and per_class.csv as evaluate.py writes them, from given scores."""
    from aer.scoring import PER_CLASS_COLUMNS, write_predictions

    d.mkdir(parents=True)
    vids = vids or [f"clip{i}" for i in range(len(labels))]
    write_predictions(d / "predictions.h5", scores.numpy(), labels.numpy(), vids, {"split": "val"})
    if per_class:
        with open(d / "per_class.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(PER_CLASS_COLUMNS)
            for i in range(labels.shape[1]):
                w.writerow([i, f"/m/{i}", f"class {i}", int(labels[:, i].sum()), 10 * (i + 1)] + [""] * 7)
    return d / "predictions.h5"


def test_compare_two_predictions_files(tmp_path):
    scores, labels = _data(300, 6, seed=4)
    better = torch.where(labels, scores + 0.3, scores)  # every positive ranked higher: a better model
    a, b = _predictions(tmp_path / "a", scores, labels), _predictions(tmp_path / "b", better, labels)
    out = tmp_path / "paired"
    assert main(["--preds", str(a), str(b), "--out", str(out), "--replicates", "200"]) == 0
    paired = json.loads((out / "paired.json").read_text())
    assert paired["split"] == "val" and paired["mAP"]["replicates"] == 200
    assert paired["mAP"]["a"] == pytest.approx(summarize(scores, labels)["mAP"], abs=1e-6)
    assert paired["mAP"]["diff"] == pytest.approx(summarize(better, labels)["mAP"] - paired["mAP"]["a"], abs=1e-6)
    assert paired["mAP"]["diff"] > 0 and paired["mAP"]["ci_low"] > 0
    rows = list(csv.DictReader(open(out / "per_class_diff.csv")))
    assert [(r["name"], r["train_positives"]) for r in rows] == [(f"class {i}", str(10 * (i + 1))) for i in range(6)]
    assert (out / "ap_vs_train_positives.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["--preds", str(a), str(a), "--out", str(tmp_path / "same"), "--replicates", "50"]) == 0
    same = json.loads((tmp_path / "same" / "paired.json").read_text())
    assert same["mAP"]["diff"] == 0 and same["mAP"]["p"] == 1


def test_compare_predictions_refuses_what_cannot_be_paired(tmp_path, capsys):
    scores, labels = _data(50, 4, seed=5)
    a = _predictions(tmp_path / "a", scores, labels)
    other = _predictions(tmp_path / "other", scores, labels, vids=[f"x{i}" for i in range(50)])
    bare = _predictions(tmp_path / "bare", scores, labels, per_class=False)
    for b, needle in ((other, "score different clips"), (bare, "bare/per_class.csv: no such file"),
                      (tmp_path / "none.h5", "none.h5: no such predictions file")):
        assert main(["--preds", str(a), str(b), "--out", str(tmp_path / "o")]) != 0
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    assert main(["--preds", str(a), str(a), "--ckpts", "x", "y", "--out", str(tmp_path / "o")]) != 0
    assert "one of them" in capsys.readouterr().err


# ---- per class and ontology
def _ontology(path: Path, mids: list[str]) -> Path:
    entries = [
        {"id": "/top/a", "name": "Alpha", "child_ids": [mids[0], "/mid/x"]},
        {"id": "/mid/x", "name": "X", "child_ids": [mids[1], mids[2]]},
        {"id": mids[0], "name": "c0", "child_ids": []}, {"id": mids[1], "name": "c1", "child_ids": []},
        {"id": mids[2], "name": "c2", "child_ids": [mids[0]]},  # c0 twice under Alpha: counted once
        {"id": mids[3], "name": "Beta", "child_ids": [mids[4]]},  # a top-level category that is a class
        {"id": mids[4], "name": "c4", "child_ids": []},
    ]
    path.write_text(json.dumps(entries))
    return path


def test_top_level_categories_and_their_means(tmp_path):
    mids = [f"/m/{i}" for i in range(6)]
    cats = top_level_classes(read_ontology(_ontology(tmp_path / "ontology.json", mids)), mids)
    assert [(c["name"], c["classes"]) for c in cats] == [("Alpha", [0, 1, 2]), ("Beta", [3, 4])]
    ap = np.array([0.1, 0.2, np.nan, 0.5, 0.7, 0.9])
    auc = np.array([0.6, 0.7, np.nan, 0.8, 0.9, 1.0])
    rows = category_scores(cats, ap, auc)
    assert rows[0]["mAP"] == pytest.approx(0.15) and rows[0]["classes"] == 3 and rows[0]["classes_scored"] == 2
    assert rows[1]["mAP"] == pytest.approx(0.6) and rows[1]["mAUC"] == pytest.approx(0.85)


@pytest.mark.parametrize("content,needle", [("{}", "expected a list"), ("[{\"id\": 1}]", "entry 0"),
                                            ("not json", "not a readable ontology.json")])
def test_bad_ontology_is_named(tmp_path, content, needle):
    (tmp_path / "ontology.json").write_text(content)
    with pytest.raises(ValueError, match=needle):
        read_ontology(tmp_path / "ontology.json")


def test_evaluate_reports_intervals_training_positives_and_categories(trained_run, demo_root, tmp_path):
    from aer.data.convert import load_split
    from aer.data.labels import read_class_labels
    from aer.evaluate import run

    root = tmp_path / "data"  # the demo data with an ontology beside it
    shutil.copytree(demo_root, root, ignore=shutil.ignore_patterns("aer_cache"))
    mids = [mid for mid, _ in read_class_labels(root)]
    _ontology(root / "ontology.json", mids)
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    for split in ("val", "eval"):
        out = tmp_path / split
        m = run(config("evaluate", [f"ckpt={ckpt}", f"split={split}", f"data.root={root}",
                                         "bootstrap.replicates=200", f"paths.output_dir={out}"]))
        with h5py.File(out / "predictions.h5") as f:
            probs, labels = torch.from_numpy(f["probs"][()]), torch.from_numpy(f["labels"][()])
        pre = {"val": "val", "eval": "test"}[split]  # the keys training's validation and trainer.test use
        for k, v in bootstrap_ci(probs, labels, 200, 0.95, seed=0).items():
            assert m[f"{pre}/{k}"] == pytest.approx(v, abs=1e-12), k
        assert m[f"{pre}/mAP_ci_low"] < m[f"{pre}/mAP_ci_high"] and m["bootstrap_replicates"] == 200
        rows = list(csv.DictReader(open(out / "per_class.csv")))
        cached = load_split(root / "aer_cache" / "bal_train.h5")
        train = cached["labels"]
        if split == "val":  # the dev 80%: the clips the model trained on, as the data module splits them
            from aer.data.datamodule import dev_split

            train = train[dev_split(cached["video_id"], 0.2, 0)[0]]
        assert [int(r["train_positives"]) for r in rows] == train.sum(0).tolist()
        cats = list(csv.DictReader(open(out / "per_category.csv")))
        assert [c["name"] for c in cats] == ["Alpha", "Beta"]
        ap = np.array([float(r["AP"]) if r["AP"] else np.nan for r in rows])
        expect = np.nanmean(ap[[0, 1, 2]]) if not np.isnan(ap[[0, 1, 2]]).all() else None
        if expect is not None:
            assert float(cats[0]["mAP"]) == pytest.approx(expect) == m[f"{pre}/category/Alpha/mAP"]
    m = run(config("evaluate", [f"ckpt={ckpt}", "split=eval", "bootstrap.replicates=0",
                                     f"paths.output_dir={tmp_path / 'plain'}"]))
    assert "test/mAP_ci_low" not in m
    cats = list(csv.DictReader(open(tmp_path / "plain" / "per_category.csv")))  # the demo set's own ontology
    assert [c["name"] for c in cats] == ["Demo stationary sounds", "Demo transient sounds"]


def test_bootstrap_types_are_checked_when_composing():
    for name in ("evaluate", "ensemble"):
        with pytest.raises(Exception, match="bootstrap.seed=x"):
            compose_cfg(name, ["ckpt=x.ckpt" if name == "evaluate" else "ckpts=[x.ckpt]", "bootstrap.seed=x"])


@pytest.mark.parametrize("override,needle", [("bootstrap.replicates=-1", "bootstrap.replicates=-1"),
                                             ("bootstrap.level=1.5", "bootstrap.level=1.5")])
def test_bootstrap_settings_are_checked(override, needle, tmp_path):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        config("evaluate", ["ckpt=x.ckpt", override, f"paths.output_dir={tmp_path}"])
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        config("ensemble", ["ckpts=[x.ckpt]", override, f"paths.output_dir={tmp_path}"])
