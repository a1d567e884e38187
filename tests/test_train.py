"""Training: configs compose, experiments smoke-run, sweeps run as users type them, runs repeat."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aer.train import run
from conftest import CONF, ROOT, config, run_script, train_overrides

GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml"))
          for g in ("model", "init", "data", "trainer", "experiment")}
EXPERIMENTS = GROUPS["experiment"]


BUILDS = {"model": ("net",), "init": ("net",), "data": ("data",), "trainer": ("trainer",),
          "experiment": ("net", "data", "trainer")}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_config_option_builds_what_it_names(group, option, tmp_path):
    """What an option chooses builds: a network and an init registered under the names it gives, a
    DataModule, a Trainer (the GPU presets built on the CPU here); an experiment all three."""
    import hydra.utils
    import torch

    from aer.data.datamodule import AudioSetDataModule
    from aer.init import apply_init
    from aer.models import build_net

    c = config("train", [f"{group}={option}", f"paths.output_dir={tmp_path}"])
    if group in ("model", "init"):
        assert getattr(c, group).name == option

    for what in BUILDS[group]:
        if what == "net":
            net = apply_init(build_net(c.model.name, c.model.settings), c.init.name, c.init.settings)
            assert net(torch.rand(2, 10, 128), torch.tensor([10, 3])).shape == (2, 527)
        elif what == "data":
            dm = AudioSetDataModule(c.data)
            assert (dm.mode, dm.batch_size) == (c.data.mode, c.data.batch_size)
        else:
            kwargs = c.lightning["trainer"]
            on_cpu = {"accelerator": "cpu", "devices": 1} if kwargs["accelerator"] == "gpu" else {}
            trainer = hydra.utils.instantiate(kwargs, logger=False, enable_checkpointing=False, **on_cpu)
            assert trainer.max_epochs == c.trainer.max_epochs


@pytest.mark.slow  # a Trainer, data and a network per experiment (the fast set builds them)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_smoke_runs(experiment, demo_root, tmp_path):
    result = run(config("train", train_overrides(demo_root, tmp_path, f"experiment={experiment}",
                                                 "trainer.fast_dev_run=1", "data.batch_size=64")))
    assert result["status"] == "ok"
    assert (tmp_path / "metrics.json").exists()


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_dev_run_writes_metrics_and_checkpoints(trained_run):
    m = _metrics(trained_run)
    for key in ("val/mAP", "val/mAUC", "val/mAP_best", "train/clips_per_s"):
        assert isinstance(m[key], float), key
    assert 0 < m["val/mAP"] <= 1 and 0 < m["val/mAUC"] <= 1
    assert m["val/mAP_best"] >= m["val/mAP"] - 1e-12
    ckpts = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    assert ckpts == ["best.ckpt", "last.ckpt"]
    assert not any("=" in name for name in ckpts)
    assert list((trained_run / "tensorboard" / "train").glob("events.out.tfevents.*"))  # a run named by its task


def test_training_loss_logged_per_epoch_and_at_logging_steps(trained_run):
    """train/loss_epoch once an epoch, train/loss_step at the steps the logger writes (every 10th)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    ea = EventAccumulator(str(trained_run / "tensorboard" / "train"), size_guidance={SCALARS: 0})
    ea.Reload()
    m = _metrics(trained_run)
    epoch_losses = [e.value for e in ea.Scalars("train/loss_epoch")]
    assert len(epoch_losses) == m["epochs"] and abs(epoch_losses[-1] - m["train/loss_epoch"]) < 1e-6
    steps = [e.step for e in ea.Scalars("train/loss_step")]
    assert steps and len(steps) == m["global_step"] // 10 and all((s + 1) % 10 == 0 for s in steps)


@pytest.mark.parametrize("steps_per_fetch", [1, 2])
def test_epoch_loss_is_the_clip_weighted_mean_of_step_losses(demo_root, tmp_path, steps_per_fetch):
    import dataclasses

    import pytorch_lightning as pl

    from aer.data.datamodule import AudioSetDataModule
    from aer.train import tagger

    c = config("train", train_overrides(demo_root, tmp_path))
    # 128 does not divide the split; in blocks of 2 batches, the output is the block's clip-weighted mean
    dm = AudioSetDataModule(dataclasses.replace(c.data, batch_size=128, steps_per_fetch=steps_per_fetch))
    seen: list[tuple[float, int]] = []

    class Record(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.clear()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((float(outputs["loss"]), len(batch["y"])))

    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
                         use_distributed_sampler=False, num_sanity_val_steps=0)
    trainer.fit(tagger(c), datamodule=dm)
    assert len({n for _, n in seen}) == 2, "the last batch is a short one"
    expected = sum(v * n for v, n in seen) / sum(n for _, n in seen)
    assert abs(float(trainer.callback_metrics["train/loss_epoch"]) - expected) < 1e-6


