"""``oneshot export RUN --out FILE``: the architecture a search found, with the supernet's weights, as a file
that plain torch loads (``torch.export``), without oneshot installed:

    program = torch.export.load("child.pt2")
    logits = program.module()(images)          # images: float N x C x H x W, normalised as in training

The child runs inside the supernet with one op per decision, so every space exports the same way. The
supernet's BN running statistics average over every child it trained, so they are re-estimated for this child on
``calibration_batches`` training batches (the usual single-path practice) before the network is traced in eval
mode.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from .errors import UserError


class FixedChild(torch.nn.Module):
    """A supernet that always runs one architecture (each decision's chosen op, unscaled)."""

    def __init__(self, supernet: torch.nn.Module, arch):
        super().__init__()
        self.supernet = supernet
        self.active = [[int(k)] for k in arch]

    def forward(self, x):
        return self.supernet(x, gates=None, active=self.active)


@torch.no_grad()
def recalibrate_batch_norm(model: torch.nn.Module, batches) -> None:
    """Replace every BN's running statistics by their plain average over ``batches`` (train-mode forwards)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        if m.track_running_stats:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    for *inputs, _ in batches:
        model(*inputs)
    model.eval()


def load_search(run_dir: str | Path, device: torch.device):
    """(config, task, search) of a finished run, its supernet weights loaded."""
    from .api import config_of_run
    from .tasks import create
    from .trainer import Search

    run = Path(run_dir)
    try:
        result = json.loads((run / "result.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{run} holds no finished search (result.json); pass the --out of 'oneshot search'") from None
    except (OSError, ValueError):
        raise UserError(f"{run}/result.json is corrupt; finish the run again with 'oneshot search --resume --out {run}'") \
            from None
    config = config_of_run(run).replace(device=str(device))
    try:
        state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{run} has no checkpoint.pt to take the weights from") from None
    except Exception as e:  # any unpickling or zip error: the file is unusable
        raise UserError(f"{run}/checkpoint.pt is corrupt ({type(e).__name__}); run the search again") from None
    task = create(config.task, data=config.data, **config.task_options)
    search = Search(config, task, device)
    try:
        search.model.load_state_dict(state["model"])
    except (KeyError, RuntimeError):
        raise UserError(f"{run}/checkpoint.pt does not match the run's config.json; run the search again") from None
    arch = search.space.from_string(result["architecture"])
    return config, task, search, arch


def export_run(run_dir: str | Path, out: str | Path, device: torch.device = torch.device("cpu"),
               calibration_batches: int = 20) -> dict:
    config, task, search, arch = load_search(run_dir, device)
    if len(task.input_shape) != 3:
        raise UserError(f"export handles image networks for now; task {task.name!r} has inputs {task.input_shape}")
    child = FixedChild(search.model, arch)
    stream = search.train_stream
    recalibrate_batch_norm(child, (next(stream) for _ in range(max(1, calibration_batches))))
    example = next(search.val_stream)[0][:2]
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        program = torch.export.export(child, (example,), dynamic_shapes=({0: batch},))
    except Exception as e:  # export's own errors vary by torch version
        raise UserError(f"torch.export could not trace this network ({type(e).__name__}: {e}); "
                        "please report it") from None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, out)
    accuracy = task.evaluate(functools.partial(child), "test", device)
    return {"file": str(out), "architecture": search.space.to_string(arch), "input_shape": list(task.input_shape),
            "num_outputs": task.num_outputs, f"test_{task.metric}_without_retraining": accuracy[task.metric]}
