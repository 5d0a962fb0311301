"""Data, models, schedules and one trial end to end."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from harness.config import compose_config
from harness.data import DataError, check_data, load_data
from harness.models import build_model
from harness.schedules import lr_multiplier
from harness.train import run_trial

SMALL = [
    "schedule=cosine",
    "data.num_samples=1000",
    "data.val_size=200",
    "train.epochs=2",
    "model.width=16",
    "tracking=disabled",
    "train.threads=1",
]


def test_mnist1d_generated_and_cached(tmp_path):
    cfg = compose_config([f"data.root={tmp_path}", "data.num_samples=600", "data.val_size=100"])
    d = load_data(cfg.data)
    assert d.x_train.shape == (380, 1, 40) and d.x_val.shape == (100, 1, 40)
    assert d.x_test.shape == (120, 1, 40) and d.num_classes == 10
    files = list(tmp_path.glob("mnist1d-*.npz"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime
    from harness import data as data_mod

    data_mod._CACHE.clear()
    d2 = load_data(cfg.data)
    assert files[0].stat().st_mtime == mtime  # read back, not regenerated
    assert torch.equal(d.x_train, d2.x_train)


def _fake_cifar(root, n=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump(
                {
                    b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                    b"labels": list(rng.integers(0, 10, n)),
                },
                fh,
            )
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)]}, fh)
    return folder


def test_fake_cifar_through_the_real_loader_and_augment(tmp_path):
    _fake_cifar(tmp_path)
    cfg = compose_config(["data=cifar10", f"data.root={tmp_path}", "data.val_size=10"])
    d = load_data(cfg.data)
    assert d.x_train.shape == (90, 3, 32, 32) and d.x_test.shape == (20, 3, 32, 32)
    assert abs(float(d.x_train.mean())) < 1e-4  # normalized with train statistics
    aug = d.augment(d.x_train[:8], torch.Generator().manual_seed(0))
    assert aug.shape == (8, 3, 32, 32) and not torch.equal(aug, d.x_train[:8])
    model = build_model(compose_config(["model=resnet_tiny"]).model, d.input_shape, 10)
    assert model(d.x_train[:4]).shape == (4, 10)


def test_fake_cifar100_through_the_real_loader(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 30), ("test", 12)):
        with open(folder / name, "wb") as fh:
            pickle.dump(
                {
                    b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                    b"fine_labels": list(rng.integers(0, 100, n)),
                    b"coarse_labels": list(rng.integers(0, 20, n)),
                },
                fh,
            )
    cfg = compose_config(["data=cifar100", f"data.root={tmp_path}", "data.val_size=6"])
    d = load_data(cfg.data)
    assert d.num_classes == 100
    assert d.x_train.shape == (24, 3, 32, 32) and d.x_test.shape == (12, 3, 32, 32)
    assert int(torch.cat([d.y_train, d.y_val, d.y_test]).max()) >= 20  # fine, not coarse labels
    model = build_model(compose_config(["model=resnet_tiny"]).model, d.input_shape, 100)
    assert model(d.x_test[:2]).shape == (2, 100)


def test_missing_cifar_is_one_clear_error(tmp_path):
    cfg = compose_config(["data=cifar10", f"data.root={tmp_path}"])
    with pytest.raises(DataError) as err:
        check_data(cfg.data)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg and "cifar-10-python.tar.gz" in msg


@pytest.mark.parametrize(
    "name,shape",
    [
        ("mlp", (1, 40)),
        ("mlp_bn", (1, 40)),
        ("cnn", (1, 40)),
        ("cnn_bn", (1, 40)),
        ("resnet20", (3, 32, 32)),
        ("resnet_tiny", (3, 32, 32)),
    ],
)
def test_model_forward_shapes(name, shape):
    cfg = compose_config([f"model={name}"])
    assert build_model(cfg.model, shape, 10)(torch.zeros(2, *shape)).shape == (2, 10)


def test_schedule_values_at_known_steps():
    cfg = compose_config(["schedule=cosine"])
    s = cfg.schedule
    assert lr_multiplier(s, 0, 100) == 1.0 and lr_multiplier(s, 50, 100) == pytest.approx(0.5)
    assert lr_multiplier(s, 100, 100) == pytest.approx(0.0)
    s.name, s.milestones, s.gamma = "step", [0.5, 0.75], 0.1
    assert [lr_multiplier(s, t, 100) for t in (0, 49, 50, 75)] == pytest.approx([1, 1, 0.1, 0.01])
    s.name, s.warmup_fraction = "warmup_cosine", 0.1
    assert lr_multiplier(s, 0, 100) == pytest.approx(0.1) and lr_multiplier(s, 10, 100) == 1.0
    assert lr_multiplier(s, 55, 100) == pytest.approx(0.5)  # half way through the cosine part
    s.name = "warmup_constant"
    assert [lr_multiplier(s, t, 100) for t in (0, 4, 9, 10, 99)] == pytest.approx(
        [0.1, 0.5, 1.0, 1.0, 1.0]
    )
    s.name = "constant"
    assert {lr_multiplier(s, t, 100) for t in (0, 50, 99)} == {1.0}
    s.name, s.min_factor = "cosine", 0.1  # a floor: eta_T = 0.1
    assert lr_multiplier(s, 100, 100) == pytest.approx(0.1)
    assert lr_multiplier(s, 50, 100) == pytest.approx(0.55)
    s.name = "linear"
    with pytest.raises(ValueError, match="schedule.name"):
        lr_multiplier(s, 0, 100)


def test_huge_lr_diverges_without_exception():
    cfg = compose_config([*SMALL, "optimizer=sgd", "optimizer.lr=1e8", "optimizer.decay=l2"])
    r = run_trial(cfg)
    assert r.diverged and r.test_error == 1.0 and np.isnan(r.train_loss)


def test_same_seed_same_result_other_seed_differs():
    a = run_trial(compose_config(SMALL))
    b = run_trial(compose_config(SMALL))
    c = run_trial(compose_config([*SMALL, "train.seed=1"]))
    assert (a.test_error, a.train_loss, a.weight_norm) == (
        b.test_error,
        b.train_loss,
        b.weight_norm,
    )
    assert a.weight_norm != c.weight_norm


def test_report_hook_sees_schedule_and_independent_shrink():
    seen = []
    cfg = compose_config([*SMALL, "optimizer.decay=independent", "optimizer.weight_decay=0.01"])
    run_trial(cfg, report=lambda step, m: seen.append((step, m)))
    assert len(seen) == 2
    for _, m in seen:
        assert m["shrink"] == pytest.approx(m["eta"] * 0.01)
    assert seen[0][1]["eta"] > seen[1][1]["eta"]


def test_loss_mode_penalty_changes_training():
    base = run_trial(compose_config([*SMALL, "optimizer.decay=loss", "optimizer.weight_decay=0"]))
    pen = run_trial(compose_config([*SMALL, "optimizer.decay=loss", "optimizer.weight_decay=1.0"]))
    assert pen.weight_norm < base.weight_norm