def test_checkpoint_rebuilds_without_config(trained_run):
    import torch

    from aer.module import Tagger

    path = trained_run / "checkpoints" / "best.ckpt"
    model = Tagger.load_from_checkpoint(path, weights_only=True, map_location="cpu")
    assert model.hparams.model == "fc"
    x = torch.rand(3, 10, 128)
    assert model(x, torch.tensor([10, 5, 1])).shape == (3, 527)
    stored = torch.load(path, weights_only=True, map_location="cpu")["datamodule_hyper_parameters"]
    assert stored["mode"] == "dev" and stored["val_fraction"] == 0.2


@pytest.mark.slow  # two LSTM trainings
def test_same_command_twice_gives_same_metrics(demo_root, tmp_path):
    results = []
    for name in ("a", "b"):
        out = tmp_path / name
        results.append(run(config("train", train_overrides(demo_root, out, "model=skiplstm",
                                                                "model.hidden=16"))))
    keys = ("val/mAP", "val/mAUC", "train/loss_epoch")
    assert [results[0][k] for k in keys] == [results[1][k] for k in keys]


def test_metrics_describe_the_final_weights_when_validating_every_n_epochs(demo_root, tmp_path):
    """trainer.check_val_every_n_epoch=N: where N does not divide the epochs, fit's last validation is
    an earlier epoch's; the run then validates the final weights, so metrics.json says what they score."""
    results = {}
    for every in (1, 2, 3):
        out = tmp_path / str(every)
        results[every] = run(config("train", train_overrides(
            demo_root, out, "trainer.max_epochs=3", f"trainer.check_val_every_n_epoch={every}")))
        assert results[every]["epochs"] == 3
        assert json.loads((out / "metrics.json").read_text())["val/mAP"] == results[every]["val/mAP"]
    for every in (2, 3):
        for key in ("val/mAP", "val/mAUC"):
            assert results[every][key] == pytest.approx(results[1][key], abs=1e-6), (every, key)
        assert results[every]["val/mAP_best"] >= results[every]["val/mAP"]
    import torch

    # last.ckpt is still written after every epoch: it holds the final weights
    for every in (1, 2, 3):
        last = torch.load(results[every]["last_ckpt"], weights_only=True, map_location="cpu")
        assert (last["epoch"], last["global_step"]) == (2, results[1]["global_step"]), every


def test_final_mode_tests_last_epoch_on_eval(demo_root, tmp_path):
    result = run(config("train", train_overrides(demo_root, tmp_path, "data.mode=final")))
    for key in ("test/mAP", "test/mAUC", "test/dprime"):
        assert isinstance(result[key], float), key
    assert "val/mAP" not in result
    assert (tmp_path / "checkpoints" / "final.ckpt").exists()


@pytest.mark.slow
def test_multirun_as_users_type_it(demo_root, tmp_path):
    overrides = [o for o in train_overrides(demo_root, tmp_path) if not o.startswith("paths.output_dir")]
    proc = run_script("train.py", "-m", "model=fc,skiplstm", "init=xavier,kaiming", "model.hidden=16",
                      "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                      *[o for o in overrides if not o.startswith(("trainer.max_epochs", "model.hidden"))])
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 4
    for job in jobs:
        m = _metrics(job)
        assert m["status"] == "ok", m
        assert m["val/mAP"] > 0
    summary = (sweep / "summary.md").read_text()
    assert summary.count("| ok |") == 4
    assert (sweep / "summary.csv").read_text().count("\n") == 5


@pytest.mark.slow
def test_failed_job_is_recorded_and_sweep_goes_on(demo_root, tmp_path):
    overrides = [o for o in train_overrides(demo_root, tmp_path) if not o.startswith("paths.output_dir")]
    proc = run_script("train.py", "-m", "optim.lr=0.001,-1", "trainer.max_epochs=1",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}",
                      *[o for o in overrides if not o.startswith("trainer.max_epochs")])
    assert proc.returncode == 1 and "error: 1 of 2 jobs failed" in proc.stderr, proc.stderr[-3000:]
    ok, bad = _metrics(tmp_path / "sweep" / "0"), _metrics(tmp_path / "sweep" / "1")
    assert ok["status"] == "ok" and ok["val/mAP"] > 0
    assert bad["status"] == "failed" and "optim.lr=-1" in bad["error"]
    summary = (tmp_path / "sweep" / "summary.md").read_text()
    assert "failed" in summary and "optim.lr=-1" in summary


