"""Penn Treebank word-level language modelling (spec advantagenas.md §3 "PTB RNN cell").

Data: a folder with Mikolov's ``ptb.train.txt``, ``ptb.valid.txt`` and ``ptb.test.txt`` (or ``data/`` below it,
the ``simple-examples`` layout). Each line is split on white space and gets an ``<eos>`` at its end (every line,
as the official code and DARTS read it). The vocabulary is the training words in order of first appearance
(10,000 words on the standard files, ``<unk>`` and ``<eos>`` included). The standard files already map rare words
to ``<unk>``, so valid and test hold no other word; in another corpus an unknown word becomes ``<unk>`` when the
vocabulary has one (the count goes into ``protocol_note``) and is refused otherwise.

``fallback=True`` (the cpu preset) is for a folder without the train file: the first 90 % of the valid tokens
train the weights, the last 10 % are the search's validation split and the "valid" split, test stays test, and
the vocabulary is the words of valid + test (7,596 on the standard files, not 10,000: the other 2,404 words
occur only in train, so no split could ever ask for them, and padding the softmax with them would only add
outputs that no target uses). ``protocol_note`` says so in the run log and result.json.

Batches: each split is cut into ``B`` contiguous columns (``batchify``) and served as windows ``x = data[t:t+T]``,
``y = data[t+1:t+T+1]`` of shape (T, B): T = 35 by default (BPTT 35), a trailing part shorter than T is dropped
in training (fixed shapes; at most T − 1 steps per column and epoch, 0.7 % of PTB train at batch 256) and kept
in evaluation. A window is a ``Window``, an
``(x, y)`` tuple that also names its stream and its position, so that the task can carry the hidden state:
``loss`` feeds window k the state that window k−1 of the same stream left, detached (truncated BPTT), and a
zero state at the first window of each epoch. The official Chainer iterator never resets the state and wraps
around the corpus; the reset per epoch is DARTS's and this library's choice.

Loss: the SUM over the T time steps of the per-step mean cross-entropy over the batch (pitfall 8: the official
loss adds 35 per-step ``softmax_cross_entropy`` means), i.e. T times the mean per-token loss. ``evaluate``
reports the perplexity exp(mean per-token cross-entropy) at batch 1 from a reset state, as the official
evaluation (which, unlike here, also scores one wrapped-around last token).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import Task, register

FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}
EOS, UNK = "<eos>", "<unk>"
FALLBACK_FRACTION = 0.9
_WHERE = ("pass --data PATH to a folder with ptb.train.txt, ptb.valid.txt and ptb.test.txt "
          "(Mikolov's simple-examples/data)")


# --- reading the corpus ----------------------------------------------------------------------------------
def read_words(path: Path) -> list[str]:
    """The words of a file, with ``<eos>`` at the end of each line; refuses empty and non-UTF-8 files."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}): use the plain-text PTB files") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}; fix its permissions or replace it") from None
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another
    words = [w for line in lines for w in line.split() + [EOS]]
    if len(words) == len(lines):
        raise UserError(f"{path} holds no words: {_WHERE}")
    return words


def build_vocabulary(*corpora: list[str]) -> dict[str, int]:
    """Word -> id in order of first appearance (as the official code and DARTS number them)."""
    vocab: dict[str, int] = {}
    for words in corpora:
        for w in words:
            vocab.setdefault(w, len(vocab))
    return vocab


def encode(words: list[str], vocab: dict[str, int], name: str) -> tuple[torch.Tensor, int]:
    """Ids of ``words``, and how many were unknown (mapped to ``<unk>``; refused when there is no ``<unk>``)."""
    unknown = [w for w in words if w not in vocab]
    if unknown and UNK not in vocab:
        raise UserError(f"{name} has {len(unknown)} word(s) outside the training vocabulary (e.g. {unknown[0]!r}) "
                        f"and the vocabulary has no {UNK}: map rare words to {UNK} as the Mikolov files do")
    unk = vocab.get(UNK)
    return torch.tensor([vocab.get(w, unk) for w in words], dtype=torch.int64), len(unknown)


