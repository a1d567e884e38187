"""Settings declared once (aer.settings): the composed configs carry their defaults and types, values are
checked with one rule set, evaluate/ensemble/thresholds take the same data schema, final mode is a config
overlay, and a training job leaves the process as it found it."""

from __future__ import annotations

import dataclasses
import os

import pytest
import pytorch_lightning as pl
import pytorch_lightning.strategies.launchers.subprocess_script as subprocess_script
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from aer.config import plain, sections, tagger_kwargs
from aer.launch import DDP_ENV, ddp_child_command, ddp_launch, job_state
from aer.settings import INITS, MODELS, AugmentSettings, DataSettings, OptimSettings, SwaSettings, TrainSettings
from conftest import CONF, compose_cfg


def test_composed_defaults_are_the_declared_ones():
    cfg = compose_cfg("train", ["data=audioset", "data.root=/x"])
    assert plain(cfg.optim) == OptimSettings().as_dict()
    assert plain(cfg.augment) == AugmentSettings().as_dict() and plain(cfg.swa) == SwaSettings().as_dict()
    from aer.settings import DistillSettings

    assert plain(cfg.distill) == DistillSettings().as_dict() and not DistillSettings().enabled
    declared = DataSettings(root="/x").as_dict()
    chosen = ("seed", "convert_workers")  # what conf/data/audioset.yaml sets for train.py runs
    assert {k: v for k, v in plain(cfg.data).items() if k not in chosen} == {k: v for k, v in declared.items()
                                                                              if k not in chosen}
    assert cfg.data.seed == cfg.seed == TrainSettings().seed  # data.seed follows the run's seed
    assert cfg.data.convert_workers == 2 and declared["convert_workers"] == 1
    for name, settings in MODELS.items():
        assert plain(compose_cfg("train", [f"model={name}"]).model) == settings().as_dict(), name
    for name, settings in INITS.items():
        assert plain(compose_cfg("train", [f"init={name}"]).init) == settings().as_dict(), name


@pytest.mark.parametrize("override, match", [
    ("data.batch_size=abc", "Value 'abc' of type 'str' could not be converted to Integer"),  # its type
    ("seed=x", "Value 'x' of type 'str' could not be converted to Integer"),
    ("data.batch_sise=5", "Could not override 'data.batch_sise'"),  # a key that is not a setting
    ("optim.lrate=0.1", "Could not override 'optim.lrate'"),
])
def test_wrong_types_and_unknown_keys_fail_when_composing(override, match):
    with pytest.raises(Exception) as info:
        compose_cfg("train", [override])
    text = " ".join(str(e) for e in (info.value, info.value.__cause__) if e is not None)
    assert match in text, text


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=0", "data.batch_size=0: expected a positive integer"),
    ("data.mode=test", "data.mode='test': expected one of dev, final"),
    ("data.normalize=z", "data.normalize='z': expected one of unit, standardize"),
    ("optim.lr=0", "optim.lr=0.0: expected a number above 0"),
    ("optim.scheduler=exp", "optim.scheduler='exp': expected one of none, cosine, step"),
    ("augment.label_smoothing=2", "augment.label_smoothing=2.0: expected a number between 0 and 1"),
    ("swa.annealing_epochs=0", "swa.annealing_epochs=0: expected a positive integer"),
    ("threads=0", "threads=0: expected a positive integer or null"),
    ("model.dropout=1.5", "model.dropout=1.5: expected a number between 0 and 1"),
    ("model=skiplstm model.pool=avg", "model.pool='avg': expected one of flatten, mean, max"),
    ("init=normal init.std=-1", "init.std=-1.0: expected a number at least 0"),
    ("data.demo.clips=0", "data.demo.clips=0: expected a positive integer"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0: expected a positive integer"),
    ("+data.batch_sise=5", "data.batch_sise: not a setting here"),  # appended past the schema: caught here
])
def test_values_are_checked_by_the_declared_rules(override, message):
    cfg = compose_cfg("train", override.split())
    with pytest.raises(ValueError, match="^" + message.replace(".", r"\.").replace("[", r"\[")):
        sections(cfg)


def test_the_objects_check_with_the_same_rules():
    from aer.data.datamodule import AudioSetDataModule
    from aer.module import Tagger

    with pytest.raises(ValueError, match=r"^data\.batch_size=0: expected a positive integer$"):
        AudioSetDataModule(root="/x", batch_size=0)
    with pytest.raises(ValueError, match=r"^optim\.lr=-1: expected a number above 0$"):
        Tagger(model="fc", init="xavier", optim={"lr": -1})
    with pytest.raises(ValueError, match=r"^augment\.mixup: not a setting here"):
        Tagger(model="fc", init="xavier", augment={"mixup": 0.2})