@pytest.mark.slow
@pytest.mark.parametrize("override,needle", [
    ("model=conformer", "Available options in 'model'"),
    ("init=zeros", "Available options in 'init'"),
    ("data.batch_size=-5", "data.batch_size=-5: expected a positive integer"),
    ("data.mode=test", "data.mode='test': expected one of dev, final"),
    ("data.train_split=everything", "data.train_split='everything'"),
])
def test_config_mistakes_fail_before_work(override, needle, demo_root, tmp_path):
    proc = run_script("train.py", *train_overrides(demo_root, tmp_path), override, f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert needle in proc.stderr + proc.stdout
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_missing_split_folders_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_script("train.py", "data=audioset", f"data.root={empty}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()[-1]
    assert "bal_train" in err and str(empty) in err and "download" in err
    assert "Traceback" not in proc.stderr


def test_non_finite_loss_stops_with_advice(demo_root, tmp_path):
    import pytorch_lightning as pl
    import torch

    from aer.data.datamodule import AudioSetDataModule
    from aer.module import NonFiniteLossError, Tagger

    model = Tagger(model="fc", init="xavier")
    with torch.no_grad():
        model.net.net[0].weight.fill_(float("nan"))
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    dm = AudioSetDataModule(demo_root, cache_dir=str(tmp_path / "cache"), demo={"clips": 600, "eval_clips": 300})
    with pytest.raises(NonFiniteLossError, match=r"at epoch 0, step 0: try a lower optim.lr"):
        trainer.fit(model, datamodule=dm)


def test_heap_frozen_while_fitting_and_thawed_after(demo_root, tmp_path):
    """train.py freezes the objects that exist at the start of fit (no full GC passes over them in the
    training loop) and hands them back when fit ends, normally or with an error."""
    import gc

    import pytorch_lightning as pl

    from aer.callbacks import FrozenHeap
    from aer.data.datamodule import AudioSetDataModule
    from aer.module import Tagger

    c = config("train", train_overrides(demo_root, tmp_path))
    seen = []

    class Probe(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(gc.get_freeze_count())
            if trainer.current_epoch == 1 and fail:
                raise RuntimeError("boom")

    assert gc.get_freeze_count() == 0
    for fail in (False, True):
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                             callbacks=[FrozenHeap(), Probe()], num_sanity_val_steps=0)
        dm = AudioSetDataModule(c.data)
        if fail:
            with pytest.raises(RuntimeError, match="boom"):
                trainer.fit(Tagger(model="fc", init="xavier"), datamodule=dm)
        else:
            trainer.fit(Tagger(model="fc", init="xavier"), datamodule=dm)
        assert gc.get_freeze_count() == 0
    assert len(seen) == 4 and all(n > 10_000 for n in seen)


@pytest.mark.slow  # torch.compile's first compilation takes tens of seconds on a CPU
def test_compile_trains_and_keeps_the_checkpoint_loadable(demo_root, tmp_path):
    import torch

    from aer.checkpoint import Checkpoint

    result = run(config("train", train_overrides(demo_root, tmp_path, "compile=true", "trainer.max_epochs=1")))
    assert result["status"] == "ok" and result["val/mAP"] > 0
    tagger = Checkpoint.load(tmp_path / "checkpoints" / "last.ckpt").tagger()  # plain keys: no compile wrapper names
    assert not any("_orig_mod" in k for k in tagger.state_dict())
    x = torch.randint(0, 256, (3, 10, 128), dtype=torch.uint8)
    assert tagger.predict_proba(x, torch.tensor([10, 4, 1])).shape == (3, 527)


# imported by no train job (trackers only with logger=mlflow|wandb, Optuna with hparams_search=, ONNX by export);
# all of them are installed with the test extra, so a job that pulled one in would show it here. matplotlib and
# scipy are Lightning's own imports (torchmetrics' plotting, lightning_fabric's checks), not aer's: docs/speed.md
NOT_IMPORTED = ("mlflow", "wandb", "optuna", "onnx", "onnxruntime", "sklearn", "jax")


def test_a_job_imports_nothing_it_does_not_use(demo_root, tmp_path):
    """`python train.py ...` as a user runs it, the modules it imported listed at its exit."""
    listing = tmp_path / "modules.txt"
    code = ("import atexit, runpy, sys\n"
            f"atexit.register(lambda: open({str(listing)!r}, 'w').write('\\n'.join(sys.modules)))\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "train.py"),
                           *train_overrides(demo_root, tmp_path / "run", "trainer.max_epochs=1")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    top = {m.split(".")[0] for m in listing.read_text().split()}
    assert "pytorch_lightning" in top and (tmp_path / "run" / "metrics.json").exists()
    assert not top & set(NOT_IMPORTED), sorted(top & set(NOT_IMPORTED))
