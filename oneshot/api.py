"""The library's entry point: ``oneshot.search(config, out=...)`` runs a whole search the way the command line
does (the CLI, ``torchrun`` and Python users all call this). Everything is checked (settings, strategy and its
hyper-parameters, space, data) before the run folder is touched, so a mistake never costs an earlier run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import SearchConfig
from .errors import UserError

# what a setting added since a run was written had been (``--resume`` of a run of an older version)
DEFAULTS = SearchConfig().to_dict()


def search(config: SearchConfig, out: str | os.PathLike, *, task=None, space=None, resume: bool = False,
           overwrite: bool = False, progress: bool = True, shrink: str | None = None,
           space_from: str | None = None) -> dict | None:
    """Run ``config`` into the run folder ``out``; returns result.json's content (None on ranks other than 0).

    ``task``: a ``tasks.Task`` (or ``data.Cifar10`` tensors) to use instead of building ``config.task`` from
    ``config.data``; ``space``: a SearchSpace object instead of ``config.space`` by name; ``shrink="abs"``:
    shrink the space with ABS first (into OUT/shrink); ``space_from``: search the space an ABS run kept.
    """
    from . import strategies, tasks
    from .distributed import from_environment, shutdown
    from .runs import RunFolder
    from .spaces import create_space
    from .trainer import Search, check_batch_split, resolve_device

    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    config = config.validated()
    if config.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise UserError("--tensorboard needs the tensorboard package: pip install 'oneshot-nas[tensorboard]'") \
                from None
    if space_from:
        config = config.replace(restrict=kept_choices(space_from, config))
    if space is None:
        space_obj = create_space(config.space, **config.space_options)
        if config.restrict:
            space_obj = space_obj.restrict(config.restrict)
    else:
        space_obj = space
    strategies.create(config.strategy, space_obj, **config.strategy_options)  # bad names and values, now
    # stored typed (``baseline=False`` as false, not the string), so that a later --resume compares like with like
    config = config.replace(strategy_options={
        **config.strategy_options, **strategies.coerce_hyperparameters(config.strategy, config.strategy_options)})
    if shrink not in (None, "abs"):
        raise UserError(f"unknown shrinking {shrink!r}; use abs")
    group, device = from_environment(resolve_device(config.device))  # one process unless launched by torchrun
    folder = None
    try:
        check_batch_split(config, group.world)
        task = as_task_of(config, task)  # bad data is reported before the folder is touched
        if shrink == "abs":  # its own folder (OUT/shrink), before the search's: the kept choices are its result
            config = shrink_first(config, task, out, device, group, resume, overwrite, progress)
        # Rank 0 makes (or checks) the folder first, under its lock; the others follow only if that worked.
        # Until the new run's first checkpoint an earlier run in the folder is only kept aside: any error below
        # (bad data included) puts it back as it was.
        error = None
        if group.is_main:
            try:
                folder = RunFolder(out, config.to_dict(), resume=resume, overwrite=overwrite, defaults=DEFAULTS)
            except UserError as e:
                error = e
        if group.agree(error is not None):
            raise error or SystemExit(2)
        if not group.is_main:
            folder = RunFolder(out, config.to_dict(), resume=resume, writer=False, defaults=DEFAULTS)
        with folder:
            run = Search(config, task, device, group, space=space)
            folder.restore(run.load_state_dict)
            result = run.run(folder, progress=progress)
    except KeyboardInterrupt:
        committed = folder is not None and (folder.committed or resume)
        raise Interrupted(out, committed) from None
    finally:
        shutdown()
    return result if group.is_main else None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a search; ``resumable``: the folder holds this run's checkpoint (else it is as before)."""

    def __init__(self, out, resumable: bool):
        super().__init__()
        self.out, self.resumable = out, resumable


def as_task_of(config: SearchConfig, task):
    from . import tasks

    return tasks.as_task(task) if task is not None else tasks.create(config.task, data=config.data,
                                                                     **config.task_options)


def config_of_run(out: str | os.PathLike) -> SearchConfig:
    """The configuration stored in a run folder (``--resume --out DIR`` needs nothing else)."""
    path = Path(out) / "config.json"
    try:
        settings = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"nothing to resume in {out} (no config.json); drop --resume to start a new run") from None
    except (OSError, ValueError):
        raise UserError(f"{path} is unreadable or corrupt; cannot resume, start a new run with --overwrite") from None
    if not isinstance(settings, dict):
        raise UserError(f"{path} is corrupt; cannot resume, start a new run with --overwrite")
    return SearchConfig().replace(**settings)


def kept_choices(run_dir: str, config: SearchConfig) -> dict:
    """The choices an ABS run kept, checked against the space the user asked for."""
    from .shrinking import load_shrunk_space
    from .spaces import create_space

    space = load_shrunk_space(run_dir)  # checks that the file is there and readable
    record = json.loads(Path(run_dir, "shrink.json").read_text())

    def decisions(name, options):  # options that only restate a default (ops=4) name the same space
        return [(d.name, tuple(d.choices)) for d in create_space(name, **options).decisions]

    if record["space"] != config.space or (record["space_options"] != config.space_options and decisions(
            record["space"], record["space_options"]) != decisions(config.space, config.space_options)):
        raise UserError(f"{run_dir} shrank {record['space']} {record['space_options']}, not {config.space} "
                        f"{config.space_options}; pass the same --space and --space-option")
    return {d.name: list(d.choices) for d in space.decisions}


def shrink_first(config, task, out, device, group, resume, overwrite, progress) -> SearchConfig:
    """``--shrink abs``: ABS into OUT/shrink (resumable too), then the search runs on the kept choices."""
    from .runs import RunFolder
    from .shrinking import abs_shrink

    if group.world > 1:
        raise UserError("--shrink abs runs in one process; shrink first with 'oneshot shrink', then search "
                        "with torchrun and --space-from")
    if not resume and not overwrite and RunFolder.holds_run(out):
        RunFolder.refuse(out)  # before the shrink folder inside it is touched
    shrink_dir = os.path.join(out, "shrink")
    if not (resume and os.path.exists(os.path.join(shrink_dir, "shrink.json"))):
        again = resume and os.path.exists(os.path.join(shrink_dir, "checkpoint.pt"))
        abs_shrink(config, task, shrink_dir, device, resume=again, overwrite=not again, progress=progress)
    return config.replace(restrict=kept_choices(shrink_dir, config))
