"""PTB task (oneshot/tasks/ptb.py) and the recurrent cell space (oneshot/spaces/rnn.py)."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from oneshot.errors import UserError
from oneshot.spaces.rnn import RNNSpace, child_from_supernet
from oneshot.tasks.ptb import PTBTask, Window, WindowStream, read_words, summed_step_loss

PTB = Path("/work/shared/data/ptb")
SMALL = dict(hidden=6, embedding=5)
ANCHOR = "|relu|relu,relu|relu,tanh,relu|"  # the official code's best PTB cell (spec §4)


def write_corpus(folder: Path, train="a b c\nb c d <unk>\n", valid="a d\nc <unk> b\n", test="d c b a\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        if text is not None:
            (folder / f"ptb.{name}.txt").write_text(text)
    return folder


def one_hot(space, arch):
    gates = torch.zeros(len(space), space.max_choices)
    gates[range(len(space)), list(arch)] = 1.0
    return gates, [[k] for k in arch]


# --- the cell ------------------------------------------------------------------------------------------
ACT = {"identity": lambda v: v, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
       "none": torch.zeros_like}


def reference_step(cell, ops, x, h):
    """One step of the spec's formulas, written out edge by edge (weights read from the cell's blocks)."""
    H = cell.hidden
    cx, gx = x @ cell.x_weight[:, :H], x @ cell.x_weight[:, H:]
    ch, gh = h @ cell.h_weight[:, :H], h @ cell.h_weight[:, H:]
    states = [h + torch.sigmoid(cx + ch) * (torch.tanh(gx + gh) - h)]
    e = 0
    for i in (1, 2, 3):
        terms = []
        for j in range(i):
            block = cell.out_weight[j][:, 2 * H * (i - j - 1): 2 * H * (i - j)]
            c, g = torch.sigmoid(states[j] @ block[:, :H]), states[j] @ block[:, H:]
            terms.append(states[j] + c * (ACT[ops[e]](g) - states[j]))
            e += 1
        states.append(sum(terms) / i)
    return (states[1] + states[2] + states[3]) / 3


def test_cell_follows_the_spec_formulas_and_carries_its_state():
    torch.manual_seed(0)
    space = RNNSpace()
    arch = space.from_string("|tanh|relu,none|sigmoid,identity,relu|")
    child = space.build_child(arch, num_outputs=11, **SMALL).eval()
    x = torch.randint(0, 11, (4, 3))
    h0 = torch.randn(3, 6)
    logits, h = child(x, h0)
    ref_h, ref_logits = h0, []
    for t in range(4):
        ref_h = reference_step(child.cell, space.op_names(arch), child.embed(x[t]), ref_h)
        ref_logits.append(child.decoder(ref_h))
    assert torch.allclose(h, ref_h, atol=1e-6)
    assert torch.allclose(logits, torch.stack(ref_logits), atol=1e-6)
    # a reset (None) is the zero state
    assert torch.allclose(child(x, None)[0], child(x, torch.zeros(3, 6))[0])


def test_one_hot_supernet_equals_the_child_with_shared_weights():
    torch.manual_seed(1)
    space = RNNSpace()
    supernet = space.build_supernet((), 13, **SMALL).eval()  # eval: dropout off
    x, h0 = torch.randint(0, 13, (5, 4)), torch.randn(4, 6)
    for text in (ANCHOR, "|none|identity,sigmoid|tanh,none,identity|"):
        arch = space.from_string(text)
        child = child_from_supernet(space, supernet, arch).eval()
        gates, active = one_hot(space, arch)
        gates.requires_grad_()
        out, h = supernet(x, h0, gates=gates, active=active, unit_gates=True)
        ref, ref_h = child(x, h0)
        assert torch.equal(out, ref) and torch.equal(h, ref_h)
        out.square().sum().backward()  # the gates of the chosen ops get dL/dgate; the others nothing
        chosen = gates.grad[range(6), list(arch)]
        assert torch.count_nonzero(gates.grad * (1 - gates.detach())) == 0
        none_edges = [e for e, op in enumerate(space.op_names(arch)) if op == "none"]
        assert all(chosen[e] == 0 for e in none_edges)  # 'none' outputs 0: its gate gradient is exactly 0
        assert all(chosen[e] != 0 for e in range(6) if e not in none_edges)
    # the anchor child's cell: 2 input matrices + 6 edges, each H x 2H, no biases
    assert sum(p.numel() for p in child.cell.parameters()) == (5 * 12 + 6 * 12) + 6 * 6 * 12


def test_dropout_settings_and_default_sizes():
    net = RNNSpace().build_supernet((), 10000)
    assert net.config == dict(nodes=3, hidden=300, embedding=300, dropout_input=0.5, dropout_output=0.5)
    assert sum(p.numel() for p in net.parameters()) == 7_450_000  # 3M embedding + 3.01M decoder + 1.44M cell
    assert max(p.abs().max().item() for p in net.parameters()) <= 0.1  # U(-0.1, 0.1), the official init
    torch.manual_seed(0)
    small = RNNSpace().build_child((0,) * 6, num_outputs=7, **SMALL)
    x = torch.randint(0, 7, (3, 2))
    assert not torch.equal(small(x)[0], small(x)[0])  # train mode drops out
    small.eval()
    assert torch.equal(small(x)[0], small(x)[0])


def test_architecture_strings_round_trip_and_malformed_ones_are_refused():
    space = RNNSpace()
    arch = space.from_string(ANCHOR)
    assert arch == (3, 3, 3, 3, 1, 3) and space.to_string(arch) == ANCHOR
    assert space.from_string(" | relu | relu, relu | relu, tanh, relu | ") == arch
    for bad, says in (("relu,relu", "3-node"), ("|relu|relu|relu,tanh,relu|", "node 2"),
                      ("|relu|relu,relu|relu,tanh,gelu|", "'gelu'"), ("|relu|relu,relu|", "3-node"),
                      ("|relu|relu,relu|relu,tanh,relu||", "3-node"), ("", "3-node")):
        with pytest.raises(UserError, match=says) as e:
            space.from_string(bad)
        assert "\n" not in str(e.value)
    four = RNNSpace(ops=4)
    with pytest.raises(UserError, match="'none'"):
        four.from_string("|none|relu,relu|relu,tanh,relu|")
    restricted = space.restrict({"edge21": ["relu", "tanh"]})
    assert restricted.decisions[2].choices == ("tanh", "relu")  # op order kept
    assert restricted.from_string(ANCHOR) == (3, 3, 1, 3, 1, 3) and restricted.to_string((3, 3, 1, 3, 1, 3)) == ANCHOR
    with pytest.raises(UserError, match="'sigmoid' \\(node 2, input s1\\)"):
        restricted.from_string("|relu|relu,sigmoid|relu,tanh,relu|")
    with pytest.raises(UserError, match="word ids"):
        space.build_supernet((3, 32, 32), 10)
    with pytest.raises(UserError, match="vocabulary"):
        space.build_supernet((), None)
    with pytest.raises(UserError, match="unknown network option.*hiden"):
        space.build_supernet((), 10, hiden=8)
    # the image settings the trainer passes to every space are ignored
    assert space.build_supernet((), 10, channels=16, op_style="advantage", hidden=8).config["hidden"] == 8
    with pytest.raises(UserError, match="ops must be"):
        RNNSpace(ops=3)


# --- loss --------------------------------------------------------------------------------------------------
def test_loss_is_the_sum_over_steps_of_the_per_step_batch_mean():
    torch.manual_seed(0)
    logits, y = torch.randn(4, 3, 5), torch.randint(0, 5, (4, 3))
    by_hand = 0.0
    for t in range(4):
        by_hand += sum(-torch.log_softmax(logits[t, b], -1)[y[t, b]].item() for b in range(3)) / 3
    assert summed_step_loss(logits, y).item() == pytest.approx(by_hand, rel=1e-6)
    mean_per_token = F.cross_entropy(logits.view(-1, 5), y.view(-1)).item()
    assert summed_step_loss(logits, y).item() == pytest.approx(4 * mean_per_token)


def test_task_loss_and_micro_batches_give_the_full_batch_loss(tmp_path):
    task = PTBTask(write_corpus(tmp_path, train="a b c <unk>\n" * 20), bptt=3)
    torch.manual_seed(0)
    net = RNNSpace().build_child((1,) * 6, num_outputs=task.num_outputs, **SMALL).eval()
    stream, _ = task.search_streams(4, "cpu", 0)
    first, second = next(stream), next(stream)
    task.loss(net, first)
    whole = task.loss(net, second)
    logits, _ = net(second[0], net(first[0])[1])
    assert whole.item() == pytest.approx(summed_step_loss(logits, second[1]).item(), rel=1e-6)
    parts = task.split(second, 2)  # same window again: each part starts from its own columns of the state
    assert [p.columns for p in parts] == [(0, 2), (2, 4)]
    assert sum(task.loss(net, p).item() for p in parts) / 2 == pytest.approx(whole.item(), rel=1e-6)
    with pytest.raises(UserError, match="does not split"):
        task.split(second, 3)
    with pytest.raises(TypeError, match="Window"):
        task.loss(net, tuple(second))


# --- data --------------------------------------------------------------------------------------------------
def test_standard_corpus_vocabulary_and_unknown_words(tmp_path):
    task = PTBTask(write_corpus(tmp_path, valid="a zebra\n"))
    # train words in order of first appearance, <eos> at each line end
    assert list(task.vocab) == ["a", "b", "c", "<eos>", "d", "<unk>"] and task.num_outputs == 6
    assert task.ids["train"].tolist() == [0, 1, 2, 3, 1, 2, 4, 5, 3]
    assert task.ids["valid"].tolist() == [0, 5, 3]  # zebra -> <unk>, and the run log says so
    assert "1 valid tokens outside the vocabulary" in task.protocol_note
    assert PTBTask(write_corpus(tmp_path / "clean")).protocol_note is None
    with pytest.raises(UserError, match="no <unk>"):
        PTBTask(write_corpus(tmp_path / "nounk", train="a b\n", valid="a zebra\n"))
    # a folder from the simple-examples archive holds the files in data/
    write_corpus(tmp_path / "archive" / "data")
    assert PTBTask(tmp_path / "archive").num_outputs == 6


def test_missing_train_is_named_and_the_fallback_splits_valid(tmp_path):
    folder = write_corpus(tmp_path, train=None, valid="v w x y z\n" * 4, test="t u\n")
    with pytest.raises(UserError, match="no ptb.train.txt.*fallback=true") as e:
        PTBTask(folder)
    assert "\n" not in str(e.value)
    task = PTBTask(folder, fallback=True)
    assert task.num_outputs == 8  # v w x y z <eos> t u: valid + test words
    assert len(task.ids["train"]) == 21 and len(task.ids["valid"]) == 3  # 90 % / 10 % of 24 tokens
    assert torch.equal(task.ids["arch"], task.ids["valid"]) and len(task.ids["test"]) == 3
    assert "first 90 % of ptb.valid.txt (21 tokens)" in task.protocol_note
    assert task.describe()["protocol_note"] == task.protocol_note


@pytest.mark.parametrize("case, says", [
    ("empty", "holds no words"), ("blank", "holds no words"), ("latin1", "not UTF-8"),
    ("missing", "not a folder"), ("nofiles", "no ptb"), ("novalid", "lacks ptb.valid.txt"),
    ("none", "needs its data"), ("file", "not a folder"),
])
def test_hostile_corpora_give_one_line_errors(tmp_path, case, says):
    path = tmp_path / "ptb"
    if case == "empty":
        write_corpus(path, train="")
    elif case == "blank":
        write_corpus(path, valid="\n \n")
    elif case == "latin1":
        write_corpus(path)
        (path / "ptb.test.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    elif case == "nofiles":
        path.mkdir()
        (path / "readme.txt").write_text("hello")
    elif case == "novalid":
        write_corpus(path, valid=None)
    elif case == "none":
        path = None
    elif case == "file":
        path.write_text("a b c")
    with pytest.raises(UserError, match=says) as e:
        PTBTask(path)
    assert "\n" not in str(e.value)


def test_read_words_appends_eos_per_line(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes(b" a b \r\n\nc\n")
    assert read_words(f) == ["a", "b", "<eos>", "<eos>", "c", "<eos>"]
    f.write_bytes(b"a b")  # no final newline: still one line
    assert read_words(f) == ["a", "b", "<eos>"]


@pytest.mark.skipif(not (PTB / "ptb.valid.txt").is_file(), reason="no PTB valid/test files")
def test_real_ptb_counts_and_uniform_perplexity_is_the_vocabulary_size():
    task = PTBTask(PTB, fallback=True)
    # 70,390 words + 3,370 lines in valid; 78,669 + 3,761 in test; 7,596 distinct words of valid + test
    assert task.num_outputs == 7596 and "<unk>" in task.vocab and "<eos>" in task.vocab
    assert len(task.ids["train"]) + len(task.ids["valid"]) == 73_760 and len(task.ids["train"]) == 66_384
    assert len(task.ids["test"]) == 82_430

    def uniform(x, hidden):
        return torch.zeros(*x.shape, task.num_outputs), hidden

    for split, tokens in (("valid", 7_375), ("test", 82_429)):  # batch 1: every token but the first is a target
        result = task.evaluate(uniform, split, "cpu")
        assert result["tokens"] == tokens
        assert result["perplexity"] == pytest.approx(7596, rel=1e-6)
        assert result["loss"] == pytest.approx(math.log(7596), rel=1e-6)


# --- streams and the carried state -------------------------------------------------------------------------
def test_stream_state_round_trip_gives_identical_next_windows():
    ids = torch.arange(100)
    stream = WindowStream(ids, 4, 5, "cpu", "s")  # 25 steps per column -> 4 windows of 5 per epoch
    assert stream.steps_per_epoch == 4
    first = next(stream)
    assert first[0].shape == (5, 4) and first[0][:, 1].tolist() == list(range(25, 30))
    assert torch.equal(first[1], first[0] + 1) and first.reset and first.index == 0
    for _ in range(2):
        next(stream)
    saved = stream.state_dict()
    expected = [next(stream) for _ in range(3)]
    assert stream.epoch == 1 and expected[1].reset and expected[1].index == 4
    again = WindowStream(ids, 4, 5, "cpu", "s")
    again.load_state_dict(saved)
    for a, b in zip(expected, (next(again) for _ in range(3))):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and (a.index, a.reset) == (b.index, b.reset)
    with pytest.raises(UserError, match="same data, batch_size"):
        WindowStream(ids, 2, 5, "cpu", "s").load_state_dict(saved)
    with pytest.raises(UserError, match="lower batch_size"):
        WindowStream(ids, 60, 5, "cpu", "s")


def test_hidden_state_is_carried_across_windows_and_reset_at_each_epoch(tmp_path):
    task = PTBTask(write_corpus(tmp_path, train="a b c <unk>\n" * 10), bptt=2)  # 50 tokens / 2 columns: 12 windows
    received = []

    def forward(x, hidden):  # records the state it is given; its new state is the window's last inputs
        received.append(hidden)
        return torch.zeros(*x.shape, task.num_outputs), x[-1:].t().float() + 100 * len(received)

    weights, arch = task.search_streams(2, "cpu", 0)
    assert weights is arch  # arch steps take the weight stream's next windows (PTB protocol)
    per_epoch = weights.steps_per_epoch
    assert per_epoch == 12
    windows = [next(weights) for _ in range(per_epoch + 2)]
    for w in windows[:3]:
        task.loss(forward, w)
    assert received[0] is None
    assert torch.equal(received[1], windows[0][0][-1:].t().float() + 100)  # window 1 starts where 0 stopped
    assert torch.equal(received[2], windows[1][0][-1:].t().float() + 200)
    saved = task.state_dict()
    task.loss(forward, windows[2])  # the same window again (a second sample) starts from the same state
    assert torch.equal(received[3], received[2])
    for w in windows[3:per_epoch + 1]:
        task.loss(forward, w)
    assert received[-1] is None  # first window of epoch 2: reset
    task.loss(forward, windows[per_epoch + 1])
    assert received[-1] is not None
    # resume: a fresh task with the saved state continues exactly
    other = PTBTask(tmp_path, bptt=2)
    other.load_state_dict(saved)
    received.clear()
    other.loss(forward, windows[3])
    assert torch.equal(received[0], windows[2][0][-1:].t().float() + 300)


def test_second_window_loss_depends_on_the_first(tmp_path):
    task = PTBTask(write_corpus(tmp_path, train="a b c d <unk>\n" * 12), bptt=4)
    torch.manual_seed(0)
    net = RNNSpace().build_child((1,) * 6, num_outputs=task.num_outputs, **SMALL).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(10)  # U(-1, 1): the state then matters enough to see
    stream, _ = task.search_streams(2, "cpu", 0)
    first, second = next(stream), next(stream)
    task.loss(net, first)
    carried = task.loss(net, second)
    from_reset = task.loss(net, Window(second[0], second[1], "another stream", 0, True))
    assert from_reset.item() == pytest.approx(summed_step_loss(net(second[0])[0], second[1]).item(), rel=1e-6)
    assert abs(carried.item() - from_reset.item()) > 1e-2
    expected = summed_step_loss(net(second[0], net(first[0])[1])[0], second[1])
    assert carried.item() == pytest.approx(expected.item(), rel=1e-6)
    # evaluation starts from a reset state and leaves the carried training state alone
    before = task.state_dict()
    task.evaluate(net, "valid", "cpu")
    assert torch.equal(task.state_dict()["carry"][second.stream]["end"], before["carry"][second.stream]["end"])


def test_bad_task_options_are_refused_in_one_line(tmp_path):
    folder = write_corpus(tmp_path)
    for options, says in ((dict(bptt="35"), "bptt"), (dict(bptt=0), "bptt"), (dict(fallback="yes"), "fallback"),
                          (dict(arch_data="test"), "arch_data"), (dict(eval_batch_size=0), "eval_batch_size")):
        with pytest.raises(UserError, match=says):
            PTBTask(folder, **options)
    with pytest.raises(UserError, match="unknown split"):
        PTBTask(folder).eval_batches("train", 1, "cpu")
