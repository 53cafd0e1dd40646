"""The Task engine: any image folder, a user's own space and data, single-level steps, strategy loss terms,
plugins. Every search here runs through the one loop (``trainer.Search`` / ``oneshot.search``)."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from oneshot import strategies, tasks
from oneshot.cli import main
from oneshot.config import preset
from oneshot.runs import RunFolder
from oneshot.trainer import Search

TINY = ["--set", "n_weight=48", "--set", "n_arch=48", "--set", "batch_size=16", "--set", "epochs=2",
        "--set", "warmup_epochs=1", "--set", "log_every=2", "--set", "checkpoint_every=2", "--set", "channels=4"]


def image_folder(root, classes=12, size=48, train=8, test=4, odd_size=None):
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True)
            for i in range(n):
                s = odd_size if (odd_size and c == 0 and i == 0 and split == "train") else size
                Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_twelve_class_48px_folder_is_searched_end_to_end_and_resumes(tmp_path, capsys):
    data = image_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    code = main(["search", "--task", "image-folder", "--data", str(data), "--preset", "smoke", "--out", str(out),
                 "--device", "cpu", "--quiet", *TINY])
    printed = capsys.readouterr().out
    assert code == 0
    assert "NB201" not in printed  # the table's CIFAR-10 accuracies mean nothing here
    result = json.loads((out / "result.json").read_text())
    assert result["nb201"] == {} and result["task"]["num_outputs"] == 12
    assert result["task"]["input_shape"] == [3, 48, 48]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["model"]["classifier.weight"].shape[0] == 12
    assert all("nb201_cifar10" not in json.loads(line) for line in (out / "log.jsonl").read_text().splitlines())
    # resume: a run interrupted after 3 iterations and resumed ends identically
    from conftest import interrupted_and_resumed

    config = preset("smoke").replace(task="image-folder", data=str(data), device="cpu", n_weight=48, n_arch=48,
                                     batch_size=16, log_every=2, checkpoint_every=2, channels=4)
    task = tasks.create("image-folder", data=str(data))
    full = Search(config, task, torch.device("cpu")).run(RunFolder(tmp_path / "full", config.to_dict()),
                                                         progress=False)
    resumed = interrupted_and_resumed(config, tasks.create("image-folder", data=str(data)), tmp_path / "r",
                                      stop_after=3)
    for key in ("architecture", "theta", "iterations"):
        assert resumed[key] == full[key]


@pytest.mark.parametrize("make, argv, fragment", [
    (lambda p: image_folder(p, classes=3, odd_size=40), [], "not all of one square size"),
    (lambda p: (p / "train").mkdir(parents=True) or p, [], "no image data found"),
    (lambda p: image_folder(p, classes=3), ["--task", "imagenet"], "unknown task 'imagenet'"),
    (lambda p: image_folder(p, classes=3), ["--task-option", "size=0"], "image size 0"),
    (lambda p: image_folder(p, classes=3), ["--set", "batch_size=abc"], "'batch_size' needs an int"),
    (lambda p: image_folder(p, classes=3), ["--set", "w_lr=nan"], "w_lr must be a positive finite"),
    (lambda p: image_folder(p, classes=3), ["--set", "warmup_epochs=5"], "warmup_epochs (5) must be below"),
    (lambda p: image_folder(p, classes=3), ["--hp", "baseline=maybe"], "'baseline' needs true/false"),
    (lambda p: image_folder(p, classes=3), ["--space-option", "foo=1"], "bad --space-option"),
])
def test_bad_task_input_is_one_line_and_the_earlier_run_survives(tmp_path, capsys, make, argv, fragment):
    data = make(tmp_path / "imgs")
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text('{"earlier": 1}')
    base = ["--task", "image-folder"] if "--task" not in argv else []
    code = main(["search", *base, "--data", str(data), "--preset", "smoke", "--out", str(out), "--overwrite",
                 "--device", "cpu", "--quiet", *argv])
    assert code == 2
    assert fragment in one_line(capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == ["result.json"]
    assert (out / "result.json").read_text() == '{"earlier": 1}'


def test_hp_strings_are_typed_from_the_signature():
    space = __import__("oneshot.spaces", fromlist=["create_space"]).create_space("nb201")
    assert strategies.create("advantage", space, baseline="False").use_baseline is False
    assert strategies.create("advantage", space, baseline="true").use_baseline is True


# --- a user's own space and data, from Python ------------------------------------------------------------------
def test_readme_user_space_on_user_dataset(tmp_path):
    """The README's 'your own space' example, verbatim in spirit: a two-decision MLP space on a Dataset."""
    import torch.nn as nn

    from oneshot import search
    from oneshot.config import SearchConfig
    from oneshot.spaces import Categorical, SearchSpace
    from oneshot.supernet import MixedOp

    class MLPSpace(SearchSpace):
        name = "mlp"

        def __init__(self):
            super().__init__([Categorical("act1", ("relu", "tanh", "identity")),
                              Categorical("act2", ("relu", "tanh", "identity"))])

        def build_supernet(self, input_shape, num_outputs, **_):
            return MLP(input_shape[0], num_outputs)

    class MLP(nn.Module):
        def __init__(self, d_in, d_out):
            super().__init__()
            self.l1, self.l2, self.head = nn.Linear(d_in, 32), nn.Linear(32, 32), nn.Linear(32, d_out)
            self.act = nn.ModuleList(MixedOp([nn.ReLU(), nn.Tanh(), nn.Identity()]) for _ in range(2))

        def forward(self, x, gates=None, active=None, unit_gates=False, inactive_grad=False):
            for i, layer in enumerate((self.l1, self.l2)):
                x = self.act[i](layer(x), None if gates is None else gates[i], None if active is None else active[i],
                                unit_gates, inactive_grad)
            return self.head(x)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()  # a nonlinear rule: identity activations cannot fit it
    dataset = torch.utils.data.TensorDataset(x, y)
    task = tasks.from_dataset(dataset, test=(x[:128], y[:128]))
    config = SearchConfig(strategy="advantage", epochs=6, warmup_epochs=2, batch_size=32, a_lr=0.05,
                          log_every=8, checkpoint_every=8, device="cpu", w_lr=0.05)
    result = search(config, tmp_path / "mlp", task=task, space=MLPSpace(), progress=False)
    assert result["task"]["num_outputs"] == 2 and result["nb201"] == {}
    assert (tmp_path / "mlp" / "checkpoint.pt").exists()
    assert result["architecture"] != "act1=identity,act2=identity"

    from conftest import interrupted_and_resumed

    full = Search(config, task, torch.device("cpu"), space=MLPSpace()).run(
        RunFolder(tmp_path / "full", config.to_dict()), progress=False)
    resumed = interrupted_and_resumed(config, task, tmp_path / "resumed", stop_after=20, space=MLPSpace())
    assert resumed["theta"] == full["theta"] and resumed["architecture"] == full["architecture"]


