"""Training options beyond the report work with every network; standardisation lives in the checkpoint."""

from __future__ import annotations

import pytest
import torch

from aer.checkpoint import Checkpoint
from aer.models import NETS
from aer.train import run
from conftest import config, train_overrides

SMALL = {"fc": ["model.hidden=[32]"], "skiplstm": ["model.hidden=8"], "attention": ["model.hidden=32"],
         "multiattention": ["model.hidden=32"], "featattention": ["model.hidden=32"],
         "transformer": ["model.d_model=16", "model.heads=2", "model.ff_dim=32"]}
TRICKS = ["data.balanced=true", "augment.mixup_alpha=0.4", "augment.label_smoothing=0.1",
          "augment.frame_dropout=0.2", "augment.feature_noise=0.02", "optim.optimizer=adamw", "optim.weight_decay=0.01",
          "optim.scheduler=cosine", "optim.warmup_epochs=1", "swa.enabled=true", "swa.epoch_start=1",
          "data.normalize=standardize"]


# fc in the fast set; the other networks' three-epoch runs with every trick are slow
@pytest.mark.parametrize("model", [m if m == "fc" else pytest.param(m, marks=pytest.mark.slow) for m in sorted(SMALL)])
def test_every_trick_with_every_model(model, demo_root, tmp_path):
    result = run(config("train", train_overrides(demo_root, tmp_path, f"model={model}", *SMALL[model],
                                                      *TRICKS, "trainer.max_epochs=3")))
    assert result["status"] == "ok"
    assert result["best_ckpt"].endswith("swa.ckpt")
    assert 0 < result["val/mAP"] <= 1
    tagger = Checkpoint.load(result["best_ckpt"]).tagger()  # rebuilt from the checkpoint alone
    assert type(tagger.net) is NETS[model] and not torch.all(tagger.input_std == 1)


def test_standardize_stats_are_stored_in_the_checkpoint(demo_root, tmp_path):
    from aer.module import Tagger

    result = run(config("train", train_overrides(demo_root, tmp_path, "data.normalize=standardize")))
    model = Tagger.load_from_checkpoint(result["last_ckpt"], weights_only=True, map_location="cpu")
    assert model.hparams.normalize == "standardize"
    # demo frames sit around 128/255 with a spread of roughly 0.1-0.2 on the [0,1] scale
    assert 0.4 < float(model.input_mean.mean()) < 0.6
    assert 0.05 < float(model.input_std.mean()) < 0.3
    x = torch.zeros(2, 10, 128)
    x[:, :3] = model.input_mean
    out = model(x, torch.tensor([3, 3]))  # the mean clip maps to zeros, padding stays zero
    ref = model.net(torch.zeros(2, 10, 128), torch.tensor([3, 3]))
    assert torch.allclose(out, ref, atol=1e-5)


def test_an_ema_run_validates_saves_and_returns_the_average(demo_root, tmp_path):
    from aer.checkpoint import Checkpoint
    from aer.evaluate import run as evaluate

    result = run(config("train", train_overrides(demo_root, tmp_path, "ema.enabled=true", "ema.decay=0.9",
                                                      "trainer.max_epochs=3")))
    assert result["status"] == "ok" and result["best_ckpt"].endswith("best.ckpt")
    ckpt = Checkpoint.load(result["last_ckpt"]).content
    averaged, current = ckpt["state_dict"], ckpt["current_model_state"]  # Lightning's WeightAveraging keeps both
    assert not torch.equal(averaged["net.net.0.weight"], current["net.net.0.weight"])
    tagger = Checkpoint.load(result["last_ckpt"]).tagger()
    assert torch.equal(tagger.state_dict()["net.net.0.weight"], averaged["net.net.0.weight"])
    m = evaluate(config("evaluate", [f"ckpt={result['last_ckpt']}", "split=val",
                                          f"paths.output_dir={tmp_path / 'eval'}"]))
    assert m["val/mAP"] == pytest.approx(result["val/mAP"], abs=1e-6)  # validation scored the average too
