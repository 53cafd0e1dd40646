"""The one from-scratch loop (oneshot/retrain.py): presets, schedules, the auxiliary-loss rule, every space on small
synthetic data, resume, and one-line errors from the command line."""

import json
import math
import random

import pytest
import torch
from torch import nn

from oneshot import tasks
from oneshot.cli import main
from oneshot.data import MEAN, STD, Batches, Cifar10
from oneshot.errors import UserError
from oneshot.retrain import (RetrainConfig, RetrainFolder, Retraining, count_parameters, network_options,
                             retrain_preset, train)
from oneshot.spaces import create_space
from oneshot.spaces.base import Categorical, SearchSpace

try:
    from oneshot.spaces.darts import DARTSSpace, count_flops
except ImportError:  # the DARTS space is optional for these tests
    DARTSSpace = None

CPU = torch.device("cpu")
COLOURS = torch.tensor([[230, 20, 20], [20, 230, 20], [20, 20, 230], [128, 128, 128]], dtype=torch.float32)


def colour_images(n: int, size: int, seed: int = 0) -> Cifar10:
    """Four classes, one colour each, plus noise: a child that trains at all separates them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = COLOURS[y][:, :, None, None] + 25 * torch.randn(n, 3, size, size, generator=g)
    x = x.clamp(0, 255).to(torch.uint8)
    return Cifar10(train_x=x[64:], train_y=y[64:], test_x=x[:64], test_y=y[:64], classes=("r", "g", "b", "grey"))


@pytest.fixture(scope="module")
def colours16():
    return tasks.as_task(colour_images(320, 16))


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


# --- presets and settings ---------------------------------------------------------------------------------
def test_paper_presets_are_the_published_protocols():
    nb201 = retrain_preset("paper", "nb201")     # AutoDL 200E.config, TinyNetwork C=16 N=5
    assert (nb201.epochs, nb201.batch_size, nb201.lr, nb201.nesterov, nb201.weight_decay, nb201.grad_clip,
            nb201.channels, nb201.cells_per_stage, nb201.op_style, nb201.cutout) == \
           (200, 256, 0.1, True, 5e-4, 0.0, 16, 5, "nb201", 0)
    darts = retrain_preset("paper", "darts")     # snas.md §4
    assert (darts.cells, darts.channels, darts.batch_size, darts.epochs, darts.aux_weight, darts.cutout,
            darts.drop_path, darts.lr, darts.weight_decay, darts.grad_clip, darts.nesterov) == \
           (20, 36, 96, 600, 0.4, 16, 0.2, 0.025, 3e-4, 5.0, False)
    rnn = retrain_preset("paper", "rnn")         # advantagenas.md §3, ptb/custom.py
    assert (rnn.hidden, rnn.epochs, rnn.batch_size, rnn.lr, rnn.momentum, rnn.weight_decay, rnn.grad_clip) == \
           (300, 100, 256, 20.0, 0.0, 0.0, 0.25)
    enas = retrain_preset("paper", "enas_micro")  # asng.md §3
    assert (enas.cells, enas.channels, enas.max_params, enas.epochs, enas.batch_size, enas.drop_path) == \
           (20, 0, 4.0e6, 600, 80, 0.3)
    cpu = retrain_preset("cpu", "enas_micro")     # unchanged since before this loop
    assert (cpu.cells, cpu.channels, cpu.epochs, cpu.batch_size, cpu.n_train) == (8, 16, 10, 64, 10_000)
    assert retrain_preset("cpu", "rnn").task_options == {"fallback": True}


@pytest.mark.parametrize("space, change, message", [
    ("nb201", {"hidden": 3}, "do not apply to space nb201"),
    ("rnn", {"cutout": 16}, "do not apply to space rnn"),
    ("nb201", {"aux_weight": 0.4}, "do not apply"),
    ("darts", {"epochs": 0}, "epochs must be at least 1"),
    ("darts", {"drop_path": 1.5}, "drop_path must lie in"),
    ("darts", {"lr": "fast"}, "needs a float"),
    ("darts", {"colour": 1}, "unknown retraining setting"),
    ("my_space", {"channels": 8}, "child_options"),
])
def test_bad_settings_are_one_line(space, change, message):
    with pytest.raises(UserError, match=message):
        retrain_preset("smoke", space, **change).validated()
    with pytest.raises(UserError, match="unknown retraining preset"):
        retrain_preset("huge", space)


def test_learning_rate_is_cosine_and_drop_path_ramps(colours16):
    if DARTSSpace is None:
        pytest.skip("the DARTS space is not importable")
    space = DARTSSpace()
    config = retrain_preset("smoke", "darts", epochs=4, lr=0.1, drop_path=0.2, n_train=64)
    run = Retraining(space, space.from_string("darts_v2"), colours16, config, CPU)
    expected = {0: (0.1, 0.0), 1: (0.1 * (1 + math.cos(math.pi / 4)) / 2, 0.05), 2: (0.05, 0.1),
                3: (0.1 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.15)}
    for epoch, (lr, drop) in expected.items():
        run.begin_epoch(epoch)
        assert run.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
        assert run.model.drop_path == pytest.approx(drop)
        assert run.model.training


# --- the auxiliary-loss rule ----------------------------------------------------------------------------------
class OneChild(SearchSpace):
    """A one-architecture space whose child is given: for checking what the loop does with its outputs."""

    name = "one"

    def __init__(self, child: nn.Module):
        super().__init__([Categorical("only", ("it",))])
        self.child = child

    def build_child(self, arch, input_shape=(), num_outputs=0):
        return self.child


class Headed(nn.Module):
    """Main logits zero (CE = ln 4); auxiliary logits that give the target probability 1/2 (CE = ln 2)."""

    def __init__(self, head: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.auxiliary = nn.Linear(1, 1) if head else None  # 2 parameters, not counted

    def forward(self, x):
        logits = torch.zeros(len(x), 4) * self.weight
        if not self.training or self.auxiliary is None:
            return logits, None
        aux = torch.full((len(x), 4), -1e9)
        aux[:, 0] = aux[:, 1] = 0.0                           # p(0) = p(1) = 1/2; the targets are 0
        return logits, aux + 0 * self.weight


def stub_task(**options):
    x, y = torch.zeros(8, 1), torch.zeros(8, dtype=torch.long)
    return tasks.from_tensors((x, y), (x, y), num_outputs=4, **options)


def step_loss(child, aux_weight, task=None):
    config = RetrainConfig(epochs=1, batch_size=8, aux_weight=aux_weight, momentum=0.0, weight_decay=0.0)
    run = Retraining(OneChild(child), (0,), task or stub_task(), config, CPU)
    run.begin_epoch(0)
    return run, run.train_step(next(run.stream))


def test_auxiliary_loss_is_added_with_its_weight():
    _, loss = step_loss(Headed(), 0.4)
    assert loss == pytest.approx(math.log(4) + 0.4 * math.log(2))
    _, loss = step_loss(Headed(), 0.0)                         # weight 0: the head's output is ignored
    assert loss == pytest.approx(math.log(4))
    with pytest.raises(UserError, match="no auxiliary head"):
        step_loss(Headed(head=False), 0.4)
    run, _ = step_loss(Headed(), 0.4)
    assert count_parameters(run.model) == 1                    # the head's 2 parameters are not counted


def test_a_child_without_a_head_gives_the_task_its_whole_output():
    """(logits, hidden) of a language model is the task's business, not an auxiliary head."""
    seen = []

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return torch.zeros(len(x), 4) * self.weight, "hidden"

    def loss(out, target):
        seen.append(out[1])
        return nn.functional.cross_entropy(out[0], target)

    _, value = step_loss(Pair(), 0.0, stub_task(loss=loss, metric="loss"))
    assert seen == ["hidden"] and value == pytest.approx(math.log(4))