def test_a_dataset_that_yields_the_wrong_types_is_one_line():
    from oneshot.errors import UserError

    class Bad(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return "not a tensor", 1

    with pytest.raises(UserError, match="inputs must be tensors"):
        tasks.from_dataset(Bad())
    with pytest.raises(UserError, match="must be \\(inputs, targets\\) tensors or a torch Dataset"):
        tasks.from_tensors([1, 2, 3])


# --- single-level steps and strategy loss terms --------------------------------------------------------------
def affine_search(tmp_path, strategy_cls, synthetic_cifar, name):
    """Register ``strategy_cls`` under ``name`` and build a tiny NB201 search with it (no warm-up)."""
    strategies.register(name, "test strategy")(strategy_cls)
    config = preset("smoke").replace(strategy=name, warmup_epochs=0, epochs=1, n_weight=64, n_arch=64,
                                     batch_size=32, device="cpu")
    return Search(config, synthetic_cifar, torch.device("cpu"))


def test_single_level_takes_weight_and_theta_gradients_from_one_backward(tmp_path, synthetic_cifar):
    from oneshot.strategies.darts import DARTS

    told = {}

    class SingleLevel(DARTS):
        arch_batch = "same"

        def tell(self, samples, losses, gate_grads, phase):
            told.setdefault(phase, []).append([g.clone() for g in gate_grads] if gate_grads else None)
            super().tell(samples, losses, gate_grads, phase)

    search = affine_search(tmp_path, SingleLevel, synthetic_cifar, "test_single_level")
    model_before = {k: v.clone() for k, v in search.model.state_dict().items()}
    batch = next(search.task.search_streams(32, torch.device("cpu"), search.config.seed, n_weight=64, n_arch=64,
                                            augment=search.config.augment, cutout=0)[0])
    gates = torch.softmax(search.strategy.theta.detach(), -1).clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(search.model(batch[0], gates=gates), batch[1])
    weight_grads = torch.autograd.grad(loss, [p for p in search.model.parameters()] + [gates], allow_unused=True)
    expected_gate_grad = weight_grads[-1]
    val_state = search.val_stream.state_dict()
    search.weight_step("weight")
    assert "weight" not in told and len(told["arch"]) == 1                  # told once, as an arch step
    torch.testing.assert_close(told["arch"][0][0], expected_gate_grad)      # dL/dgate of the training batch
    assert search.val_stream.state_dict()["pos"] == val_state["pos"]        # no validation batch was drawn
    changed = [k for k, v in search.model.state_dict().items() if not torch.equal(v, model_before[k])]
    assert changed and search.arch_steps == 1                               # weights stepped in the same step


def test_a_strategy_loss_term_reaches_the_gate_gradient(tmp_path, synthetic_cifar):
    from oneshot.strategies.darts import DARTS

    told = []
    cost = torch.arange(24, dtype=torch.float32).view(6, 4) / 10

    class Plain(DARTS):
        def tell(self, samples, losses, gate_grads, phase):
            if phase == "arch":
                told.append((gate_grads[0].clone(), losses[0]))
            super().tell(samples, losses, gate_grads, phase)

    class WithTerm(Plain):
        def loss_term(self, sample, gates):
            return (gates * cost).sum()

    plain = affine_search(tmp_path, Plain, synthetic_cifar, "test_plain")
    plain.arch_step()
    term = affine_search(tmp_path, WithTerm, synthetic_cifar, "test_term")
    term.arch_step()
    (g_plain, loss_plain), (g_term, loss_term) = told
    torch.testing.assert_close(g_term - g_plain, cost)   # d(term)/dgate = cost, added to the task's dL/dgate
    assert loss_term == loss_plain                        # the told loss is the task's own


# --- plugins ----------------------------------------------------------------------------------------------------
def test_a_plugin_from_the_entry_point_group_appears_in_oneshot_spaces(tmp_path, capsys, monkeypatch):
    from oneshot import plugins

    pkg = tmp_path / "site"
    (pkg / "my_nas_plugin").mkdir(parents=True)
    (pkg / "my_nas_plugin" / "__init__.py").write_text(
        "from oneshot.spaces import register, NB201Space\n"
        "register('my_space', 'a space from a pip-installed plugin')(lambda: NB201Space())\n")
    dist = pkg / "my_nas_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-nas-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[oneshot.plugins]\nmy_nas = my_nas_plugin\n")
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setattr(plugins, "_loaded", False)
    try:
        assert main(["spaces"]) == 0
        lines = [line.split(None, 1) for line in capsys.readouterr().out.splitlines()]
        assert ["my_space", "a space from a pip-installed plugin"] in lines
    finally:
        from oneshot.spaces import SPACES

        SPACES.pop("my_space", None)
        sys.modules.pop("my_nas_plugin", None)


