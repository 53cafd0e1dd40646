import json
import math

import pytest

from oneshot.errors import UserError
from oneshot.report import curve, load_run, median_curve, report


def write_run(folder, strategy, seed, am, rank, seconds, cpu, pb=None, options=None, records=(), iterations=10,
              epochs=2):
    folder.mkdir()
    config = {"space": "nb201", "space_options": {}, "strategy": strategy, "strategy_options": options or {},
              "seed": seed, "epochs": epochs, "log_every": 5}
    result = {"space": "nb201", "strategy": strategy, "seed": seed, "architecture": "x",
              "nb201": {"cifar10": am, "cifar10_rank": rank}, "search_seconds": seconds, "cpu_seconds": cpu,
              "iterations": iterations, "arch_steps": 5, "device": "cpu"}
    if pb is not None:
        result["best_sampled"] = {"architecture": "y", "val_loss": 1.0, "nb201": {"cifar10": pb, "cifar10_rank": 1}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "result.json").write_text(json.dumps(result))
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(folder)


@pytest.fixture
def runs(tmp_path):
    log_a = [{"step": 5, "weight_loss": 2.0, "nb201_cifar10": 50.0}, {"step": 10, "weight_loss": 1.0, "nb201_cifar10": 90.0}]
    log_b = [{"step": 5, "seconds": 10.0, "weight_loss": 2.0, "nb201_cifar10": 60.0},
             {"step": 10, "seconds": 20.0, "weight_loss": 1.0, "nb201_cifar10": 70.0}]
    return [
        write_run(tmp_path / "a0", "advantage", 0, 93.0, 100, 30.0, 20.0, pb=92.0, records=log_a),
        write_run(tmp_path / "a1", "advantage", 1, 94.0, 300, 10.0, 40.0, pb=91.0, records=log_b),
        write_run(tmp_path / "b0", "advantage", 0, 90.0, 5000, 12.0, 6.0, options={"baseline": True}),
        write_run(tmp_path / "r0", "reinforce", 0, 88.5, 9000, 8.0, 4.0),
    ]


def test_table_values(runs, tmp_path):
    text = report(runs, str(tmp_path / "out"))
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    assert list(rows) == ["advantage", "advantage (baseline=true)", "reinforce"]
    # AM 93, 94: mean 93.50, sample std sqrt(0.5) = 0.71; PB 92, 91; ranks 100, 300; times 30, 10; CPU 20, 40.
    # Equal time (advantage's own seconds per seed: 30 for seed 0, 10 for seed 1): run a0 logged 90 at 30 s,
    # run a1 logged 60 at 10 s -> 75 ± 21.21; the other runs have no logged curve.
    assert rows["advantage"] == "| advantage | 2 | 93.50 ± 0.71 | 91.50 ± 0.71 | 75.00 ± 21.21 | 200 | 20.0 | 30.0 |"
    assert rows["advantage (baseline=true)"] == "| advantage (baseline=true) | 1 | 90.00 | – | – | 5000 | 12.0 | 6.0 |"
    assert rows["reinforce"] == "| reinforce | 1 | 88.50 | – | – | 9000 | 8.0 | 4.0 |"
    assert "AM at advantage's time" in text.splitlines()[0]
    out = tmp_path / "out"
    assert (out / "report.md").read_text().startswith(text)
    assert "AM: NB201 CIFAR-10 test accuracy" in (out / "report.md").read_text()  # the columns are explained
    assert (out / "curves.png").stat().st_size > 1000
    saved = json.loads((out / "report.json").read_text())
    assert saved["advantage"]["am_cifar10"]["std"] == pytest.approx(math.sqrt(0.5))
    assert saved["advantage"]["seeds"] == [0, 1]


def test_curve_time_from_steps_or_logged_seconds(runs):
    t, acc = curve(load_run(runs[0]))  # no "seconds": step / 10 iterations * 30 s
    assert t.tolist() == [15.0, 30.0] and acc.tolist() == [50.0, 90.0]
    t, _ = curve(load_run(runs[1]))    # logged "seconds" win
    assert t.tolist() == [10.0, 20.0]


def test_median_curve_holds_last_value(runs):
    m = median_curve([load_run(runs[0]), load_run(runs[1])])
    seconds, acc = m["seconds"], m["median_cifar10"]
    assert seconds[0] == 0.0 and seconds[-1] == 30.0
    assert acc[0] is None                        # nothing logged yet
    assert acc[-1] == pytest.approx(80.0)        # run a: 90 at 30 s, run b holds 70 after 20 s
    i = next(k for k, s in enumerate(seconds) if 10.0 <= s < 15.0)
    assert acc[i] == pytest.approx(60.0)         # only run b has logged: median of one value


def test_unfinished_run_is_a_user_error(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(UserError, match="--resume"):
        report([str(tmp_path / "half")])


def test_runs_with_other_settings_are_not_pooled_and_duplicate_seeds_are_refused(tmp_path):
    short = write_run(tmp_path / "short", "advantage", 0, 92.0, 100, 10.0, 5.0, epochs=2)
    long = write_run(tmp_path / "long", "advantage", 0, 94.0, 10, 100.0, 50.0, epochs=20)
    text = report([short, long])
    rows = [line for line in text.splitlines()[2:]]
    assert len(rows) == 2  # a 2-epoch and a 20-epoch run are two experiments, not "2 seeds"
    assert any(r.startswith("| advantage [epochs=2] | 1 | 92.00 |") for r in rows)
    assert any(r.startswith("| advantage [epochs=20] | 1 | 94.00 |") for r in rows)
    again = write_run(tmp_path / "again", "advantage", 0, 93.0, 50, 10.0, 5.0, epochs=2)
    with pytest.raises(UserError, match="same experiment with the same seed 0"):
        report([short, again])


def test_curves_against_iterations(runs, tmp_path):
    from oneshot.report import median_curve, load_run

    loaded = [load_run(r) for r in runs[:2]]
    by_step = median_curve(loaded, "iterations")
    assert by_step["iterations"][0] == 0 and by_step["iterations"][-1] == 10.0
    assert by_step["median_cifar10"][-1] == 80.0          # median of 90 and 70 at step 10
    report(runs, str(tmp_path / "out"), x="iterations")
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0