def test_a_nan_loss_is_one_line():
    task = stub_task(loss=lambda out, y: out[0].sum() * float("nan"), metric="loss")
    with pytest.raises(UserError, match=r"loss became nan at step 0 \(epoch 0\); lower the learning rate"):
        step_loss(Headed(), 0.0, task)


def test_optimiser_settings_and_gradient_clipping():
    """SGD with the config's momentum, Nesterov and coupled weight decay; one step of lr 1 moves the weights by
    exactly the clipping norm when the gradient is larger."""
    child = nn.Linear(1, 4)
    config = RetrainConfig(epochs=1, batch_size=8, lr=1.0, momentum=0.0, weight_decay=0.0, grad_clip=0.01)
    run = Retraining(OneChild(child), (0,), stub_task(), config, CPU)
    before = torch.cat([p.detach().flatten().clone() for p in child.parameters()])
    run.begin_epoch(0)
    run.train_step(next(run.stream))
    after = torch.cat([p.detach().flatten() for p in child.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.01, rel=1e-4)
    config = RetrainConfig(batch_size=8, momentum=0.8, nesterov=True, weight_decay=0.03)
    group = Retraining(OneChild(nn.Linear(1, 4)), (0,), stub_task(), config, CPU).optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.8, True, 0.03)


# --- every space on small data -----------------------------------------------------------------------------
def test_nb201_child_learns_and_reports_its_size(colours16):
    space = create_space("nb201")
    arch = space.from_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|skip_connect~1|"
                             "nor_conv_1x1~2|")
    config = retrain_preset("smoke", "nb201", channels=8, epochs=3, batch_size=32, lr=0.05)
    record = train(space, arch, colours16, config, CPU, progress=False)
    assert record["test_accuracy"] >= 0.75                     # chance is 0.25
    child = space.build_child(arch, input_shape=(3, 16, 16), num_outputs=4, channels=8, cells_per_stage=1,
                              op_style="nb201")
    assert record["parameters"] == sum(p.numel() for p in child.parameters())
    assert record["test_error_percent"] == pytest.approx(100 * (1 - record["test_accuracy"]), abs=0.01)
    assert list(record["scores"]) == ["test"] and record["flops"] > 0


