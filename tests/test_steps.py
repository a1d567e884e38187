"""aer's one training loop (manual optimization, blocks of 1 to k batches a fetch: data.steps_per_fetch) against
Lightning's own automatic loop with the same Trainer flags (clipping, accumulation), SWA and EMA, and against a
plain loop: the same weights after the same steps."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import StochasticWeightAveraging

from aer.callbacks import EMA
from aer.data.datamodule import AudioSetDataModule
from aer.data.sampler import EpochBatchSampler
from aer.loggers import TensorBoardLogger
from aer.module import Tagger

SEED, BATCH, EPOCHS = 5, 64, 3  # 480 training clips: 7 full batches and a short one an epoch
# Dropout draws from torch's generator, which Lightning's loaders also draw from (a seed per iterator):
# a plain loop without loaders would see other masks, so the comparisons run without dropout.
NO_DROPOUT = {"fc": {}, "attention": {"dropout": 0.0}}


class Automatic(Tagger):
    """The Tagger under Lightning's automatic optimization: the reference aer's loop must equal."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.automatic_optimization = True

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._loss(batch)

    def on_before_optimizer_step(self, optimizer) -> None:  # Lightning clips, from its Trainer flags
        pass

    def _optimizer_steps(self) -> int:
        return int(self.trainer.estimated_stepping_batches)


def _dm(demo_root, tmp_path, steps: int) -> AudioSetDataModule:
    return AudioSetDataModule(root=str(demo_root), cache_dir=str(tmp_path / "cache"), batch_size=BATCH, seed=SEED,
                              steps_per_fetch=steps)


def _fit(demo_root, tmp_path, steps: int | None, optim: dict | None = None, swa: bool = False, ema: float = 0.0,
         model: str = "fc", logger=False, clip: tuple = (None, None), accumulate: int = 1,
         extra: tuple = ()) -> tuple[Tagger, pl.Trainer]:
    """aer's loop on blocks of `steps` batches, or (steps=None) Lightning's automatic loop, with the same flags."""
    pl.seed_everything(SEED, verbose=False)
    cls = Automatic if steps is None else Tagger
    tagger = cls(model=model, init="xavier", optim=optim, model_kwargs=NO_DROPOUT[model])
    callbacks = [StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=2, annealing_epochs=1)] if swa else []
    callbacks += [EMA(ema)] if ema else []
    flags = {"gradient_clip_val": clip[0], "gradient_clip_algorithm": clip[1], "accumulate_grad_batches": accumulate}
    if steps is not None:
        tagger.configure_steps(**flags)
        flags = {}
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         use_distributed_sampler=False, log_every_n_steps=3, callbacks=[*callbacks, *extra], **flags)
    trainer.fit(tagger, datamodule=_dm(demo_root, tmp_path, steps or 1))
    return tagger, trainer


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def _assert_same_training(ours: tuple, lightning: tuple) -> None:
    (a, ta), (b, tb) = ours, lightning
    _assert_same_weights(a, b)
    assert ta.global_step == tb.global_step
    assert ta.optimizers[0].param_groups[0]["lr"] == tb.optimizers[0].param_groups[0]["lr"]


@pytest.mark.parametrize("model", ["fc", "attention"])
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_equal_weights_against_lightnings_automatic_loop(demo_root, tmp_path, steps, model):
    _assert_same_training(_fit(demo_root, tmp_path, steps, model=model), _fit(demo_root, tmp_path, None, model=model))


@pytest.mark.parametrize("clip, accumulate", [((0.05, "norm"), 1), ((0.001, "value"), 1), ((None, None), 2),
                                              ((None, None), 3), ((0.05, "norm"), 3)])