def test_tagger_arguments_are_the_config_keys():
    cfg = compose_cfg("train", ["model=skiplstm", "init=orthogonal", "data.normalize=standardize",
                                "optim.lr=0.01", "augment.mixup_alpha=0.2"])
    kw = tagger_kwargs(cfg)
    assert (kw["model"], kw["init"], kw["normalize"]) == ("skiplstm", "orthogonal", "standardize")
    assert kw["model_kwargs"] == MODELS["skiplstm"]().as_dict() and kw["optim"]["lr"] == 0.01
    from aer.module import Tagger

    hp = Tagger(**kw).hparams  # stored complete, nested as in the config
    assert hp["optim"] == OptimSettings(lr=0.01).as_dict() and hp["augment"]["mixup_alpha"] == 0.2


@pytest.mark.parametrize("name", ["evaluate", "ensemble", "thresholds"])
def test_scoring_configs_take_the_data_schema(name):
    cfg = compose_cfg(name, ["ckpt=x.ckpt", "data.batch_size=7"] if name != "ensemble" else ["data.batch_size=7"])
    fields = {f.name for f in dataclasses.fields(DataSettings)}
    assert set(cfg.data) - {"_target_"} == fields
    assert cfg.data.batch_size == 7 and all(cfg.data[k] is None for k in fields - {"batch_size"})
    with pytest.raises(Exception, match="batch_sise"):
        compose_cfg(name, ["ckpt=x.ckpt", "data.batch_sise=7"] if name != "ensemble" else ["data.batch_sise=7"])


def test_final_mode_is_a_config_overlay():
    dev, final = (compose_cfg("train", [f"data.mode={m}"]) for m in ("dev", "final"))
    assert (dev.trainer.limit_val_batches, dev.callbacks.model_checkpoint.monitor,
            dev.callbacks.model_checkpoint.filename) == (None, "val/mAP", "best")
    assert (final.trainer.limit_val_batches, final.callbacks.model_checkpoint.monitor,
            final.callbacks.model_checkpoint.filename) == (0, None, "final")
    # what .hydra/config.yaml holds (unresolved) resolves to what ran
    saved = OmegaConf.create(OmegaConf.to_yaml(final))
    assert saved.trainer.limit_val_batches == 0 and saved.callbacks.model_checkpoint.filename == "final"


def test_job_state_puts_threads_and_environment_back():
    before = torch.get_num_threads()
    os.environ.pop("MASTER_PORT", None)
    with job_state(threads=1):
        assert torch.get_num_threads() == 1
        os.environ["MASTER_PORT"] = "12910"  # as Lightning's DDP launch leaves it
    assert torch.get_num_threads() == before and "MASTER_PORT" not in os.environ
    with pytest.raises(RuntimeError), job_state(threads=1):
        raise RuntimeError("a failed job")
    assert torch.get_num_threads() == before
    assert set(DDP_ENV) >= {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE"}


def test_ddp_launch_patches_lightning_for_one_fit_and_restores_it(tmp_path):
    original = subprocess_script._hydra_subprocess_cmd
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False)
    cfg = compose_cfg("train", [])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_cfg = compose("train", ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
    with open_dict(hydra_cfg):
        hydra_cfg.hydra.runtime.output_dir = str(tmp_path / "0")
        hydra_cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(hydra_cfg)
    try:
        with pytest.raises(RuntimeError, match="fit failed"), ddp_launch(trainer):
            assert subprocess_script._hydra_subprocess_cmd is ddp_child_command
            raise RuntimeError("fit failed")
        assert subprocess_script._hydra_subprocess_cmd is original
        cmd, _ = ddp_child_command(1)
        assert f'hydra.run.dir="{tmp_path / "0"}"' in cmd and not any(a.startswith("hydra.mode") for a in cmd)
    finally:
        HydraConfig.instance().cfg = None
    assert cfg.seed == TrainSettings().seed
    with ddp_launch(trainer):  # no Hydra run: Lightning's own command
        assert subprocess_script._hydra_subprocess_cmd is original


def test_a_later_job_starts_with_the_previous_jobs_cycles_collected():
    import gc
    import weakref

    class Trainer:  # as Lightning's: held in a reference cycle with its callbacks
        pass

    with job_state(threads=None):
        trainer = Trainer()
        trainer.callbacks = [trainer]
    gone = weakref.ref(trainer)
    del trainer
    gc.disable()  # the automatic collector would reach it only after many jobs; here not at all
    try:
        assert gone() is not None
        with job_state(threads=None):
            assert gone() is None  # collected before the next job's work
    finally:
        gc.enable()
