"""Bad input, tried as a hostile user would (issue 12): every case ends with exit status 2 and exactly one line on
stderr that names the fix, and every file that was there before (a finished run, the data, the user's own
files) is byte-identical afterwards, with nothing added.

A case that is known not to be refused up front yet can be listed in NEEDS_PATCH (a strict xfail: once fixed, it
fails until its id is taken out).
"""

import hashlib
import importlib
import json
import pickle
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from oneshot.cli import main

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # experiments/ belongs to the repository, not to the installed package

# 4 iterations on 64 + 64 images: the finished run that every case starts from takes a second or two.
BASE = ["--preset", "smoke", "--set", "n_weight=64", "--set", "n_arch=64", "--set", "batch_size=32",
        "--set", "epochs=2", "--set", "warmup_epochs=1", "--quiet", "--device", "cpu"]
MARKER = "pwned"  # what a malicious data pickle would create in the workspace


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory) -> str:
    """Decoded data is cached here, not in the user's ~/.cache."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_pickles, data_cache) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONESHOT_CACHE", data_cache)
        assert main(["search", "--data", tiny_pickles, "--out", str(out), *BASE]) == 0
    assert {"config.json", "log.jsonl", "checkpoint.pt", "result.json", "search.png"} <= {p.name for p in out.iterdir()}
    return out


@pytest.fixture
def workspace(tmp_path, finished_run, tiny_pickles, data_cache, monkeypatch):
    """tmp_path, the current folder (so default outputs such as runs/toy land here and are seen), with a copy
    of the finished run in run/ and a file of the user's beside its files."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ONESHOT_CACHE", data_cache)
    shutil.copytree(finished_run, tmp_path / "run")
    (tmp_path / "run" / "notes.txt").write_text("the user's own notes")
    return SimpleNamespace(root=tmp_path, run=str(tmp_path / "run"), data=tiny_pickles)


def fingerprint(*folders) -> dict:
    """Every file (hidden ones too) by its SHA-256, and every folder, under each of ``folders``."""
    return {f"{folder}:{p.relative_to(folder).as_posix()}":
            (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder")
            for folder in map(Path, folders) for p in sorted(folder.rglob("*"))}


# --- what a case puts into the workspace before it runs (part of the "earlier content") --------------------
def image_folder(w, odd_size: int | None = None, name="imgs") -> None:
    root = w.root
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            folder = root / name / split / c
            folder.mkdir(parents=True)
            for i in range(3):
                side = odd_size if (odd_size and (split, c, i) == ("train", "cat", 0)) else 32
                Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def corrupt_image(w) -> None:
    image_folder(w)
    (w.root / "imgs" / "train" / "dog" / "1.png").write_bytes(b"\x89PNG broken")


def pickles_with(w, name: str, content) -> None:
    """A copy of the tiny pickles whose batch ``name`` is ``content`` (bytes) or ``content(batch)``'s pickle."""
    shutil.copytree(w.data, w.root / "pickles" / "cifar-10-batches-py")
    batch = w.root / "pickles" / "cifar-10-batches-py" / name
    if not isinstance(content, bytes):
        content = pickle.dumps(content(pickle.loads(batch.read_bytes())))
    batch.write_bytes(content)


class CreatesMarker:
    """Unpickled by a plain ``pickle.loads``, this creates the marker file: code run from a data file."""

    def __reduce__(self):
        return (open, (str(Path.cwd() / MARKER), "w"))


def malicious_batch(w) -> None:
    pickles_with(w, "data_batch_1", lambda batch: {**batch, b"data": CreatesMarker()})


def ptb_folder(w, damage: str) -> None:
    folder = w.root / "ptb"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"ptb.{split}.txt").write_text(" the cat sat on the mat <unk>\n" * 40)
    if damage == "empty":
        (folder / "ptb.valid.txt").write_text("")
    else:
        (folder / "ptb.test.txt").write_bytes(b" the caf\xe9 sat\n" * 40)