@pytest.mark.parametrize("steps", [1, 3])
def test_trainer_clipping_and_accumulation_as_lightning_takes_them(demo_root, tmp_path, steps, clip, accumulate):
    ours = _fit(demo_root, tmp_path, steps, clip=clip, accumulate=accumulate)
    _assert_same_training(ours, _fit(demo_root, tmp_path, None, clip=clip, accumulate=accumulate))
    # 8 batches an epoch: accumulating 3 steps after batches 3, 6 and the epoch's last
    assert ours[1].global_step == EPOCHS * -(-8 // accumulate)
    if clip[0]:  # the flag did something
        unclipped, _ = _fit(demo_root, tmp_path, steps, accumulate=accumulate)
        assert not torch.equal(ours[0].net.net[0].weight, unclipped.net.net[0].weight)


@pytest.mark.parametrize("optim", [{"scheduler": "cosine", "warmup_epochs": 1},
                                   {"scheduler": "step", "step_size": 1, "gamma": 0.5}], ids=["cosine", "step"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_schedulers_step_as_lightning_steps_them(demo_root, tmp_path, optim, accumulate):
    _assert_same_training(_fit(demo_root, tmp_path, 3, optim=optim, accumulate=accumulate),
                          _fit(demo_root, tmp_path, None, optim=optim, accumulate=accumulate))


@pytest.mark.parametrize("model", ["fc", "attention"])  # attention has BatchNorm: SWA's extra forward-only epoch
def test_swa_as_lightning_averages(demo_root, tmp_path, model):
    ours, trainer = _fit(demo_root, tmp_path, 3, swa=True, model=model, clip=(0.05, "norm"))
    theirs, _ = _fit(demo_root, tmp_path, None, swa=True, model=model, clip=(0.05, "norm"))
    _assert_same_weights(ours, theirs)
    assert trainer.global_step == EPOCHS * 8


@pytest.mark.parametrize("steps, accumulate", [(1, 1), (3, 1), (3, 2)])
def test_the_ema_is_updated_after_every_optimizer_step(demo_root, tmp_path, steps, accumulate):
    ours, trainer = _fit(demo_root, tmp_path, steps, ema=0.9, accumulate=accumulate)
    theirs, _ = _fit(demo_root, tmp_path, None, ema=0.9, accumulate=accumulate)
    _assert_same_weights(ours, theirs)  # after fit the model holds the average (Lightning copies it in)
    plain, _ = _fit(demo_root, tmp_path, steps, accumulate=accumulate)
    assert not torch.allclose(ours.net.net[0].weight, plain.net.net[0].weight, atol=1e-4)


def _plain_loop(demo_root, tmp_path, model: str = "fc") -> tuple[torch.nn.Module, int]:
    """The same training in a plain loop over the same batches: (the network, the steps taken)."""
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
    return net, taken


def test_equal_weights_against_a_plain_loop(demo_root, tmp_path):
    tagger, trainer = _fit(demo_root, tmp_path, 3)
    net, taken = _plain_loop(demo_root, tmp_path)
    assert trainer.global_step == taken == EPOCHS * 8
    _assert_same_weights(tagger.net, net)


def test_blocks_log_at_the_same_steps_and_epochs(demo_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def logged(steps: int) -> dict[str, list[tuple[int, float]]]:
        out = tmp_path / f"tb{steps}"
        _fit(demo_root, tmp_path, steps, logger=TensorBoardLogger(out, name="", version=""))
        acc = EventAccumulator(str(out)).Reload()
        return {tag: [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

    one, block = logged(1), logged(3)
    assert one["train/loss_step"] == block["train/loss_step"]
    assert [s for s, _ in one["train/loss_step"]] == [s for s in range(EPOCHS * 8) if (s + 1) % 3 == 0]
    for tag in ("val/mAP", "val/loss", "train/loss_epoch", "train/lr"):  # epoch-level: at epochs 1, 2, 3
        assert one[tag] == block[tag] and [s for s, _ in one[tag]] == [1, 2, 3], tag
    assert "epoch" not in one  # the x axis of the epoch-level curves is the epoch itself


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
    _, trainer = _fit(demo_root, tmp_path, 3, extra=(count,), accumulate=2)
    assert count.backward == EPOCHS * 8 and count.step == trainer.global_step == EPOCHS * 4