@pytest.mark.skipif(DARTSSpace is None, reason="the DARTS space is not importable")
def test_darts_child_learns_with_its_auxiliary_head(colours16):
    space = DARTSSpace()
    arch = space.from_string("snas_moderate")
    config = retrain_preset("smoke", "darts", epochs=3, batch_size=32, cutout=0, lr=0.1)
    record = train(space, arch, colours16, config, CPU, progress=False)
    assert record["test_accuracy"] >= 0.6
    child = space.build_child(arch, channels=4, cells=3, auxiliary=False, input_shape=(3, 16, 16), num_outputs=4)
    assert record["parameters"] == sum(p.numel() for p in child.parameters())
    assert record["flops"] == count_flops(child, (3, 16, 16))
    assert record["network"] == {"channels": 4, "cells": 3, "pool_bn": True, "auxiliary": True}
    plain = network_options(space, arch, colours16, retrain_preset("smoke", "darts", aux_weight=0))
    assert plain["auxiliary"] is False                         # no head to build when its loss weighs nothing


def test_enas_child_with_the_widest_channels_under_a_budget():
    space = create_space("enas_micro")
    arch = space.sample(torch.Generator().manual_seed(0))
    config = retrain_preset("smoke", "enas_micro", channels=0, max_params=20_000, n_train=64, batch_size=32)
    record = train(space, arch, colour_images(128, 32), config, CPU, progress=False)
    channels = record["channels"]
    assert channels == space.channels_for_budget(arch, 20_000, 3, num_classes=4)
    assert record["parameters"] <= 20_000 < sum(p.numel() for p in space.build_child(
        arch, channels + 1, 3, num_classes=4, auxiliary=False).parameters())


