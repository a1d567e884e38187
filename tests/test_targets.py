"""Training targets: the ontology's ancestors made positive (augment.ontology_targets), and knowledge
distillation from a teacher ensemble (distill.*): exact targets and losses, training only, the teachers'
probabilities computed once and cached, leaking teachers refused."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from aer.checkpoint import Checkpoint
from aer.data.ontology import class_ancestors, read_ontology, root_ancestors
from aer.module import Tagger, TeacherTargets
from aer.train import run
from conftest import DEV_TRAIN, config, train_overrides

SMALL = ("model.hidden=[16]", "trainer.max_epochs=1")


# ---- ontology targets
def _write_ontology(root: Path) -> list[str]:
    """Five classes: C under B under a node that is no class (N) under A under a top node that is no class;
    D and E elsewhere (E under the top node only). Returns the classes' mids in index order."""
    mids = ["/m/a", "/m/b", "/m/c", "/m/d", "/m/e"]
    entries = [
        {"id": "/top", "name": "Top", "child_ids": ["/m/a", "/m/e"]},
        {"id": "/m/a", "name": "A", "child_ids": ["/n"]},
        {"id": "/n", "name": "N (not a class)", "child_ids": ["/m/b"]},
        {"id": "/m/b", "name": "B", "child_ids": ["/m/c"]},
        {"id": "/m/c", "name": "C", "child_ids": []},
        {"id": "/m/d", "name": "D", "child_ids": []},
        {"id": "/m/e", "name": "E", "child_ids": []},
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "ontology.json").write_text(json.dumps(entries))
    with open(root / "class_labels_indices.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "mid", "display_name"])
        w.writerows([i, m, m[3:].upper()] for i, m in enumerate(mids))
    return mids


def _tagger(**kwargs) -> Tagger:
    return Tagger(model="fc", init="xavier", model_kwargs={"hidden": [8]}, **kwargs)


def test_ancestors_are_exact_through_nodes_that_are_not_classes(tmp_path):
    mids = _write_ontology(tmp_path)
    a = root_ancestors(tmp_path, 5)
    assert np.array_equal(a, class_ancestors(read_ontology(tmp_path / "ontology.json"), mids))
    want = {0: {0}, 1: {0, 1}, 2: {0, 1, 2}, 3: {3}, 4: {4}}  # [c, a]: a is c or above it
    assert {c: set(np.flatnonzero(a[c])) for c in range(5)} == want

    model = _tagger(num_classes=5, augment={"ontology_targets": True})
    model.set_ancestors(torch.from_numpy(a))
    y = torch.tensor([[0, 0, 1, 0, 0],    # C: B and A (through N) too
                      [0, 0, 0, 1, 0],    # D: itself only
                      [1, 0, 1, 0, 1],    # A already positive: stays 1
                      [0, 0, 0, 0, 0]], dtype=torch.float32)
    assert model.with_ancestors(y).tolist() == [[1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [1, 1, 1, 0, 1], [0] * 5]


def test_a_missing_ontology_is_named_before_any_work(demo_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere/ontology.json: no such file; augment.ontology_targets"):
        root_ancestors(tmp_path / "nowhere", 5)
    release = tmp_path / "release"  # the demo's shards in a folder aer did not make: no ontology.json
    for split in ("bal_train", "eval"):
        shutil.copytree(demo_root / split, release / split)
    overrides = [o for o in train_overrides(release, tmp_path / "run", "augment.ontology_targets=true")
                 if not o.startswith("data.demo.")]
    with pytest.raises(FileNotFoundError, match=f"{release}/ontology.json: no such file"):
        run(config("train", [*overrides, "data=audioset"]))
    assert not list(tmp_path.rglob("*.h5")), "converted data before reporting the missing file"


def test_a_demo_set_made_before_ontologies_gets_one(tmp_path):
    from aer.data.demo import ensure_demo, generate

    generate(tmp_path / "d", clips=20, eval_clips=10, seed=0)
    text = (tmp_path / "d" / "ontology.json").read_text()
    (tmp_path / "d" / "ontology.json").unlink()
    assert ensure_demo(tmp_path / "d", clips=20, eval_clips=10, seed=0) is False
    assert (tmp_path / "d" / "ontology.json").read_text() == text


def _demo_dm(demo_root: Path, tmp_path: Path):
    from aer.data.datamodule import AudioSetDataModule

    dm = AudioSetDataModule(demo_root, batch_size=64, demo={"clips": 600, "eval_clips": 300},
                            cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_validation_labels_are_never_propagated(demo_root, tmp_path):
    """Two Taggers with the same weights, one with ontology targets: the same validation numbers, other
    training losses (the option is on, and only training sees it)."""
    import pytorch_lightning as pl

    dm = _demo_dm(demo_root, tmp_path)
    plain = _tagger()
    onto = _tagger(augment={"ontology_targets": True})
    onto.load_state_dict(plain.state_dict())
    onto.set_ancestors(torch.from_numpy(root_ancestors(demo_root, 527)))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
    got = [trainer.validate(m, datamodule=dm, verbose=False)[0] for m in (plain, onto)]
    assert got[0] == got[1] and "val/mAP" in got[0]
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        assert plain._loss(batch) != onto._loss(batch)


def test_training_with_new_targets_records_them_and_resumes(teacher, demo_root, tmp_path, caplog):
    out = tmp_path / "run"
    options = ["augment.ontology_targets=true", f"distill.ckpts=[{teacher}]", "model.hidden=[16]"]
    first = run(config("train", train_overrides(demo_root, out, *options, "trainer.max_epochs=1")))
    assert first["status"] == "ok"
    ckpt = Checkpoint.load(first["last_ckpt"]).content
    assert ckpt["hyper_parameters"]["augment"]["ontology_targets"] is True
    assert ckpt["hyper_parameters"]["distill"]["ckpts"] == [str(teacher)]
    assert not any("ancestors" in k or "teacher" in k for k in ckpt["state_dict"])  # handed over, never saved
    model = Checkpoint.load(first["last_ckpt"]).tagger()  # inference needs no ontology and no teachers
    assert model.ancestors is None and model.predict_proba(torch.zeros(1, 10, 128, dtype=torch.uint8),
                                                           torch.tensor([10])).shape == (1, 527)
    caplog.set_level(logging.INFO, logger="aer.distill")
    resumed = run(config("train", train_overrides(demo_root, out, *options, "ckpt_path=last")))
    assert resumed["status"] == "ok" and resumed["epochs"] == 2 and "read from" in caplog.text


# ---- distillation
@pytest.fixture(scope="module")
def teacher_sweep(demo_root, tmp_path_factory) -> Path:
    """A sweep dir holding one tiny teacher run (dev mode, the default split)."""
    sweep = tmp_path_factory.mktemp("teachers")
    assert run(config("train", train_overrides(demo_root, sweep / "0", *SMALL)))["status"] == "ok"
    return sweep


@pytest.fixture(scope="module")
def teacher(teacher_sweep) -> Path:
    return teacher_sweep / "0" / "checkpoints" / "best.ckpt"


def _student(demo_root: Path, out: Path, *extra: str) -> dict:
    return run(config("train", train_overrides(demo_root, out, f"data.cache_dir={out / 'cache'}",
                                                    *SMALL, *extra)))


def test_the_loss_is_the_blend_of_labels_and_teachers_also_under_mixup():
    model = _tagger(num_classes=3, distill={"ckpts": ["t.ckpt"], "weight": 0.3}, augment={"mixup_alpha": 0.4})
    probs = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.7, 0.05], [0.6, 0.6, 0.6]])
    model.set_teacher_targets(TeacherTargets(torch.tensor([5, 2, 7]), probs, clips=10))
    g = torch.Generator().manual_seed(3)
    batch = {"features": torch.randint(0, 256, (2, 10, 128), dtype=torch.uint8, generator=g),
             "lengths": torch.tensor([10, 6]), "y": torch.tensor([[1.0, 0, 0], [0, 1, 1]]),
             "index": torch.tensor([7, 2])}  # rows 7 and 2: the third and the second teacher rows

    def bce(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # by hand, in float64
        z, t = z.double(), t.double()
        return -(t * torch.log(torch.sigmoid(z)) + (1 - t) * torch.log(1 - torch.sigmoid(z))).mean()

    torch.manual_seed(2)  # the draws _loss makes: the mixing weight, then the permutation
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(2)
    x = model.scale(batch["features"], batch["lengths"])
    x = lam * x + (1 - lam) * x[perm]
    lengths = torch.maximum(batch["lengths"], batch["lengths"][perm])
    y = lam * batch["y"] + (1 - lam) * batch["y"][perm]
    p = probs[[2, 1]]
    p = lam * p + (1 - lam) * p[perm]  # the teachers' targets mixed with the same pairs
    with torch.no_grad():
        logits = model(x, lengths)
        want = 0.7 * bce(logits, y) + 0.3 * bce(logits, p)
        torch.manual_seed(2)
        got = model._loss(batch)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    assert perm.tolist() == [1, 0] and 0.2 < lam < 0.8  # the seed mixes the two clips: the mixing is tested


def test_teacher_probabilities_are_computed_once_then_read_back(teacher, demo_root, tmp_path, monkeypatch, caplog):
    import aer.checkpoint
    import aer.distill
    from aer.data.datamodule import AudioSetDataModule
    from aer.inference import iter_proba

    caplog.set_level(logging.INFO, logger="aer.distill")
    assert _student(demo_root, tmp_path / "a", f"distill.ckpts=[{teacher}]")["status"] == "ok"
    assert f"computing the probabilities of 1 teacher(s) on {DEV_TRAIN} training clips" in caplog.text
    files = list((tmp_path / "a" / "cache" / "teachers").glob("*.h5"))
    assert len(files) == 1 and not [p for p in files[0].parent.iterdir() if p.name.startswith(".")]

    # what the file holds: the teacher's probabilities of the dev split's training clips, in served order
    dm = AudioSetDataModule(demo_root, batch_size=100, demo={"clips": 600, "eval_clips": 300},
                            cache_dir=str(tmp_path / "a" / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    model = Checkpoint.load(teacher).tagger()
    want = torch.cat([next(iter_proba(model, [(b["features"], b["lengths"])])) for b in dm.split_batches("train")])
    with h5py.File(files[0]) as f:
        assert np.array_equal(f["rows"][()], dm.split_info("train")["rows"])
        np.testing.assert_allclose(f["probs"][()].astype(np.float32), want.numpy(), atol=1e-3)
        assert json.loads(f.attrs["teachers"])[0]["ckpt"] == str(teacher)

    loaded, real = [], aer.checkpoint.Checkpoint.load

    def recorded(path, *args, **kwargs):
        loaded.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(aer.checkpoint.Checkpoint, "load", recorded)
    monkeypatch.setattr(aer.distill, "_predict", lambda *a: pytest.fail("the teachers were run again"))
    caplog.clear()
    shutil.copytree(tmp_path / "a" / "cache", tmp_path / "b" / "cache")
    assert _student(demo_root, tmp_path / "b", f"distill.ckpts=[{teacher}]")["status"] == "ok"
    assert "read from" in caplog.text and "no teacher loaded" in caplog.text
    assert teacher not in loaded


@pytest.mark.parametrize("change, message", [
    ({"split_seed": 7}, ": it was trained with data.split_seed=7, here data.split_seed=0: its training clips"),
    ({"val_fraction": 0.1}, ": it was trained with data.val_fraction=0.1"),
    ({"train_split": "all"}, r": it was trained with data.train_split=\['bal_train', 'unbal_train'\]"),
    ({"mode": "final"}, " was trained with data.mode=final on all of bal_train, which holds this run's validation"),
    (None, " holds no data settings"),
])
def test_a_teacher_that_saw_the_validation_clips_is_refused(teacher, demo_root, tmp_path, change, message):
    ckpt = Checkpoint.load(teacher).content
    if change is None:
        del ckpt["datamodule_hyper_parameters"]
    else:
        ckpt["datamodule_hyper_parameters"].update(change)
    leaky = tmp_path / "leaky.ckpt"
    torch.save(ckpt, leaky)
    with pytest.raises(ValueError, match=f"distill: {leaky}{message}"):
        _student(demo_root, tmp_path / "s", f"distill.ckpts=[{teacher},{leaky}]")
    assert not list((tmp_path / "s" / "cache").glob("teachers/*.h5"))


def test_a_final_mode_student_may_learn_from_dev_teachers(teacher, demo_root, tmp_path):
    result = _student(demo_root, tmp_path / "s", f"distill.ckpts=[{teacher}]", "data.mode=final")
    assert result["status"] == "ok" and "test/mAP" in result


def test_a_distilled_student_trains_with_every_trick(teacher_sweep, teacher, demo_root, tmp_path):
    tricks = ["augment.mixup_alpha=0.4", "augment.label_smoothing=0.1", "augment.ontology_targets=true",
              "data.balanced=true", "data.steps_per_fetch=2", "optim.scheduler=cosine", "swa.enabled=true",
              "swa.epoch_start=1", "data.normalize=standardize", "trainer.max_epochs=2"]
    result = _student(demo_root, tmp_path / "s", f"distill.sweep={teacher_sweep}", "distill.weight=0.7", *tricks)
    assert result["status"] == "ok" and 0 < result["val/mAP"] <= 1 and result["best_ckpt"].endswith("swa.ckpt")
    ckpt = Checkpoint.load(result["best_ckpt"]).content
    assert ckpt["hyper_parameters"]["distill"] == {"ckpts": [], "sweep": str(teacher_sweep), "weight": 0.7}
    assert Checkpoint.load(result["best_ckpt"]).tagger().teacher is None  # inference needs no teachers
    with h5py.File(next((tmp_path / "s" / "cache" / "teachers").glob("*.h5"))) as f:
        assert json.loads(f.attrs["teachers"])[0]["ckpt"] == str(teacher.resolve())


def test_weight_zero_trains_exactly_as_without_teachers(teacher, demo_root, tmp_path):
    plain = _student(demo_root, tmp_path / "plain", "augment.mixup_alpha=0.4")
    zero = _student(demo_root, tmp_path / "zero", "augment.mixup_alpha=0.4", f"distill.ckpts=[{teacher}]",
                    "distill.weight=0")
    assert zero["train/loss_epoch"] == plain["train/loss_epoch"] and zero["val/mAP"] == plain["val/mAP"]
    a, b = (Checkpoint.load(r["last_ckpt"]).content["state_dict"] for r in (plain, zero))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_distill_settings_are_checked():
    with pytest.raises(ValueError, match=r"distill.weight=1.5: expected a number between 0 and 1"):
        _tagger(distill={"ckpts": ["a.ckpt"], "weight": 1.5})
    with pytest.raises(ValueError, match=r"distill.ckpts=\[3\]: expected a list of checkpoint paths"):
        _tagger(distill={"ckpts": [3]})


@pytest.mark.parametrize("kwargs, message", [({"augment": {"ontology_targets": True}}, "no ancestor matrix"),
                                             ({"distill": {"ckpts": ["t.ckpt"]}}, "no teacher targets")])
def test_a_tagger_fit_without_its_targets_handed_over_says_so(demo_root, tmp_path, kwargs, message):
    import pytorch_lightning as pl

    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         max_epochs=1)
    with pytest.raises(ValueError, match=message):
        trainer.fit(_tagger(**kwargs), datamodule=_demo_dm(demo_root, tmp_path))