def write(name: str, content: str | bytes):
    def setup(w) -> None:
        (w.root / name).parent.mkdir(parents=True, exist_ok=True)
        (w.root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def search(*extra, flag="--overwrite", data=None):
    """``oneshot search`` of the tiny settings into the finished run's folder (with --overwrite: the dangerous
    case, an old run that must survive the refusal), ``extra`` last so that it wins."""
    return lambda w: ["search", "--data", data or w.data, "--out", w.run, *([flag] if flag else []), *BASE, *extra]


def shrink(*extra):
    return lambda w: ["shrink", "--data", w.data, "--out", w.run, "--overwrite", *BASE, *extra]


def argv(*args):
    return lambda w: [a.format(run=w.run, data=w.data, root=w.root) for a in args]


CASES = {
    # --set: every value typed and range-checked before anything is touched
    "set-batch_size-abc": (None, search("--set", "batch_size=abc"), "setting 'batch_size' needs an int, got 'abc'"),
    "set-w_lr-nan": (None, search("--set", "w_lr=nan"), "w_lr must be a positive finite number, got nan"),
    "set-a_lr-inf": (None, search("--set", "a_lr=inf"), "a_lr must be a positive finite number, got inf"),
    "set-channels-0": (None, search("--set", "channels=0"), "channels must be at least 1, got 0"),
    "set-log_every-0": (None, search("--set", "log_every=0"), "log_every must be at least 1, got 0"),
    "set-checkpoint_every-0": (None, search("--set", "checkpoint_every=0"), "checkpoint_every must be at least 1"),
    "set-epochs-negative": (None, search("--set", "epochs=-1"), "epochs must be at least 1, got -1"),
    "set-warmup-not-below-epochs": (None, search("--set", "warmup_epochs=2"),
                                    "warmup_epochs (2) must be below epochs (2)"),
    "set-n_weight-huge": (None, search("--set", "n_weight=60000"), "n_weight + n_arch = 60000 + 64 must be between"),
    "set-n_weight-0": (None, search("--set", "n_weight=0"), "does not fit 0 images"),
    "set-n_weight-fraction": (None, search("--set", "n_weight=2.5"), "setting 'n_weight' needs an int, got 2.5"),
    "set-batch_size-huge": (None, search("--set", "batch_size=100000"), "batch size 100000 does not fit"),
    "set-augment-maybe": (None, search("--set", "augment=maybe"), "setting 'augment' needs true/false"),
    "set-w_momentum-1.5": (None, search("--set", "w_momentum=1.5"), "w_momentum must lie in [0, 1)"),
    "set-w_lr_min-above-w_lr": (None, search("--set", "w_lr_min=1"), "w_lr_min must lie in [0, w_lr]"),
    "set-weight-decay-negative": (None, search("--set", "w_weight_decay=-1"), "w_weight_decay must be finite and not"),
    "set-w_grad_clip-0": (None, search("--set", "w_grad_clip=0"), "w_grad_clip must be positive"),
    "set-cutout-negative": (None, search("--set", "cutout=-1"), "cutout must not be negative"),
    "set-op_style-unknown": (None, search("--set", "op_style=foo"), "op_style must be advantage or nb201"),
    "set-options-not-a-mapping": (None, search("--set", "strategy_options=[1]"),
                                  "setting 'strategy_options' needs a JSON object"),
    "set-unknown-name": (None, search("--set", "epochz=3"), "unknown setting(s) ['epochz']"),
    "set-without-value": (None, search("--set", "epochs"), "must look like name=value"),
    "micro-batches-uneven": (None, search("--set", "batch_size=30", "--set", "micro_batches=4"), "must split evenly"),
    # --hp: typed from the strategy's signature, range-checked
    "hp-unknown": (None, search("--hp", "temperature=2"), "has no hyper-parameter 'temperature'"),
    "hp-baseline-maybe": (None, search("--hp", "baseline=maybe"), "setting 'baseline' needs true/false, got 'maybe'"),
    "hp-baseline-number": (None, search("--hp", "baseline=2"), "setting 'baseline' needs true/false, got 2"),
    "hp-grad_clip-negative": (None, search("--hp", "grad_clip=-1"), "grad_clip"),
    "hp-weight_decay-nan": (None, search("--hp", "weight_decay=nan"), "weight_decay"),
    # --space-option, --task-option, names
    "space-option-unknown": (None, search("--space-option", "foo=1"), "bad --space-option"),
    "space-option-ops-7": (None, search("--space-option", "ops=7"), "ops must be 4"),
    "task-option-unknown": (None, search("--task-option", "foo=1"), "--task-option"),
    "task-option-size-0": (image_folder, lambda w: search("--task", "image-folder", "--task-option", "size=0",
                                                          data=f"{w.root}/imgs")(w), "image size 0"),
    "unknown-task": (None, search("--task", "imagenet"), "unknown task 'imagenet'; choose from"),
    "unknown-space": (None, search("--space", "nope"), "unknown space 'nope'; choose from"),
    "unknown-strategy": (None, search("--strategy", "nope"), "unknown strategy 'nope'; choose from"),
    "unknown-preset": (None, search("--preset", "huge"), "unknown preset 'huge'; choose from"),
    "unknown-device": (None, search("--device", "tpu"), "unknown device 'tpu'"),
    "seed-not-an-int": (None, search("--seed", "abc"), "argument --seed: invalid int value: 'abc'"),
    "shrink-choice-unknown": (None, search("--shrink", "foo"), "argument --shrink: invalid choice: 'foo'"),
    # data
    "data-missing": (None, lambda w: search(data=f"{w.root}/nowhere")(w), "does not exist"),
    "data-empty-folder": (write("empty/README", "no images here"), lambda w: search(data=f"{w.root}/empty")(w),
                          "no image data found"),
    "data-mixed-sizes": (lambda w: image_folder(w, odd_size=40),
                         lambda w: search("--task", "image-folder", data=f"{w.root}/imgs")(w),
                         "not all of one square size (32x32, 40x40)"),
    "data-corrupt-image": (corrupt_image, lambda w: search("--task", "image-folder", data=f"{w.root}/imgs")(w),
                           "cannot decode image"),
    "data-corrupt-pickle": (lambda w: pickles_with(w, "data_batch_3", b"garbage"),
                            lambda w: search(data=f"{w.root}/pickles")(w), "data_batch_3"),
    "data-malicious-pickle": (malicious_batch, lambda w: search(data=f"{w.root}/pickles")(w),
                              "it asks to run io.open"),
    "ptb-empty-file": (lambda w: ptb_folder(w, "empty"),
                       lambda w: search("--space", "rnn", "--preset", "smoke", data=f"{w.root}/ptb")(w),
                       "ptb.valid.txt holds no words"),
    "ptb-not-utf8": (lambda w: ptb_folder(w, "latin-1"),
                     lambda w: search("--space", "rnn", "--preset", "smoke", data=f"{w.root}/ptb")(w),
                     "ptb.test.txt is not UTF-8 text"),
    # the run folder
    "resume-corrupt-config": (write("run/config.json", "{not json"), argv("search", "--out", "{run}", "--resume"),
                              "config.json is unreadable or corrupt"),
    "resume-config-not-a-mapping": (write("run/config.json", "[1, 2]"), argv("search", "--out", "{run}", "--resume"),
                                    "config.json is corrupt"),
    "resume-other-settings": (None, search("--seed", "3", flag="--resume"), "--resume with different settings"),
    "resume-corrupt-checkpoint": (write("run/checkpoint.pt", b"not a checkpoint"), search(flag="--resume"),
                                  "checkpoint.pt is corrupt"),
    "resume-and-overwrite": (None, search("--resume"), "--resume and --overwrite contradict each other"),
    "existing-run-without-a-flag": (None, search(flag=None), "already holds a run; pass --resume"),
    # (with the run's settings, --resume on a folder that holds no run starts it: a retry loop's first try)
    "resume-missing-folder": (None, argv("search", "--out", "{root}/nowhere", "--resume"), "nothing to resume in"),
    "out-under-a-file": (write("blocker", "a file, not a folder"),
                         lambda w: ["search", "--data", w.data, "--out", f"{w.root}/blocker/run", *BASE],
                         "cannot write the run folder"),
    "space-from-not-a-shrink-run": (None, lambda w: search("--space-from", str(w.root))(w),
                                    "shrink.json does not exist"),
    # --config
    "config-missing-file": (None, lambda w: search("--config", f"{w.root}/none.json")(w),
                            "cannot read the config file"),
    "config-not-a-mapping": (write("c.json", "[1]"), lambda w: search("--config", f"{w.root}/c.json")(w),
                             "must hold a mapping of settings"),
    "config-bad-yaml": (write("c.yaml", "epochs: [1, 2\n"), lambda w: search("--config", f"{w.root}/c.yaml")(w),
                        "is not valid YAML"),
    "config-bad-json": (write("c.json", "{"), lambda w: search("--config", f"{w.root}/c.json")(w),
                        "is not valid JSON"),
    "config-unknown-setting": (write("c.json", '{"epochz": 1}'), lambda w: search("--config", f"{w.root}/c.json")(w),
                               "unknown setting(s) ['epochz']"),
    "config-not-utf8": (write("c.json", b"\xff\xfe\x00"), lambda w: search("--config", f"{w.root}/c.json")(w),
                        "cannot read the config file"),
    # shrink
    "shrink-overwrite-bad-setting": (None, shrink("--set", "n_weight=60000"), "n_weight + n_arch = 60000"),
    "shrink-unknown-space": (None, shrink("--space", "nope"), "unknown space 'nope'"),
    "shrink-drop-negative": (None, shrink("--drop", "-1"), "--drop"),
    "shrink-set-channels-0": (None, shrink("--set", "channels=0"), "channels must be at least 1"),
    "shrink-set-log_every-0": (None, shrink("--set", "log_every=0"), "log_every must be at least 1"),
    # export, retrain, report, evaluate
    "export-not-a-run": (None, argv("export", "{root}", "--out", "{root}/child.pt2"), "holds no finished search"),
    "export-no-calibration": (None, argv("export", "{run}", "--out", "{root}/child.pt2", "--calibration-batches", "0"),
                              "--calibration-batches must be at least 1"),
    "retrain-corrupt-result": (write("run/result.json", "{broken"), argv("retrain", "{run}", "--preset", "smoke"),
                               "result.json is unreadable or corrupt"),
    "retrain-malformed-genotype": (None, argv("retrain", "--space", "darts", "--arch",
                                              "Genotype(normal=[('sep_conv_3x3', 0)", "--data", "{data}",
                                              "--preset", "smoke", "--out", "{root}/retrain"), "is not genotype text"),
    "retrain-unknown-preset": (None, argv("retrain", "{run}", "--preset", "huge"), "unknown retraining preset 'huge'"),
    "retrain-unknown-setting": (None, argv("retrain", "{run}", "--preset", "smoke", "--set", "epochz=1"),
                                "unknown retraining setting(s) ['epochz']"),
    "retrain-nothing-given": (None, argv("retrain", "--preset", "smoke"), "nothing to retrain"),
    "report-not-a-run": (None, argv("report", "{root}"), "has no result.json"),
    "report-damaged-result": (write("run/result.json", "{broken"), argv("report", "{run}"), "--resume"),
    "evaluate-malformed": (None, argv("evaluate", "|nor_conv_3x3~0|"), "is not an NB201 architecture string"),
    "evaluate-other-space": (None, argv("evaluate", "--space", "darts", "x"), "no tabular benchmark for space"),
    "unknown-command": (None, argv("frobnicate"), "invalid choice: 'frobnicate'"),
    "moved-toy": (None, argv("toy", "--trials", "1"), "python experiments/toy.py"),
    "moved-inpaint": (None, argv("inpaint", "--data", "{data}"), "python experiments/inpainting.py"),
}
# The experiment scripts (experiments/*.py, whose main() takes the script's arguments) follow the same rule.
SCRIPT_CASES = {
    "toy-no-trials": ("toy", argv("--trials", "0", "--quiet"), "--trials"),
    "toy-negative-seed": ("toy", argv("--trials", "1", "--iterations", "10", "--methods", "advantage", "--seed", "-1",
                                      "--quiet"), "--seed"),
    "toy-unknown-method": ("toy", argv("--trials", "1", "--iterations", "10", "--methods", "nope", "--quiet"),
                           "unknown strategy 'nope'"),
    "asng-toy-no-seeds": ("asng_toy", argv("--seeds", "0", "--quiet"), "--seeds"),
    "asng-toy-delta-not-positive": ("asng_toy", argv("--deltas", "0", "--seeds", "1", "--max-iter", "1", "--quiet"),
                                    "--deltas"),
    "asng-toy-no-iterations": ("asng_toy", argv("--max-iter", "0", "--seeds", "1", "--quiet"), "--max-iter"),
    "inpaint-no-layers": ("inpainting", argv("--layers", "0", "--data", "{data}", "--out", "{root}/inpaint", "--quiet"),
                          "layers must be at least 2"),
    "inpaint-channel-scale-nan": ("inpainting", argv("--channel-scale", "nan", "--data", "{data}", "--out",
                                                     "{root}/inpaint", "--quiet"), "--channel-scale"),
    "inpaint-no-retrain-iterations": ("inpainting", argv("--retrain-iterations", "0", "--data", "{data}", "--out",
                                                         "{root}/inpaint", "--quiet"), "--retrain-iterations"),
    "inpaint-unknown-device": ("inpainting", argv("--device", "tpu", "--data", "{data}", "--out", "{root}/inpaint",
                                                  "--quiet"), "unknown device 'tpu'"),
}
NEEDS_PATCH: dict[str, str] = {}  # cases not refused up front yet (id -> what happens instead)
assert set(NEEDS_PATCH) <= set(CASES)


def case_params():
    for name, case in CASES.items():
        marks = [pytest.mark.xfail(strict=True, reason=NEEDS_PATCH[name])] if name in NEEDS_PATCH else []
        yield pytest.param(*case, id=name, marks=marks)


@pytest.mark.parametrize("setup, make_argv, fragment", list(case_params()))
def test_bad_input_is_one_line_status_2_and_every_earlier_file_is_kept(workspace, capsys, setup, make_argv,
                                                                         fragment):
    if setup is not None:
        setup(workspace)
    before = fingerprint(workspace.root, workspace.data)
    capsys.readouterr()
    code = main(make_argv(workspace))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("oneshot: error: "), err
    assert fragment in lines[0]
    assert fingerprint(workspace.root, workspace.data) == before  # nothing changed, nothing added
    assert not (workspace.root / MARKER).exists()


@pytest.mark.parametrize("script, make_argv, fragment", list(SCRIPT_CASES.values()), ids=list(SCRIPT_CASES))
def test_bad_input_to_an_experiment_script_is_one_line_status_2_and_nothing_is_written(workspace, capsys, script,
                                                                                       make_argv, fragment):
    module = importlib.import_module(f"experiments.{script}")
    before = fingerprint(workspace.root, workspace.data)
    capsys.readouterr()
    code = module.main(make_argv(workspace))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"{module.PROG}: error: "), err
    assert fragment in lines[0]
    assert fingerprint(workspace.root, workspace.data) == before


