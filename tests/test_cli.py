"""Bad input ends with exit status 2 and one line that names the fix; nothing earlier is lost."""

import json

import pytest

from oneshot.cli import main

ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("oneshot: error: ")
    return lines[0]


def test_evaluate_known_cell(capsys):
    code, out, _ = run(capsys, "evaluate", "--space", "nb201", ARCH)
    assert code == 0
    assert "93.76" in out and "rank   167 / 15625" in out


def test_evaluate_accepts_none_cells_and_reports_isomorphs(capsys):
    arch = "|none~0|+|nor_conv_3x3~0|skip_connect~1|+|nor_conv_3x3~0|skip_connect~1|nor_conv_3x3~2|"
    code, out, _ = run(capsys, "evaluate", arch)
    assert code == 0 and "compute the same function" in out


def test_listings(capsys):
    code, out, _ = run(capsys, "strategies")
    assert code == 0 and {"advantage", "advantage_wb", "reinforce", "random"} <= {l.split()[0] for l in out.splitlines()}
    code, out, _ = run(capsys, "spaces")
    assert code == 0 and out.startswith("nb201")


SEARCH_ERRORS = [
    (["--strategy", "nope"], "unknown strategy 'nope'; choose from"),
    (["--space", "nope"], "unknown space 'nope'; choose from"),
    (["--preset", "huge"], "unknown preset 'huge'; choose from"),
    (["--set", "epochz=3"], "unknown setting(s) ['epochz']"),
    (["--set", "epochs"], "must look like name=value"),
    (["--hp", "temperature=2"], "has no hyper-parameter 'temperature'"),
    (["--space-option", "ops=7"], "ops must be 4"),
    (["--device", "cuda:0"], "no CUDA GPU"),
    (["--data", "/nonexistent/cifar"], "does not exist"),
    (["--set", "batch_size=30", "--set", "micro_batches=4"], "must split evenly"),
]


@pytest.mark.parametrize("argv, fragment", SEARCH_ERRORS)
def test_bad_search_input_is_one_line_status_2_and_keeps_the_folder(capsys, tmp_path, tiny_pickles, argv, fragment):
    import torch

    if "cuda:0" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so cuda is a valid device")
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text('{"earlier": 1}')
    data = [] if "--data" in argv else ["--data", tiny_pickles]
    code, _, err = run(capsys, "search", "--out", str(out), "--resume", *data, *argv)
    assert code == 2
    assert fragment in one_error_line(err)
    assert [p.name for p in out.iterdir()] == ["result.json"]
    assert (out / "result.json").read_text() == '{"earlier": 1}'