def find_folder(path) -> Path:
    if path is None:
        raise UserError(f"the ptb task needs its data: {_WHERE}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UserError(f"data path {p} is not a folder: {_WHERE}")
    for folder in (p, p / "data"):
        if any((folder / f).is_file() for f in FILES.values()):
            return folder
    raise UserError(f"no ptb.*.txt files in {p}: {_WHERE}")


def batchify(ids: torch.Tensor, columns: int, name: str) -> torch.Tensor:
    """(steps, columns): column b is the b-th contiguous piece of the token sequence (the tail that does not
    fill a whole row is dropped), so each column reads on where its previous window stopped."""
    steps = len(ids) // columns
    if steps < 2:
        raise UserError(f"{name} has {len(ids)} tokens, too few for a batch of {columns} columns: lower batch_size")
    return ids[: steps * columns].view(columns, steps).t().contiguous()


# --- windows and streams ---------------------------------------------------------------------------------
class Window(tuple):
    """``(x, y)``, both (T, B) word ids, plus where it comes from: ``stream`` (name), ``index`` (position in
    that stream, counting across epochs), ``reset`` (first window of an epoch: start from a zero state) and
    ``columns`` (start, stop) of the stream's full batch that this (micro-)batch covers, of ``total``."""

    def __new__(cls, x, y, stream: str, index: int, reset: bool, columns: tuple[int, int] | None = None,
                total: int | None = None):
        self = super().__new__(cls, (x, y))
        self.stream, self.index, self.reset = stream, index, reset
        self.total = x.shape[1] if total is None else total
        self.columns = (0, self.total) if columns is None else columns
        return self


class WindowStream:
    """An endless stream of (T, B) windows over one split, kept on the device; a pass over the split is an
    epoch. Deterministic: the order is the corpus order, so ``seed`` is not needed and resume is exact."""

    def __init__(self, ids: torch.Tensor, batch_size: int, bptt: int, device, name: str):
        if batch_size < 1 or bptt < 1:
            raise UserError(f"batch_size ({batch_size}) and bptt ({bptt}) must be at least 1")
        self.data = batchify(ids, batch_size, name).to(device)
        self.batch_size, self.bptt, self.name = batch_size, bptt, name
        self.steps_per_epoch = (len(self.data) - 1) // bptt
        if self.steps_per_epoch < 1:
            raise UserError(f"{name}: {len(ids)} tokens in {batch_size} columns give no window of {bptt} steps: "
                            "lower batch_size or bptt")
        self.epoch, self.position = 0, 0

    def __iter__(self):
        return self

    def __next__(self) -> Window:
        t = self.position * self.bptt
        window = Window(self.data[t:t + self.bptt], self.data[t + 1:t + 1 + self.bptt], self.name,
                        self.epoch * self.steps_per_epoch + self.position, self.position == 0)
        self.position += 1
        if self.position == self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return window

    next = __next__

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "tokens": self.data.numel(),
                "batch_size": self.batch_size, "bptt": self.bptt}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        if any(state[k] != mine[k] for k in ("tokens", "batch_size", "bptt")):
            raise UserError(f"the saved {self.name} stream has {state['tokens']} tokens, batch {state['batch_size']}, "
                            f"bptt {state['bptt']}: resume with the same data, batch_size and bptt")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def eval_windows(ids: torch.Tensor, batch_size: int, bptt: int, device, name: str) -> Iterator[Window]:
    """The whole split in order, the last window possibly shorter."""
    data = batchify(ids, batch_size, name).to(device)
    for k, t in enumerate(range(0, len(data) - 1, bptt)):
        n = min(bptt, len(data) - 1 - t)
        yield Window(data[t:t + n], data[t + 1:t + 1 + n], name, k, k == 0)


