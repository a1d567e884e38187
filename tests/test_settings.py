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

from aer.config import build
from aer.launch import DDP_ENV, ddp_child_command, ddp_launch, job_state
from aer.settings import (
    INITS,
    MODELS,
    AugmentSettings,
    DataSettings,
    DistillSettings,
    OptimSettings,
    SwaSettings,
    TrainSettings,
)
from conftest import CONF, compose_cfg, config

OUT = "paths.output_dir=/tmp/out"


def test_composed_defaults_are_the_declared_ones():
    c = config("train", ["data=audioset", "data.root=/x", OUT])
    assert c.optim == OptimSettings() and c.augment == AugmentSettings() and c.swa == SwaSettings()
    assert c.distill == DistillSettings() and not DistillSettings().enabled
    declared = DataSettings(root="/x").as_dict()
    chosen = ("seed", "convert_workers")  # what conf/data/audioset.yaml sets for train.py runs
    assert {k: v for k, v in c.data.as_dict().items() if k not in chosen} == {k: v for k, v in declared.items()
                                                                              if k not in chosen}
    assert c.data.seed == c.seed == TrainSettings().seed  # data.seed follows the run's seed
    assert c.data.convert_workers == 2 and declared["convert_workers"] == 1
    for name, settings in MODELS.items():
        assert config("train", [f"model={name}", OUT]).model.settings == settings(), name
    for name, settings in INITS.items():
        assert config("train", [f"init={name}", OUT]).init.settings == settings(), name


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
    cfg = compose_cfg("train", [*override.split(), OUT])
    with pytest.raises(ValueError, match="^" + message.replace(".", r"\.").replace("[", r"\[")):
        build("train", cfg)


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
    from aer.train import tagger

    hp = tagger(config("train", ["model=skiplstm", "init=orthogonal", "data.normalize=standardize",
                                 "optim.lr=0.01", "augment.mixup_alpha=0.2", OUT])).hparams
    assert (hp["model"], hp["init"], hp["normalize"]) == ("skiplstm", "orthogonal", "standardize")
    assert hp["model_kwargs"] == MODELS["skiplstm"]().as_dict()  # stored complete, nested as in the config
    assert hp["optim"] == OptimSettings(lr=0.01).as_dict() and hp["augment"]["mixup_alpha"] == 0.2


@pytest.mark.parametrize("name", ["evaluate", "ensemble", "thresholds"])
def test_scoring_configs_take_the_data_schema(name):
    cfg = compose_cfg(name, ["ckpt=x.ckpt", "data.batch_size=7"] if name != "ensemble" else ["data.batch_size=7"])
    fields = {f.name for f in dataclasses.fields(DataSettings)}
    assert set(cfg.data) == fields
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


# ---- every rule in one place: aer.schema.check
def _sections() -> list[type]:
    """Every settings class a command builds (its nested sections included)."""
    from aer import settings as s
    from aer.schema import sections

    roots = [s.TrainConfig, s.TrainerSettings, *s.MODELS.values(), *s.INITS.values(), s.EvaluateConfig,
             s.EnsembleConfig, s.ThresholdsConfig, s.PredictConfig, s.ExportConfig, s.ConvertConfig, s.DemoConfig,
             s.DownloadConfig, s.ReportConfig, s.CompareConfig, s.DataSettings]
    return list(dict.fromkeys(c for r in roots for c in sections(r)))


def _bad(hint):
    """A value the setting's rule refuses, or None where it has none."""
    from aer.schema import choices, has_rule, split_hint

    if not has_rule(hint):
        return None
    bare, rng, _ = split_hint(hint)
    if choices(hint):
        return "bogus"
    if bare is bool:
        return "yes"
    if bare is str:
        return 3
    if rng is None:
        return "x"
    if rng.lo is not None:
        return rng.lo if rng.open_lo else rng.lo - 1
    return rng.hi if rng.open_hi else rng.hi + 1


def _valid_values(cls) -> dict:
    """Values for the settings that have no default (a path, a folder)."""
    import dataclasses

    from omegaconf import MISSING

    return {f.name: "x" for f in dataclasses.fields(cls) if f.default is MISSING
            or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)}


