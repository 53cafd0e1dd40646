import json

import pytest
import torch

from oneshot.data import MEAN, STD, Batches
from oneshot.errors import UserError
from oneshot.retrain import retrain, retrain_preset, retrain_run
from oneshot.spaces import create_space


def test_cutout_zeroes_one_square_per_image():
    x = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    y = torch.zeros(64, dtype=torch.long)
    xb, _ = next(Batches(x, y, 64, "cpu", augment=False, seed=0, cutout=16))
    zero = (xb == 0).all(1)                                   # (B, H, W) pixels cut out
    value = [(200 - m) / s for m, s in zip(MEAN, STD)]
    kept = ~zero
    assert torch.allclose(xb.permute(0, 2, 3, 1)[kept], torch.tensor(value).expand(int(kept.sum()), 3))
    counts = zero.sum((1, 2))
    assert counts.max() == 256 and (counts > 0).all()        # 16 x 16 at most, clipped at the borders
    for img in zero[:8]:                                      # each cut is one axis-aligned rectangle
        rows, cols = img.any(1).nonzero()[:, 0], img.any(0).nonzero()[:, 0]
        assert img.sum() == len(rows) * len(cols) and len(rows) <= 16 and len(cols) <= 16
    plain, _ = next(Batches(x, y, 64, "cpu", augment=False, seed=0))
    assert not (plain == 0).all(1).any()


def test_retrain_smoke_on_synthetic_data(tmp_path, synthetic_cifar):
    space = create_space("enas_micro")
    arch = space.sample(torch.Generator().manual_seed(0))
    config = retrain_preset("smoke", n_train=64, batch_size=32)
    record = retrain(space, arch, synthetic_cifar, config, torch.device("cpu"), progress=False)
    assert 0.0 <= record["test_accuracy"] <= 1.0
    assert record["test_error_percent"] == pytest.approx(100 * (1 - record["test_accuracy"]), abs=0.01)
    child = space.build_child(arch, 4, 3, auxiliary=False)
    assert record["parameters"] == sum(p.numel() for p in child.parameters())
    # from a run folder, as 'oneshot retrain RUN' does
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"space": "enas_micro", "space_options": {"cells": 3}}))
    (run / "result.json").write_text(json.dumps({"architecture": space.to_string(arch), "search_seconds": 1.0}))
    saved = retrain_run(str(run), synthetic_cifar, config, torch.device("cpu"), progress=False, preset_name="smoke")
    assert json.loads((run / "retrain-smoke.json").read_text())["architecture"] == saved["architecture"]


def test_retrain_errors(tmp_path, synthetic_cifar):
    with pytest.raises(UserError, match="unknown retraining preset"):
        retrain_preset("huge")
    with pytest.raises(UserError, match="no finished search"):
        retrain_run(str(tmp_path), synthetic_cifar, retrain_preset("smoke"), torch.device("cpu"))


def test_nb201_runs_are_pointed_to_the_table(synthetic_cifar):
    space = create_space("nb201")
    with pytest.raises(UserError, match="oneshot evaluate"):
        retrain(space, (0,) * 6, synthetic_cifar, retrain_preset("smoke"), torch.device("cpu"), progress=False)


def test_retraining_on_real_cifar_beats_chance(cifar_path):
    """Also guards the class-sorted training set: a prefix of it would hold one class (accuracy 10 %)."""
    from oneshot.data import load_cifar10

    data = load_cifar10(cifar_path)
    space = create_space("enas_micro")
    arch = space.from_string("normal: n0=(0 sep_conv_3x3, 1 identity) n1=(2 sep_conv_3x3, 1 avg_pool_3x3) "
                             "n2=(3 identity, 0 sep_conv_3x3) n3=(4 sep_conv_3x3, 1 max_pool_3x3) "
                             "n4=(5 identity, 2 sep_conv_3x3); reduce: n0=(0 sep_conv_3x3, 1 max_pool_3x3) "
                             "n1=(2 sep_conv_3x3, 1 identity) n2=(3 identity, 0 sep_conv_3x3) "
                             "n3=(4 sep_conv_3x3, 1 avg_pool_3x3) n4=(5 identity, 2 sep_conv_3x3)")
    config = retrain_preset("smoke", cells=3, channels=8, n_train=3000, epochs=3, batch_size=64, cutout=0)
    record = retrain(space, arch, data, config, torch.device("cpu"), progress=False)
    assert record["test_accuracy"] > 0.25   # chance is 0.10
