"""``oneshot export``: the found child loads with plain torch (no oneshot) and gives the child's logits."""

import subprocess
import sys

import torch

from oneshot.cli import main

TINY = ["--set", "n_weight=128", "--set", "n_arch=128", "--set", "batch_size=32", "--set", "epochs=2",
        "--set", "warmup_epochs=1", "--set", "channels=4"]

LOAD_WITHOUT_ONESHOT = """
import sys
sys.modules["oneshot"] = None          # importing oneshot would now fail
import torch
program = torch.export.load(sys.argv[1])
x = torch.load(sys.argv[2])
torch.save(program.module()(x), sys.argv[3])
"""


def test_export_loads_without_oneshot_and_matches_the_child_in_the_supernet(tmp_path, tiny_pickles):
    run, file = tmp_path / "run", tmp_path / "child.pt2"
    assert main(["search", "--preset", "smoke", "--data", tiny_pickles, "--out", str(run), "--device", "cpu",
                 "--quiet", *TINY]) == 0
    assert main(["export", str(run), "--out", str(file), "--calibration-batches", "2"]) == 0
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", LOAD_WITHOUT_ONESHOT, str(file), str(tmp_path / "x.pt"),
                    str(tmp_path / "y.pt")], check=True, cwd=tmp_path)
    exported = torch.load(tmp_path / "y.pt")

    from oneshot.export import FixedChild, load_search, recalibrate_batch_norm

    _, _, search, arch = load_search(run, torch.device("cpu"))
    child = FixedChild(search.model, arch)
    recalibrate_batch_norm(child, (next(search.train_stream) for _ in range(2)))
    with torch.no_grad():
        expected = child(x)
    assert exported.shape == (5, 10)
    torch.testing.assert_close(exported, expected, rtol=1e-4, atol=1e-5)
    # and the child alone, not the supernet: a different architecture gives different logits
    other = FixedChild(search.model, [(k + 1) % 4 for k in arch]).eval()
    with torch.no_grad():
        assert not torch.allclose(other(x), expected)


def test_export_of_a_folder_without_a_result_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "c.pt2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no finished search" in err[0]