@pytest.mark.parametrize("argv, fragment", [
    (["evaluate", "|nor_conv_3x3~0|"], "is not an NB201 architecture string"),
    (["evaluate", "|conv9~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"],
     "'conv9' is not a choice"),
    (["evaluate"], "--example"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_and_status_2(capsys, argv, fragment):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert fragment in one_error_line(err)


@pytest.mark.parametrize("command, script", [("toy", "experiments/toy.py"), ("asng-toy", "experiments/asng_toy.py"),
                                             ("inpaint", "experiments/inpainting.py")])
def test_the_papers_experiments_are_scripts_not_subcommands(capsys, command, script):
    import argparse
    from pathlib import Path

    from oneshot.cli import build_parser

    code, _, err = run(capsys, command, "--help")
    assert code == 2 and f"python {script}" in one_error_line(err)
    assert (Path(__file__).resolve().parents[1] / script).is_file()
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert command not in commands.choices and "retrain" in commands.choices


def test_existing_run_folder_is_not_overwritten(capsys, tmp_path, cifar_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text('{"precious": true}')
    code, _, err = run(capsys, "search", "--preset", "smoke", "--data", cifar_path, "--out", str(out), "--quiet")
    assert code == 2 and "--resume" in one_error_line(err) and "--overwrite" in err
    assert json.loads((out / "result.json").read_text()) == {"precious": True}
    code, _, err = run(capsys, "search", "--preset", "smoke", "--data", cifar_path, "--out", str(out), "--resume")
    assert code == 2 and "nothing to resume" in one_error_line(err)
    assert json.loads((out / "result.json").read_text()) == {"precious": True}


def test_empty_data_folder(capsys, tmp_path):
    code, _, err = run(capsys, "search", "--preset", "smoke", "--data", str(tmp_path), "--out", str(tmp_path / "r"))
    assert code == 2 and "no image data found" in one_error_line(err)
    assert not (tmp_path / "r").exists()  # bad data must not leave a half-made run folder


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(capsys, tmp_path, cifar_path):
    out = tmp_path / "run"
    code, _, err = run(capsys, "search", "--preset", "smoke", "--data", cifar_path, "--out", str(out), "--quiet",
                       "--set", "w_lr=1e30", "--set", "w_grad_clip=1e30", "--set", "checkpoint_every=1")
    assert code == 2 and "the loss became" in one_error_line(err) and "--overwrite" in err and "--set w_lr" in err
    import torch

    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # the advice works when followed: lower rates and --overwrite
    code, _, _ = run(capsys, "search", "--preset", "smoke", "--data", cifar_path, "--out", str(out), "--quiet",
                     "--set", "checkpoint_every=1", "--overwrite")
    assert code == 0 and (out / "result.json").exists()


def test_resume_with_other_settings_is_refused(capsys, tmp_path, cifar_path):
    out = tmp_path / "run"
    assert run(capsys, "search", "--preset", "smoke", "--data", cifar_path, "--out", str(out), "--quiet")[0] == 0
    before = (out / "result.json").read_text()
    code, _, err = run(capsys, "search", "--preset", "smoke", "--data", cifar_path, "--out", str(out), "--resume",
                       "--seed", "5")
    assert code == 2 and "different settings" in one_error_line(err) and "seed" in err
    assert (out / "result.json").read_text() == before


def test_corrupt_checkpoint_is_refused(capsys, tmp_path, cifar_path):
    out = tmp_path / "run"
    assert run(capsys, "search", "--preset", "smoke", "--data", cifar_path, "--out", str(out), "--quiet")[0] == 0
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, "search", "--preset", "smoke", "--data", cifar_path, "--out", str(out), "--resume")
    assert code == 2 and "is corrupt" in one_error_line(err)


def test_unwritable_output_folder(capsys, tmp_path, tiny_pickles):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    code, _, err = run(capsys, "search", "--preset", "smoke", "--data", tiny_pickles, "--out", str(blocker / "run"))
    assert code == 2 and "cannot write the run folder" in one_error_line(err) and "--out" in err
    assert blocker.read_text() == "keep me"


def test_corrupt_image_in_data_tree(capsys, tmp_path):
    import numpy as np
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / "data" / split / "cat").mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "data" / split / "cat" / "0.png")
    (tmp_path / "data" / "train" / "cat" / "1.png").write_bytes(b"\x89PNG broken")
    code, _, err = run(capsys, "search", "--preset", "smoke", "--data", str(tmp_path / "data"), "--out",
                       str(tmp_path / "run"), "--quiet")
    assert code == 2 and "cannot decode image" in one_error_line(err) and "1.png" in err
    assert not (tmp_path / "run").exists()


def test_corrupt_pickle_batch(capsys, tmp_path, tiny_pickles):
    import shutil

    broken = tmp_path / "cifar-10-batches-py"
    shutil.copytree(tiny_pickles, broken)
    (broken / "data_batch_3").write_bytes(b"garbage")
    code, _, err = run(capsys, "search", "--preset", "smoke", "--data", str(broken), "--out", str(tmp_path / "run"))
    assert code == 2 and "data_batch_3" in one_error_line(err)


def test_resume_and_overwrite_together(capsys, tmp_path):
    code, _, err = run(capsys, "search", "--resume", "--overwrite", "--out", str(tmp_path))
    assert code == 2 and "contradict" in one_error_line(err)


def test_shrink_then_search_the_kept_space(capsys, tmp_path, tiny_pickles):
    shrink_dir, run_dir = tmp_path / "shrink", tmp_path / "run"
    small = ["--set", "n_weight=256", "--set", "n_arch=256"]
    code, out, _ = run(capsys, "shrink", "--space", "nb201", "--preset", "smoke", "--data", tiny_pickles,
                       "--out", str(shrink_dir), "--quiet", "--device", "cpu", *small)
    assert code == 0 and "architectures kept" in out
    record = json.loads((shrink_dir / "shrink.json").read_text())
    kept = record["kept"]
    assert sum(len(v) for v in kept.values()) == 24 - 16 and all(kept.values())
    code, _, _ = run(capsys, "search", "--space-from", str(shrink_dir), "--strategy", "advantage", "--preset", "smoke",
                     "--data", tiny_pickles, "--out", str(run_dir), "--quiet", "--device", "cpu", *small)
    assert code == 0
    result = json.loads((run_dir / "result.json").read_text())
    import re

    chosen = re.findall(r"(\w+)~\d", result["architecture"])
    edge_names = ["edge10", "edge20", "edge21", "edge30", "edge31", "edge32"]
    assert len(chosen) == 6 and all(op in kept[name] for op, name in zip(chosen, edge_names))
    assert json.loads((run_dir / "config.json").read_text())["restrict"] == kept
    code, _, err = run(capsys, "search", "--space-from", str(shrink_dir), "--space-option", "ops=4", "--strategy",
                       "advantage", "--preset", "smoke", "--data", tiny_pickles, "--out", str(tmp_path / "ops4"),
                       "--quiet", "--device", "cpu", *small)
    assert code == 0, err                                 # ops=4 restates the default: the same space
    code, _, err = run(capsys, "search", "--space-from", str(shrink_dir), "--space-option", "ops=5", "--preset",
                       "smoke", "--data", tiny_pickles, "--out", str(tmp_path / "other"), *small)
    assert code == 2 and "pass the same --space" in one_error_line(err)


def test_shrink_with_the_abs_preset_trains_with_abs_per_cell_sampler(capsys, tmp_path, tiny_pickles):
    """`oneshot shrink --preset abs-cpu` trains ABS's supernet with its own sampler (abs_uniform), not random."""
    out = tmp_path / "shrink"
    small = ["--set", "n_weight=128", "--set", "n_arch=128", "--set", "epochs=1", "--set", "channels=4",
             "--set", "cells_per_stage=1"]
    code, _, err = run(capsys, "shrink", "--space", "nb201", "--preset", "abs-cpu", "--data", tiny_pickles,
                     "--out", str(out), "--quiet", "--device", "cpu", *small)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["strategy"] == "abs_uniform" and config["op_style"] == "nb201" and config["w_keep_zero_grads"]
    code, _, err = run(capsys, "shrink", "--space", "nb201", "--preset", "smoke", "--data", tiny_pickles,
                       "--out", str(tmp_path / "smoke"), "--quiet", "--device", "cpu", *small[:4])
    assert code == 0, err
    assert json.loads((tmp_path / "smoke" / "config.json").read_text())["strategy"] == "random"


def test_space_from_a_folder_without_shrink_result(capsys, tmp_path):
    code, _, err = run(capsys, "search", "--space-from", str(tmp_path), "--preset", "smoke")
    assert code == 2 and "--space-from" in one_error_line(err)
