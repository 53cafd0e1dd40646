"""A newcomer's first hour (issue 11): resume by folder alone, reruns from a config file, --version, TensorBoard,
help that shows defaults, honest smoke output."""

import json

import pytest
import yaml

from oneshot import __version__
from oneshot.cli import main

TINY = ["--set", "n_weight=128", "--set", "n_arch=128", "--set", "batch_size=32", "--set", "epochs=2",
        "--set", "warmup_epochs=1", "--set", "channels=4", "--set", "checkpoint_every=3", "--set", "log_every=2"]


def result_without_timing(path):
    r = json.loads((path / "result.json").read_text())
    return {k: v for k, v in r.items() if k not in ("search_seconds", "cpu_seconds")}


def test_resume_by_folder_alone(tmp_path, tiny_pickles, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("ONESHOT_CRASH_AT", "step:5")
    import subprocess
    import sys

    argv = [sys.executable, "-m", "oneshot", "search", "--preset", "smoke", "--data", tiny_pickles, "--out", str(out),
            "--device", "cpu", "--quiet", *TINY]
    assert subprocess.run(argv, cwd=tmp_path).returncode != 0            # killed at step 5
    monkeypatch.delenv("ONESHOT_CRASH_AT")
    # nothing but the folder: data path, device, preset and every setting come from its config.json
    assert main(["search", "--resume", "--out", str(out), "--quiet"]) == 0
    full = tmp_path / "full"
    assert main(["search", "--preset", "smoke", "--data", tiny_pickles, "--out", str(full), "--device", "cpu",
                 "--quiet", *TINY]) == 0
    assert result_without_timing(out) == result_without_timing(full)
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == tiny_pickles and config["device"] == "cpu" and config["preset"] == "smoke"


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_a_runs_config_reruns_it_bit_identically(tmp_path, tiny_pickles, fmt):
    first = tmp_path / "first"
    assert main(["search", "--preset", "smoke", "--data", tiny_pickles, "--out", str(first), "--device", "cpu",
                 "--quiet", "--hp", "baseline=true", *TINY]) == 0
    config = json.loads((first / "config.json").read_text())
    path = tmp_path / f"config.{fmt}"
    path.write_text(json.dumps(config) if fmt == "json" else yaml.safe_dump(config))
    again = tmp_path / "again"
    assert main(["search", "--config", str(path), "--out", str(again), "--quiet"]) == 0
    assert json.loads((again / "config.json").read_text()) == config
    assert result_without_timing(again) == result_without_timing(first)
    # --set on top of a config file
    third = tmp_path / "third"
    assert main(["search", "--config", str(path), "--out", str(third), "--quiet", "--set", "epochs=3"]) == 0
    assert json.loads((third / "config.json").read_text())["epochs"] == 3


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"oneshot-nas {__version__}"


def test_tensorboard_event_file_written_when_asked(tmp_path, tiny_pickles):
    pytest.importorskip("torch.utils.tensorboard")
    out = tmp_path / "run"
    assert main(["search", "--preset", "smoke", "--data", tiny_pickles, "--out", str(out), "--device", "cpu",
                 "--quiet", "--tensorboard", *TINY]) == 0
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 100
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(out / "tensorboard"))
    board.Reload()
    assert "weight_loss" in board.Tags()["scalars"]
    logged = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e.step for e in board.Scalars("weight_loss")] == logged
    plain = tmp_path / "plain"
    assert main(["search", "--preset", "smoke", "--data", tiny_pickles, "--out", str(plain), "--device", "cpu",
                 "--quiet", *TINY]) == 0
    assert not (plain / "tensorboard").exists()


def test_smoke_output_says_it_means_nothing(tmp_path, tiny_pickles, capsys):
    assert main(["search", "--preset", "smoke", "--data", tiny_pickles, "--out", str(tmp_path / "r"), "--device",
                 "cpu", "--quiet", *TINY]) == 0
    assert "too short for the architecture to mean anything" in capsys.readouterr().out


def test_help_shows_defaults_and_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = capsys.readouterr().out
    assert "default: cpu" in text and "default: advantage" in text and "Example: oneshot search" in text


def test_a_retry_loop_with_resume_starts_a_run_that_never_began(tmp_path, tiny_pickles):
    out = tmp_path / "never-started"   # e.g. killed before its folder existed: the same command with --resume
    assert main(["search", "--resume", "--preset", "smoke", "--data", tiny_pickles, "--out", str(out), "--device",
                 "cpu", "--quiet", *TINY]) == 0
    assert (out / "result.json").exists()


def test_a_run_of_an_older_version_resumes_when_the_new_settings_keep_their_defaults(tmp_path, tiny_pickles,
                                                                                     monkeypatch):
    """A run written before a setting existed (here ``derive``) behaved as its default does: --resume continues it,
    and a new value for that setting is still refused."""
    import subprocess
    import sys

    import torch

    from oneshot.runs import CONFIG_KEY

    out = tmp_path / "run"
    monkeypatch.setenv("ONESHOT_CRASH_AT", "step:5")
    argv = [sys.executable, "-m", "oneshot", "search", "--preset", "smoke", "--data", tiny_pickles, "--out", str(out),
            "--device", "cpu", "--quiet", *TINY]
    assert subprocess.run(argv, cwd=tmp_path).returncode != 0
    monkeypatch.delenv("ONESHOT_CRASH_AT")
    config = json.loads((out / "config.json").read_text())
    del config["derive"]  # as an older version wrote it
    (out / "config.json").write_text(json.dumps(config))
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    state[CONFIG_KEY] = json.dumps(config)
    torch.save(state, out / "checkpoint.pt")
    assert main(["search", "--resume", "--out", str(out), "--quiet", "--set", "derive=best_sampled"]) == 2
    assert main(["search", "--resume", "--out", str(out), "--quiet"]) == 0
    full = tmp_path / "full"
    assert main(["search", "--preset", "smoke", "--data", tiny_pickles, "--out", str(full), "--device", "cpu",
                 "--quiet", *TINY]) == 0
    assert result_without_timing(out) == result_without_timing(full)


@pytest.mark.parametrize("strategy, derive, expected", [
    ("reinforce", "paper", "best_sampled"), ("gdas", "paper", "best_sampled"), ("advantage", "paper", "derive"),
    ("advantage", "best_sampled", "best_sampled"), ("reinforce", "strategy", "derive")])
def test_the_result_architecture_follows_the_derivation_rule(tmp_path, tiny_pickles, strategy, derive, expected):
    """``derive=paper``: REINFORCE and GDAS report the best sampled architecture (AdvantageNAS code, spec §3)."""
    out = tmp_path / "run"
    assert main(["search", "--preset", "smoke", "--strategy", strategy, "--data", tiny_pickles, "--out", str(out),
                 "--device", "cpu", "--quiet", *TINY, "--set", f"derive={derive}"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["derivation"] == expected
    theta = __import__("torch").tensor(result["theta"])
    argmax = "|".join(f"{i}" for i in theta.argmax(-1).tolist())
    from oneshot.spaces import create_space
    space = create_space("nb201")
    derived = "|".join(f"{i}" for i in space.from_string(result["architecture"]))
    if expected == "best_sampled":
        assert result["architecture"] == result["best_sampled"]["architecture"]
    else:
        assert derived == argmax