def _rules() -> list[tuple]:
    import dataclasses

    from aer.schema import hints

    return [(cls, f.name, bad) for cls in _sections() for f in dataclasses.fields(cls)
            if not f.metadata.get("internal") and (bad := _bad(hints(cls)[f.name])) is not None]


def test_the_walk_covers_the_settings_users_type():
    walked = {(c.__name__, name) for c, name, _ in _rules()}
    assert {("DataSettings", "batch_size"), ("OptimSettings", "lr"), ("TrainerSettings", "max_epochs"),
            ("EvaluateConfig", "split"), ("PredictConfig", "top_k"), ("ConvertConfig", "workers"),
            ("FCSettings", "activation"), ("KaimingInit", "nonlinearity"), ("BootstrapSettings", "level")} <= walked
    assert len(walked) > 80


def test_every_rule_is_applied_in_one_place_only(monkeypatch):
    """Each setting with a rule, given a bad value: its section refuses it in one line naming it, and the
    refusal comes from aer.schema.check; with that one check switched off, nothing else refuses it (neither
    the section, nor the data module or the Tagger built from it)."""
    import traceback

    import aer.module
    import aer.schema
    import aer.settings
    from aer.data.datamodule import AudioSetDataModule
    from aer.module import Tagger
    from aer.settings import INITS, MODELS, AugmentSettings, DataSettings, OptimSettings

    for cls, name, bad in _rules():
        key = f"{cls.KEY}.{name}" if cls.KEY else name
        with pytest.raises(ValueError) as refused:
            cls.build({**_valid_values(cls), name: bad})
        assert str(refused.value).startswith(f"{key}={bad!r}: expected "), (cls.__name__, str(refused.value))
        where = traceback.extract_tb(refused.value.__traceback__)[-1]
        assert where.filename.endswith("aer/schema.py") and where.name == "check", (key, where)

    real = aer.schema.check
    for module in (aer.schema, aer.settings, aer.module):
        monkeypatch.setattr(module, "check", lambda *a: None)
    for cls, name, bad in _rules():
        try:
            section = cls.build({**_valid_values(cls), name: bad})  # no second rule in the section's own code
            if cls is DataSettings:
                AudioSetDataModule(section)
            elif cls in (*MODELS.values(), *INITS.values(), OptimSettings, AugmentSettings):
                kind = {**{m: ("model", n) for n, m in MODELS.items()}, **{i: ("init", n) for n, i in INITS.items()}}
                args = {"model": "fc", "init": "xavier"}
                if cls in kind:
                    what, option = kind[cls]
                    args.update({what: option, f"{what}_kwargs": section})
                else:
                    args[cls.KEY] = section
                Tagger(**args)
        except Exception as e:  # noqa: BLE001 — where a bad value breaks something, it must not be a second rule
            key = f"{cls.KEY}.{name}" if cls.KEY else name
            assert not (isinstance(e, ValueError) and key in str(e)), f"a second rule for {key}: {e}"
    monkeypatch.setattr(aer.schema, "check", real)


def test_the_errors_doc_shows_what_the_one_rule_says():
    """docs/errors.md's config lines for these settings are the messages aer.schema.check gives."""
    import re

    doc = (CONF.parent / "docs" / "errors.md").read_text()
    rows = re.findall(r"^\| `([\w.]+)=([^`\s]+)` \| `python train.py [^`]+` \| `error: ([^`]+)` \|$", doc, re.M)
    from aer.settings import INITS, MODELS, InitSection, ModelSection

    defaults = (MODELS["fc"], INITS["xavier"])  # what `python train.py model.X=... init.X=...` builds
    checked = 0
    for key, text, message in rows:
        for cls, name, _ in _rules():
            if (f"{cls.KEY}.{name}" if cls.KEY else name) != key:
                continue
            if issubclass(cls, (ModelSection, InitSection)) and cls not in defaults:
                continue
            value = OmegaConf.create({"v": text}).v if not text.lstrip("-").replace(".", "").isdigit() else \
                (float(text) if "." in text or key.endswith(("lr", "alpha", "smoothing", "dropout", "fraction"))
                 else int(text))
            with pytest.raises(ValueError) as refused:
                cls.build({**_valid_values(cls), name: value})
            if message.startswith(f"{key}="):  # (a wrong type fails when composing, in OmegaConf's words)
                assert str(refused.value) == message, key
                checked += 1
    assert checked >= 5, rows
