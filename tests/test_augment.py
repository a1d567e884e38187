"""augment.frame_dropout and augment.feature_noise (aer.augment), optim.optimizer, and how they are checked."""

from __future__ import annotations

import pytest
import torch

from aer.augment import add_noise, drop_frames
from aer.settings import AugmentSettings, OptimSettings, TrainSettings


def _clips(n: int = 400, frames: int = 10, dim: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, frames + 1, (n,), generator=g)
    # frame t of clip i holds i*100 + t + 1 in every dimension: each frame is told apart by its value
    x = (torch.arange(n)[:, None] * 100 + torch.arange(frames)[None] + 1).float()[..., None].repeat(1, 1, dim)
    return x * (torch.arange(frames)[None] < lengths[:, None])[..., None], lengths


def test_no_frame_dropout_is_the_identity():
    x, lengths = _clips()
    y, new = drop_frames(x, lengths, 0.0)
    assert torch.equal(y, x) and torch.equal(new, lengths)


def test_dropped_frames_leave_the_kept_ones_in_order_and_padding_zero():
    x, lengths = _clips()
    torch.manual_seed(1)
    y, new = drop_frames(x, lengths, 0.5)
    assert ((new >= 1) & (new <= lengths)).all()
    assert (new < lengths).any()
    for i in range(len(x)):
        kept = y[i, : new[i], 0]
        assert (y[i, new[i]:] == 0).all()
        assert (kept[1:] > kept[:-1]).all()  # increasing: the original order
        original = set(x[i, : lengths[i], 0].tolist())
        assert set(kept.tolist()) <= original
        assert torch.equal(y[i, : new[i]], y[i, : new[i], :1].expand(-1, x.shape[-1]))  # whole frames move


def test_frame_dropout_leaves_out_about_p_of_the_frames():
    x, lengths = _clips(n=4000, seed=2)
    torch.manual_seed(3)
    _, new = drop_frames(x, lengths, 0.3)
    dropped = 1 - new.sum().item() / lengths.sum().item()
    assert 0.27 < dropped < 0.31  # 0.3, a little less where a clip's only frames were all drawn out


def test_a_clip_keeps_a_frame_when_all_are_drawn_out():
    x, lengths = _clips(n=200)
    torch.manual_seed(4)
    y, new = drop_frames(x, lengths, 0.999)
    assert (new == 1).all()
    assert torch.equal(y[:, 0], x[:, 0])  # the first real frame where every frame was drawn out


def test_feature_noise_touches_the_real_frames_only():
    x, lengths = _clips(n=2000, seed=5)
    torch.manual_seed(6)
    noise = add_noise(x, lengths, 0.05) - x
    real = (torch.arange(x.shape[1])[None] < lengths[:, None])
    assert (noise[~real] == 0).all()
    assert noise[real].std().item() == pytest.approx(0.05, rel=0.05)
    assert abs(noise[real].mean().item()) < 0.002


def test_the_settings_are_checked():
    with pytest.raises(ValueError, match="augment.frame_dropout=1.0: expected a number at least 0 and below 1"):
        AugmentSettings(frame_dropout=1.0)
    with pytest.raises(ValueError, match="augment.feature_noise"):
        AugmentSettings(feature_noise=-0.1)
    with pytest.raises(ValueError, match="optim.optimizer"):
        OptimSettings(optimizer="sgd")
    with pytest.raises(ValueError, match="swa.enabled=true and ema.enabled=true"):
        TrainSettings.build({"swa": {"enabled": True}, "ema": {"enabled": True}})


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_optim_optimizer_chooses_adam_or_adamw(name, cls):
    from aer.module import Tagger

    opt = Tagger(model="fc", init="xavier", optim={"optimizer": name, "weight_decay": 0.01}).configure_optimizers()
    assert type(opt) is cls and opt.param_groups[0]["weight_decay"] == 0.01


def test_training_augments_and_validation_does_not():
    from aer.module import Tagger

    tagger = Tagger(model="attention", init="xavier", model_kwargs={"hidden": 16, "dropout": 0.0},
                    augment={"frame_dropout": 0.5, "feature_noise": 0.1})
    batch = {"features": torch.randint(0, 256, (8, 10, 128), dtype=torch.uint8),
             "lengths": torch.full((8,), 10), "y": torch.zeros(8, 527)}
    tagger.eval()  # no BatchNorm batch statistics or dropout: only the augmentation differs between calls
    torch.manual_seed(0)
    a = tagger._loss(batch)
    b = tagger._loss(batch)
    assert a != b  # each call draws its own frames and noise
    plain = Tagger(model="attention", init="xavier", model_kwargs={"hidden": 16, "dropout": 0.0})
    plain.load_state_dict(tagger.state_dict())
    plain.eval()
    assert plain._loss(batch) == plain._loss(batch)
    logits = tagger(Tagger.scale(batch["features"], batch["lengths"]), batch["lengths"])
    assert torch.equal(logits, plain(Tagger.scale(batch["features"], batch["lengths"]), batch["lengths"]))
