"""Blocks of optimizer steps (data.steps_per_fetch): the same training as one step a fetch, and as a plain loop."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import StochasticWeightAveraging

from aer.data.datamodule import AudioSetDataModule
from aer.data.sampler import EpochBatchSampler
from aer.module import Tagger
from conftest import compose_cfg, train_overrides

SEED, BATCH, EPOCHS = 5, 64, 3  # 480 training clips: 7 full batches and a short one an epoch
# Dropout draws from torch's generator, which Lightning's loaders also draw from (a seed per iterator):
# a plain loop without loaders would see other masks, so the comparison with it runs without dropout.
NO_DROPOUT = {"fc": {}, "attention": {"dropout": 0.0}}


def _dm(demo_root, tmp_path, steps: int) -> AudioSetDataModule:
    return AudioSetDataModule(root=str(demo_root), cache_dir=str(tmp_path / "cache"), batch_size=BATCH, seed=SEED,
                              steps_per_fetch=steps)


def _fit(demo_root, tmp_path, steps: int, optim: dict | None = None, swa: bool = False, logger=False,
         model: str = "fc", extra: tuple = ()) -> tuple[Tagger, pl.Trainer]:
    pl.seed_everything(SEED, verbose=False)
    tagger = Tagger(model=model, init="xavier", optim=optim, model_kwargs=NO_DROPOUT[model])
    callbacks = [StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=2, annealing_epochs=1)] if swa else []
    callbacks += list(extra)
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         use_distributed_sampler=False, log_every_n_steps=3, callbacks=callbacks)
    trainer.fit(tagger, datamodule=_dm(demo_root, tmp_path, steps))
    return tagger, trainer


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def _plain_loop(demo_root, tmp_path, model: str = "fc", after_step=None) -> tuple[torch.nn.Module, int]:
    """The same training as _fit's in a plain loop over the same batches: (the network, the steps taken);
    `after_step(net)` is called after each optimizer step."""
    dm = _dm(demo_root, tmp_path, 1)
    dm.prepare_data()
    dm.setup("fit")
    ds = dm.train_dataloader().dataset
    pl.seed_everything(SEED, verbose=False)
    net = Tagger(model=model, init="xavier", model_kwargs=NO_DROPOUT[model]).net
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sampler, taken = EpochBatchSampler(len(ds), BATCH, True, SEED), 0
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        for idx in sampler:
            b = ds[idx]
            loss = F.binary_cross_entropy_with_logits(net(Tagger.scale(b["features"], b["lengths"]), b["lengths"]),
                                                      b["y"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            taken += 1
            if after_step is not None:
                after_step(net)
    return net, taken


@pytest.mark.parametrize("model", ["fc", "attention"])
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_equal_weights_after_n_steps_against_a_plain_loop(demo_root, tmp_path, steps, model):
    tagger, trainer = _fit(demo_root, tmp_path, steps, model=model)
    net, taken = _plain_loop(demo_root, tmp_path, model)
    assert trainer.global_step == taken == EPOCHS * 8
    _assert_same_weights(tagger.net, net)


@pytest.mark.parametrize("what", ["cosine", "step", "swa"])
def test_blocks_step_the_schedulers_as_lightning_does(demo_root, tmp_path, what):
    optim = {"cosine": {"scheduler": "cosine", "warmup_epochs": 1}, "step": {"scheduler": "step", "step_size": 1,
                                                                              "gamma": 0.5}, "swa": None}[what]
    one, t1 = _fit(demo_root, tmp_path, 1, optim=optim, swa=what == "swa")
    block, t3 = _fit(demo_root, tmp_path, 3, optim=optim, swa=what == "swa")
    _assert_same_weights(one, block)
    assert t1.global_step == t3.global_step
    assert t1.optimizers[0].param_groups[0]["lr"] == t3.optimizers[0].param_groups[0]["lr"]


def test_blocks_log_at_the_same_steps(demo_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def logged(steps: int) -> dict[str, list[tuple[int, float]]]:
        out = tmp_path / f"tb{steps}"
        _fit(demo_root, tmp_path, steps, logger=pl.loggers.TensorBoardLogger(out, name="", version=""))
        acc = EventAccumulator(str(out)).Reload()
        return {tag: [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

    one, block = logged(1), logged(3)
    assert one["train/loss_step"] == block["train/loss_step"]
    assert [s for s, _ in one["train/loss_step"]] == [s for s in range(EPOCHS * 8) if (s + 1) % 3 == 0]
    for tag in ("val/mAP", "train/loss_epoch", "epoch"):
        assert one[tag] == block[tag], tag


def test_gradient_clipping_needs_one_step_a_fetch(demo_root, tmp_path):
    from aer.config import sections

    cfg = compose_cfg("train", train_overrides(demo_root, tmp_path, "trainer.gradient_clip_val=1.0"))
    with pytest.raises(ValueError, match=r"trainer.gradient_clip_val=1.0 .*data.steps_per_fetch=1"):
        sections(cfg)
    sections(compose_cfg("train", train_overrides(demo_root, tmp_path, "trainer.gradient_clip_val=1.0",
                                                  "data.steps_per_fetch=1")))


def test_a_block_without_the_datamodule_is_refused(demo_root, tmp_path):
    dm = _dm(demo_root, tmp_path, 3)
    dm.prepare_data()
    dm.setup("fit")
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="data.steps_per_fetch > 1"):
        trainer.fit(Tagger(model="fc", init="xavier"), train_dataloaders=dm.train_dataloader())


def test_the_default_block_holds_about_2048_clips():
    from aer.settings import DataSettings

    got = {b: DataSettings(root="r", batch_size=b).fetch_steps for b in (1, 50, 100, 500, 1000, 2000, 5000)}
    assert got == {1: 32, 50: 32, 100: 20, 500: 4, 1000: 2, 2000: 1, 5000: 1}
    assert DataSettings(root="r", batch_size=50, steps_per_fetch=3).fetch_steps == 3


def test_a_callback_on_the_step_hooks_sees_every_step_of_a_block(demo_root, tmp_path):
    class Count(pl.Callback):
        def __init__(self):
            self.backward = self.step = 0

        def on_after_backward(self, trainer, pl_module):
            self.backward += 1

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.step += 1

    count = Count()
    hooked, trainer = _fit(demo_root, tmp_path, 3, extra=(count,))
    assert hooked._direct_steps is False  # Lightning's manual_backward and step, with their hooks
    assert count.backward == count.step == trainer.global_step == EPOCHS * 8
    plain, _ = _fit(demo_root, tmp_path, 3)
    assert plain._direct_steps is True
    _assert_same_weights(hooked, plain)


@pytest.mark.parametrize("steps", [1, 3])
def test_the_ema_is_updated_after_every_step_as_in_a_plain_loop(demo_root, tmp_path, steps):
    from aer.callbacks import EMA

    decay = 0.9
    tagger, trainer = _fit(demo_root, tmp_path, steps, extra=(EMA(decay),))
    ema = {}

    def average(net: torch.nn.Module) -> None:  # the first step's weights, then decay * average + (1 - decay) * them
        with torch.no_grad():
            current = {k: v.detach().clone() for k, v in net.state_dict().items()}
            ema.update(current if not ema else {k: decay * ema[k] + (1 - decay) * current[k] for k in ema})

    net, _ = _plain_loop(demo_root, tmp_path, after_step=average)
    assert trainer.global_step == EPOCHS * 8
    # after fit the model holds the average (Lightning copies it in when training ends)
    for name, value in tagger.net.state_dict().items():
        torch.testing.assert_close(value, ema[name], rtol=0, atol=1e-6, msg=name)
    assert not torch.allclose(tagger.net.state_dict()["net.0.weight"], net.state_dict()["net.0.weight"], atol=1e-4)