def test_test_batches_mix_classes_when_the_test_set_is_stored_sorted():
    """Supernets are evaluated with batch statistics: a class-sorted test set (as the image folders load) must
    not reach them one class per batch, nor a ``limit`` prefix of one class."""
    from oneshot.data import Cifar10
    from oneshot.tasks.images import ImageClassification

    y = torch.arange(10).repeat_interleave(20)  # sorted by class
    images = Cifar10(torch.zeros(20, 3, 8, 8, dtype=torch.uint8), torch.arange(10).repeat(2),
                     torch.arange(200, dtype=torch.uint8).reshape(200, 1, 1, 1).expand(200, 3, 8, 8).clone(), y,
                     tuple(str(k) for k in range(10)))
    task = ImageClassification(images, "sorted")
    (x, labels), *rest = list(task.eval_batches("test", 64, torch.device("cpu")))
    assert len(set(labels.tolist())) >= 8
    (_, first), = list(task.eval_batches("test", 64, torch.device("cpu"), limit=30))
    assert len(set(first.tolist())) >= 5
    # every example is seen once, each image with its own label (image k holds the value k, label k // 20)
    xs, ys = zip(*[(b[0], b[1]) for b in task.eval_batches("test", 256, torch.device("cpu"))])
    xs, ys = torch.cat(xs), torch.cat(ys)
    assert sorted(ys.tolist()) == y.tolist()
    value = xs[:, 0, 0, 0]
    assert torch.equal(torch.argsort(torch.argsort(value)) // 20, ys)