def _copy(t: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if t is None else t.detach().to(device, copy=True)


# --- the task ---------------------------------------------------------------------------------------------
def summed_step_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ_t mean_b CE(logits[t, b], y[t, b]): the official loss (35 per-step batch means, added)."""
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
    return per_token.view(y.shape).mean(1).sum()


@register("ptb", "Penn Treebank word-level language model (perplexity; fallback=True without ptb.train.txt)")
class PTBTask(Task):
    """Options: ``data`` (folder), ``bptt`` (35), ``fallback`` (train on 90 % of valid when ptb.train.txt is
    missing), ``arch_data`` ("train": architecture steps read the weight stream's next windows, as the PTB
    protocol does; "valid": a stream over the validation split), ``eval_batch_size`` (1, the spec's)."""

    name = "ptb"
    input_shape = ()
    metric = "perplexity"
    higher_is_better = False
    batch_dim = 1

    def __init__(self, data=None, bptt: int = 35, fallback: bool = False, arch_data: str = "train",
                 eval_batch_size: int = 1):
        if arch_data not in ("train", "valid"):
            raise UserError(f"ptb: arch_data must be 'train' or 'valid', got {arch_data!r}")
        if not isinstance(fallback, bool):
            raise UserError(f"ptb: fallback must be true or false, got {fallback!r}")
        for option, value in (("bptt", bptt), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"ptb: {option} must be a positive integer, got {value!r}")
        self.bptt, self.arch_data, self.eval_batch_size = bptt, arch_data, eval_batch_size
        folder = find_folder(data)
        have_train = (folder / FILES["train"]).is_file()
        missing = [f for split, f in FILES.items() if not (folder / f).is_file() and (have_train or split != "train")]
        if missing:
            raise UserError(f"{folder} lacks {', '.join(missing)}: {_WHERE}")
        notes = []
        if have_train:
            words = {split: read_words(folder / f) for split, f in FILES.items()}
            self.vocab = build_vocabulary(words["train"])
        elif fallback:
            words = {split: read_words(folder / FILES[split]) for split in ("valid", "test")}
            self.vocab = build_vocabulary(words["valid"], words["test"])
            cut = int(FALLBACK_FRACTION * len(words["valid"]))
            words["train"], words["valid"] = words["valid"][:cut], words["valid"][cut:]
            notes.append(f"PTB train missing (fallback): weights trained on the first 90 % of ptb.valid.txt "
                         f"({cut} tokens), validation on its last 10 % ({len(words['valid'])} tokens), test on "
                         f"ptb.test.txt; vocabulary of valid+test ({len(self.vocab)} words, not the standard "
                         f"10,000): perplexities are not comparable with the paper's")
        else:
            raise UserError(f"{folder} has no {FILES['train']} (only valid/test): add Mikolov's train file, or set "
                            "the task option fallback=true (the cpu preset does) to train on 90 % of valid")
        self.ids = {}
        for split in ("train", "valid", "test"):
            self.ids[split], unknown = encode(words[split], self.vocab, f"{folder}/{FILES[split]}")
            if unknown:
                notes.append(f"{unknown} {split} tokens outside the vocabulary read as {UNK}")
        self.ids["arch"] = self.ids["valid"]
        self.num_outputs = len(self.vocab)
        self.protocol_note = "; ".join(notes) or None
        self._carry: dict[str, dict] = {}  # stream name -> {"index", "start", "end"} hidden states

    # -- data ------------------------------------------------------------------------------------------
    def search_streams(self, batch_size: int, device: torch.device, seed: int = 0, **_):
        """``**_``: image-task settings (n_weight, augment, ...) that the trainer passes to every task."""
        weights = WindowStream(self.ids["train"], batch_size, self.bptt, device, "search-weights")
        if self.arch_data == "train":
            return weights, weights  # one stream: weight and arch steps take its consecutive windows
        return weights, WindowStream(self.ids["arch"], batch_size, self.bptt, device, "search-arch")

    def train_stream(self, batch_size: int, device: torch.device, seed: int = 0, **_) -> WindowStream:
        return WindowStream(self.ids["train"], batch_size, self.bptt, device, "train")

    def eval_batches(self, split: str, batch_size: int, device: torch.device,
                     limit: int | None = None) -> Iterator[Window]:
        if split not in ("arch", "valid", "test"):
            raise UserError(f"ptb: unknown split {split!r}; choose arch, valid or test")
        ids = self.ids[split] if limit is None else self.ids[split][: limit + 1]
        return eval_windows(ids, batch_size, self.bptt, device, f"eval-{split}")

    def split(self, batch: Window, n: int) -> list[Window]:
        """``n`` micro-batches of columns; each remembers its columns so the hidden state follows it."""
        if n == 1:
            return [batch]
        x, y = batch
        width = x.shape[1] // n
        if width * n != x.shape[1]:
            raise UserError(f"a batch of {x.shape[1]} columns does not split into {n} parts; "
                            "change batch_size or micro_batches")
        c0 = batch.columns[0]
        return [Window(x[:, k * width:(k + 1) * width], y[:, k * width:(k + 1) * width], batch.stream,
                       batch.index, batch.reset, (c0 + k * width, c0 + (k + 1) * width), batch.total)
                for k in range(n)]

    # -- loss and metric -------------------------------------------------------------------------------
    def loss(self, forward, batch: Window) -> torch.Tensor:
        """Runs ``forward(x, hidden) -> (logits, hidden)`` from the state the stream's previous window left
        (None, i.e. zero, at a reset) and returns ``summed_step_loss``. A window may be run several times (two
        samples, or micro-batches): each run starts from the same state; the last run's state carries on."""
        if not isinstance(batch, Window):
            raise TypeError("PTBTask.loss needs the Window that its stream (or task.split) returned, which says "
                            "whose hidden state to carry; do not rebuild the (x, y) tuple")
        x, y = batch
        logits, hidden = forward(x, self._start_state(batch))
        self._store_state(batch, hidden)
        return summed_step_loss(logits, y)

    def _start_state(self, w: Window) -> torch.Tensor | None:
        carry = self._carry.get(w.stream)
        if carry is None or carry["index"] != w.index:  # the stream moved on: window index-1's end state starts it
            follows = carry is not None and carry["index"] == w.index - 1 and not w.reset
            start = carry["end"].to(w[0].device) if follows and carry["end"] is not None else None
            carry = {"index": w.index, "start": start, "end": None}
            self._carry[w.stream] = carry
        start = carry["start"]
        return None if start is None else start[w.columns[0]:w.columns[1]].to(w[0].device)

    def _store_state(self, w: Window, hidden: torch.Tensor) -> None:
        carry = self._carry[w.stream]
        if carry["end"] is None or carry["end"].device != hidden.device:
            carry["end"] = hidden.new_zeros((w.total,) + tuple(hidden.shape[1:]))
        carry["end"][w.columns[0]:w.columns[1]] = hidden.detach()

    @torch.no_grad()
    def evaluate(self, forward, split: str, device: torch.device, batch_size: int | None = None,
                 limit: int | None = None) -> dict:
        """Perplexity exp(mean per-token CE) over ``split`` from a reset state; batch ``eval_batch_size`` (1)
        unless given. The carried training states are left alone."""
        hidden, total, count = None, torch.zeros((), dtype=torch.float64, device=device), 0
        for x, y in self.eval_batches(split, batch_size or self.eval_batch_size, device, limit):
            logits, hidden = forward(x, hidden)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
            count += y.numel()
        loss = total.item() / max(1, count)
        return {"perplexity": math.exp(loss), "loss": loss, "tokens": count}

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """A snapshot (copies: the live end state is written in place by later micro-batches)."""
        return {"carry": {name: {"index": c["index"], "start": _copy(c["start"], "cpu"), "end": _copy(c["end"], "cpu")}
                          for name, c in self._carry.items()}}

    def load_state_dict(self, state: dict) -> None:
        # kept on the CPU until a window asks for them (``_start_state`` moves its slice to the window's device)
        self._carry = {name: {"index": int(c["index"]), "start": _copy(c["start"], "cpu"),
                              "end": _copy(c["end"], "cpu")} for name, c in state.get("carry", {}).items()}

    def describe(self) -> dict:
        out = super().describe()
        out.update(vocabulary=self.num_outputs, bptt=self.bptt,
                   tokens={split: len(self.ids[split]) for split in ("train", "valid", "test")})
        return out