def test_rnn_child_on_ptb_reports_valid_and_test_perplexity(tmp_path):
    rng = random.Random(0)
    sentences = ["the cat sat on the mat", "a dog ran to the house", "we like big red apples"]
    for name, lines in (("ptb.valid.txt", 300), ("ptb.test.txt", 60)):
        (tmp_path / name).write_text("".join(rng.choice(sentences) + "\n" for _ in range(lines)))
    task = tasks.create("ptb", data=str(tmp_path), fallback=True)
    space = create_space("rnn")
    config = retrain_preset("smoke", "rnn", epochs=8, batch_size=8, dropout_input=0.0, dropout_output=0.0)
    record = train(space, space.from_string("|tanh|relu,relu|relu,tanh,relu|"), task, config, CPU, progress=False)
    assert list(record["scores"]) == ["valid", "test"]
    assert record["scores"]["test"]["tokens"] == len(task.ids["test"]) - 1   # batch 1: every next word
    assert task.num_outputs == 16 and record["test_perplexity"] < 2  # uniform: 16; the sentences are predictable
    assert "fallback" in record["task"]["protocol_note"] and record["flops"] is None


# --- resume ---------------------------------------------------------------------------------------------------
def test_resume_after_an_interruption_gives_the_identical_result(tmp_path):
    """ENAS: drop-path and the crops draw random numbers, so the checkpoint must carry every generator."""
    space = create_space("enas_micro")
    arch = space.sample(torch.Generator().manual_seed(1))
    images = colour_images(128, 32)
    config = retrain_preset("smoke", "enas_micro", epochs=3, batch_size=16, n_train=48)   # 3 steps per epoch
    whole = train(space, arch, images, config, CPU, progress=False, folder=RetrainFolder(tmp_path / "a", {}))
    first = RetrainFolder(tmp_path / "b", {})
    assert train(space, arch, images, config, CPU, progress=False, folder=first, stop_after=7) is None
    first.close()
    resumed = RetrainFolder(tmp_path / "b", {}, resume=True)
    assert resumed.resumed_state["step"] == 6                 # the end of epoch 2 (drop-path 0.1 drew numbers)
    again = train(space, arch, images, config, CPU, progress=False, folder=resumed)
    assert again["steps"] == whole["steps"] == 9 and again["test_accuracy"] == whole["test_accuracy"]
    a, b = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)["model"] for run in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [[json.loads(line)["loss"] for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
            for run in ("a", "b")]
    assert logs[0] == logs[1] and len(logs[0]) == 3


# --- the command line -----------------------------------------------------------------------------------------
def search_folder(path, space="nb201", architecture=None, **config):
    path.mkdir(parents=True)
    architecture = architecture or create_space(space).to_string((2, 1, 0, 3, 2, 1))
    (path / "config.json").write_text(json.dumps({"space": space, "space_options": {}, "task": "cifar10",
                                                  "task_options": {}, "data": None, **config}))
    (path / "result.json").write_text(json.dumps({"architecture": architecture, "search_seconds": 2.5}))
    return path


def test_cli_retrains_a_search_folder(tmp_path, tiny_pickles, capsys):
    run = search_folder(tmp_path / "run", data=tiny_pickles)
    code = main(["retrain", str(run), "--preset", "smoke", "--set", "n_train=128", "--quiet", "--device", "cpu"])
    assert code == 0
    summary = json.loads((run / "retrain-smoke.json").read_text())
    assert summary["search_seconds"] == 2.5 and summary["space"] == "nb201"
    assert json.loads((run / "retrain-smoke" / "result.json").read_text())["parameters"] == summary["parameters"]
    assert capsys.readouterr().out.startswith("test accuracy ")
    # once more: the folder holds a run; --resume continues (here: re-tests the finished one)
    assert main(["retrain", str(run), "--preset", "smoke", "--set", "n_train=128", "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["retrain", str(run), "--preset", "smoke", "--set", "n_train=128", "--quiet", "--resume"]) == 0


@pytest.mark.skipif(DARTSSpace is None, reason="the DARTS space is not importable")
def test_cli_retrains_a_released_genotype_by_name(tmp_path, tiny_pickles):
    out = tmp_path / "snas"
    code = main(["retrain", "--space", "darts", "--arch", "SNAS_moderate", "--data", tiny_pickles, "--preset", "smoke",
                 "--set", "n_train=64", "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 0
    record = json.loads((out / "result.json").read_text())
    space = DARTSSpace()
    assert record["architecture"] == space.to_string(space.from_string("snas_moderate"))
    assert record["flops"] > 0 and record["steps"] == 2 and record["network"]["cells"] == 3
    # a search folder given as --arch
    run = search_folder(tmp_path / "run", space="darts", architecture="darts_v2", data=tiny_pickles)
    assert main(["retrain", "--arch", str(run), "--preset", "smoke", "--set", "n_train=32", "--quiet"]) == 0
    assert json.loads((run / "retrain-smoke.json").read_text())["architecture"] == space.to_string(
        space.from_string("darts_v2"))


@pytest.mark.parametrize("make, args, message", [
    (None, ["--space", "nope", "--arch", "x"], "unknown space 'nope'"),
    (None, ["--space", "nb201", "--arch", "|conv~0|"], "not an NB201 architecture string"),
    (None, ["--space", "nb201", "--arch", "runs/typo"], "is no folder"),
    pytest.param(None, ["--space", "darts", "--arch", "Genotype(normal=[('conv_9x9', 0)])"], "genotype lacks",
                 marks=pytest.mark.skipif(DARTSSpace is None, reason="the DARTS space is not importable")),
    (None, ["--arch", "|skip_connect~0|"], "--arch needs --space"),
    (None, [], "nothing to retrain"),
    ("corrupt", ["--data", "/no/such/data"], "result.json is unreadable or corrupt"),
    ("missing", ["--data", "/no/such/data"], "holds no finished search"),
    ("ok", ["--data", "/no/such/data"], "/no/such/data"),
    ("ok", ["--set", "hidden=3"], "do not apply to space nb201"),
    ("ok", ["--preset", "huge"], "unknown retraining preset"),
    ("ok", ["--resume"], "nothing to resume"),
    ("ok", ["--resume", "--overwrite"], "contradict"),
])
def test_cli_bad_inputs_are_one_line(tmp_path, capsys, make, args, message):
    argv = ["retrain", "--quiet"] + args
    if make:
        run = search_folder(tmp_path / "run")
        if make == "corrupt":
            (run / "result.json").write_text("{not json")
        elif make == "missing":
            (run / "result.json").unlink()
        argv.insert(1, str(run))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("oneshot: error: ")


def test_cli_task_options_override_the_presets(tmp_path, capsys):
    """The rnn presets read PTB with fallback=true; the user's --task-option has the last word."""
    (tmp_path / "ptb.valid.txt").write_text("a b c\n" * 50)
    (tmp_path / "ptb.test.txt").write_text("a b c\n" * 10)
    args = ["retrain", "--space", "rnn", "--arch", "|tanh|relu,relu|relu,tanh,relu|", "--data", str(tmp_path),
            "--preset", "smoke", "--out", str(tmp_path / "out"), "--quiet", "--set", "batch_size=4"]
    assert main(args + ["--task-option", "fallback=false"]) == 2
    assert "has no ptb.train.txt" in capsys.readouterr().err
    assert main(args) == 0


def test_retraining_on_real_cifar_beats_chance(cifar_path):
    """Also guards the class-sorted training set: a prefix of it would hold one class (accuracy 10 %)."""
    space = create_space("enas_micro")
    arch = space.from_string("normal: n0=(0 sep_conv_3x3, 1 identity) n1=(2 sep_conv_3x3, 1 avg_pool_3x3) "
                             "n2=(3 identity, 0 sep_conv_3x3) n3=(4 sep_conv_3x3, 1 max_pool_3x3) "
                             "n4=(5 identity, 2 sep_conv_3x3); reduce: n0=(0 sep_conv_3x3, 1 max_pool_3x3) "
                             "n1=(2 sep_conv_3x3, 1 identity) n2=(3 identity, 0 sep_conv_3x3) "
                             "n3=(4 sep_conv_3x3, 1 avg_pool_3x3) n4=(5 identity, 2 sep_conv_3x3)")
    config = retrain_preset("smoke", "enas_micro", cells=3, channels=4, n_train=3000, epochs=3, batch_size=64,
                            cutout=0)
    record = train(space, arch, tasks.create("cifar10", data=cifar_path), config, CPU, progress=False)
    assert record["test_accuracy"] > 0.2   # chance, and a one-class prefix, give 0.10; this run: 0.26