def test_the_matrix_holds_at_least_40_distinct_cases_that_pass_today():
    """Distinct: no two cases share both their command line and the refusal they expect."""
    w = SimpleNamespace(root="R", run="R/run", data="D")
    distinct = {(tuple(make_argv(w)), fragment) for _, make_argv, fragment in CASES.values()}
    assert len(distinct) == len(CASES)
    assert len(set(CASES) - set(NEEDS_PATCH)) >= 40


def test_the_malicious_pickle_is_real(workspace):
    """The payload of 'data-malicious-pickle' does run under a plain unpickler, so its refusal means something."""
    malicious_batch(workspace)
    pickle.loads((workspace.root / "pickles" / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    assert (workspace.root / MARKER).exists()


# --- --hp values are typed: baseline=False is False, not the (true) string "False" -----------------------------
@pytest.mark.parametrize("text, expected", [("False", False), ("false", False), ("0", False), ("no", False),
                                            ("True", True), ("true", True), ("1", True)])
def test_hp_baseline_from_the_command_line_reaches_the_strategy_as_a_bool(workspace, monkeypatch, text, expected):
    from oneshot import strategies

    made = []
    real_create = strategies.create

    def create(*args, **kwargs):
        made.append(real_create(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(strategies, "create", create)
    out = workspace.root / "typed"
    assert main(["search", "--data", workspace.data, "--out", str(out), *BASE, "--hp", f"baseline={text}"]) == 0
    assert made and all(s.use_baseline is expected for s in made)  # `is`: a string "False" would be truthy


def test_report_advice_on_a_damaged_result_works_when_followed(workspace, capsys):
    """The fix that 'report' should name for a damaged result.json: --resume rewrites it from the checkpoint."""
    before = json.loads(Path(workspace.run, "result.json").read_text())
    Path(workspace.run, "result.json").write_text("{broken")
    assert main(["search", "--resume", "--out", workspace.run]) == 0  # the run's own settings, from config.json
    after = json.loads(Path(workspace.run, "result.json").read_text())
    timing = ("search_seconds", "cpu_seconds", "versions")
    assert {k: v for k, v in after.items() if k not in timing} == {k: v for k, v in before.items() if k not in timing}
