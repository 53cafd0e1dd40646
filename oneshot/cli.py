"""``oneshot``: search, evaluate, and list what is available.

Every user mistake ends with one line on stderr that names the fix, and exit status 2. The papers' experiments
(the toys, inpainting) are scripts in experiments/ that use the library, not subcommands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

from .errors import UserError


class DefaultsFormatter(argparse.HelpFormatter):
    """Help lines end with "(default: X)" where an option has a default worth saying."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
                and "default" not in text):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, not argparse's usage dump
        raise UserError(f"{message} (see '{self.prog} --help')")


def parse_assignments(items: list[str], what: str) -> dict:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values parsed as JSON where they are JSON)."""
    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"{what} {item!r} must look like name=value")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def build_parser() -> Parser:
    from . import __version__

    parser = Parser(prog="oneshot", description="One-shot neural architecture search in PyTorch.")
    parser.add_argument("--version", action="version", version=f"oneshot-nas {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = commands.add_parser(
        "search", help="run an architecture search and write a run folder",
        description="Run an architecture search into a run folder. Settings come from --config, else (with "
                    "--resume) the run's own config.json, else the preset; the options below override them. "
                    "Example: oneshot search --space nb201 --strategy advantage --preset smoke --data DIR --out runs/x")
    s.add_argument("--config", metavar="FILE", help="start from the settings of a JSON/YAML file, e.g. a run's "
                                                      "config.json (a rerun)")
    s.add_argument("--task", help="what is learned (see 'oneshot tasks'; default: cifar10)")
    s.add_argument("--task-option", action="append", metavar="NAME=VALUE", help="e.g. size=48 (resize images)")
    s.add_argument("--space", help="search space (see 'oneshot spaces'; default: nb201)")
    s.add_argument("--space-option", action="append", metavar="NAME=VALUE", help="e.g. ops=5 (NB201 with 'none')")
    s.add_argument("--strategy", help="search strategy (see 'oneshot strategies --details'; default: advantage)")
    s.add_argument("--hp", action="append", metavar="NAME=VALUE", help="strategy hyper-parameter, e.g. baseline=true")
    s.add_argument("--preset", help="smoke (seconds), cpu (minutes on 2 cores), paper (GPU) (default: cpu)")
    s.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a preset setting, e.g. epochs=20")
    s.add_argument("--data", help="where the task's data is; CIFAR-10: image-folder tree, its .tar.gz, or "
                                  "cifar-10-batches-py (default: download the official archive into $ONESHOT_CACHE, "
                                  "~/.cache/oneshot)")
    s.add_argument("--seed", type=int, help="default: 0")
    s.add_argument("--out", help="run folder (default: runs/SPACE-STRATEGY-PRESET-sSEED)")
    s.add_argument("--device", help="auto (CUDA when present; the default), cpu, cuda, cuda:N")
    s.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard (needs the tensorboard "
                                                               "package: pip install 'oneshot-nas[tensorboard]')")
    s.add_argument("--shrink", choices=["abs"], help="first shrink the space with ABS (into OUT/shrink), then search")
    s.add_argument("--space-from", metavar="RUN_DIR", help="search the space kept by an earlier 'oneshot shrink' run")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    s.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    k = commands.add_parser("shrink", help="ABS: train a uniform single-path supernet, drop low-angle operators")
    k.add_argument("--space", default="nb201", help="search space to shrink")
    k.add_argument("--space-option", action="append", metavar="NAME=VALUE", help="e.g. ops=5 (NB201 with 'none')")
    k.add_argument("--preset", default="cpu", help="supernet training settings (abs: ABS's own protocol)")
    k.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a preset setting")
    k.add_argument("--drop", type=int, help="operators to drop (default: 2/3 of them, 20 of 30 on NB201 with 'none')")
    k.add_argument("--data", help="CIFAR-10 (as for search)")
    k.add_argument("--seed", type=int, default=0, help="seed of the supernet training")
    k.add_argument("--out", help="run folder (default: runs/SPACE-abs-PRESET-sSEED)")
    k.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    k.add_argument("--resume", action="store_true", help="continue the shrink run in --out")
    k.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    k.add_argument("--quiet", action="store_true", help="no progress bar")

    e = commands.add_parser("evaluate", help="look an architecture up in a tabular benchmark")
    e.add_argument("architecture", nargs="?", help="e.g. '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|...|'")
    e.add_argument("--space", default="nb201", help="the space whose tabular benchmark to read")
    e.add_argument("--example", action="store_true", help="print the best cell of the table as an example")

    t2 = commands.add_parser(
        "retrain", help="train an architecture from scratch (any space) and test it",
        description="Train an architecture from scratch and test it: the one from a search folder (its space, task "
                    "and data come along; writes RUN/retrain-PRESET.json) or one given with --space and --arch. "
                    "Examples: oneshot retrain runs/x --preset cpu; oneshot retrain --space darts --arch "
                    "snas_moderate --data DIR --preset cpu --out runs/snas-retrain")
    t2.add_argument("run", nargs="?", help="a finished 'oneshot search' folder (its result.json)")
    t2.add_argument("--space", help="with --arch: the space (see 'oneshot spaces')")
    t2.add_argument("--arch", help="an architecture string (NB201 '|op~0|+...', DARTS 'Genotype(...)'), a released "
                                   "name (darts: snas_mild, snas_moderate, snas_aggressive, darts_v1, darts_v2), or "
                                   "a search folder")
    t2.add_argument("--space-option", action="append", metavar="NAME=VALUE", help="e.g. ops=5 (NB201 with 'none')")
    t2.add_argument("--task", help="what is learned (default: the search's task, else cifar10; ptb for rnn)")
    t2.add_argument("--task-option", action="append", metavar="NAME=VALUE", help="e.g. fallback=true (PTB)")
    t2.add_argument("--preset", default="cpu", help="smoke (seconds), cpu (minutes on 2 cores) or paper (the "
                                                    "published protocol, GPU) (default: cpu)")
    t2.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a setting, e.g. epochs=20 "
                                                                         "(see RetrainConfig in oneshot/retrain.py)")
    t2.add_argument("--data", help="where the task's data is (default: the search's --data)")
    t2.add_argument("--out", help="the retraining's run folder (default: RUN/retrain-PRESET, or "
                                  "runs/retrain-SPACE-PRESET-sSEED)")
    t2.add_argument("--device", default="auto")
    t2.add_argument("--resume", action="store_true", help="continue the retraining in --out from its last epoch")
    t2.add_argument("--overwrite", action="store_true", help="replace the retraining in --out")
    t2.add_argument("--quiet", action="store_true", help="no progress bar")

    x = commands.add_parser("export", help="save the found network (supernet weights) as a torch.export file",
                            description="Save the architecture of a finished search, with its supernet weights (BN "
                                        "statistics re-estimated for it), as a file that plain torch loads: "
                                        "torch.export.load(FILE).module()(images). Example: oneshot export runs/x "
                                        "--out child.pt2")
    x.add_argument("run", help="a finished 'oneshot search' folder")
    x.add_argument("--out", required=True, help="the file to write, e.g. child.pt2")
    x.add_argument("--device", default="cpu", help="where BN statistics are re-estimated (default: cpu)")
    x.add_argument("--calibration-batches", type=int, default=20,
                   help="training batches for the BN statistics (default: 20)")

    r = commands.add_parser("report", help="table and curves from search run folders")
    r.add_argument("runs", nargs="+", help="run folders (each with result.json)")
    r.add_argument("--out", help="also write report.md, report.json and curves.png here")
    r.add_argument("--x", choices=["seconds", "iterations"], default="seconds", help="x axis of the curves")

    st = commands.add_parser("strategies", help="list the search strategies")
    st.add_argument("--details", action="store_true", help="also each strategy's hyper-parameters (--hp) and defaults")
    commands.add_parser("spaces", help="list the search spaces")
    commands.add_parser("tasks", help="list the tasks (what is learned: data, loss, metric)")
    examples = {
        "shrink": "oneshot shrink --space nb201 --space-option ops=5 --preset abs-cpu --data DIR --out runs/abs",
        "evaluate": "oneshot evaluate --example",
        "retrain": "oneshot retrain runs/adv-s0 --preset cpu",
        "export": "oneshot export runs/adv-s0 --out child.pt2",
        "report": "oneshot report runs/adv-s* runs/rf-s* --out runs/report",
        "strategies": "oneshot strategies --details",
        "spaces": "oneshot spaces",
        "tasks": "oneshot tasks",
    }
    for name, example in examples.items():
        if name in commands.choices:
            commands.choices[name].epilog = f"example: {example}"
    return parser


def search_config(args):
    """The run's settings: --config FILE, else (--resume) the run's config.json, else the preset; then every
    option the user gave on top."""
    from .api import config_of_run
    from .config import SearchConfig, load_config_file, preset

    flags = {k: v for k, v in dict(task=args.task, space=args.space, strategy=args.strategy, seed=args.seed,
                                   data=args.data, device=args.device).items() if v is not None}
    for option, key, what in ((args.task_option, "task_options", "--task-option"),
                              (args.space_option, "space_options", "--space-option"),
                              (args.hp, "strategy_options", "--hp")):
        if option:
            flags[key] = parse_assignments(option, what)
    if args.tensorboard:
        flags["tensorboard"] = True
    changes = parse_assignments(args.set, "--set")
    if args.config:
        base = SearchConfig().replace(**load_config_file(args.config))
        if args.preset:
            base = preset(args.preset, space=flags.get("space", base.space))
    elif args.resume and args.out and not args.preset and os.path.exists(os.path.join(args.out, "config.json")):
        base = config_of_run(args.out)
    else:
        base = preset(args.preset or "cpu", space=flags.get("space", "nb201"))
    for key in ("task_options", "space_options", "strategy_options"):  # options add to the base's, not replace
        if key in flags:
            flags[key] = {**getattr(base, key), **flags[key]}
    return base.replace(**flags, **changes)


def cmd_search(args) -> int:
    from .api import search

    from .runs import RunFolder

    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    config = search_config(args)
    out = args.out or f"runs/{config.space}-{config.strategy}-{config.preset}-s{config.seed}"
    resume = args.resume
    if resume and not RunFolder.holds_run(out):
        named = [args.config, args.preset, args.data, args.task, args.space, args.strategy, args.seed, args.set,
                 args.hp, args.space_option, args.task_option]
        if not any(v is not None for v in named):
            raise UserError(f"nothing to resume in {out}; give the run's settings (e.g. --preset, --data) to start it, "
                            "or drop --resume")
        resume = False  # a retry loop's first try, or a kill before anything was written: start the run
    result = search(config, out, resume=resume, overwrite=args.overwrite, progress=not args.quiet,
                    shrink=args.shrink, space_from=args.space_from)
    if result is None:
        return 0
    summary = f"{result['architecture']}"
    if result.get("nb201"):
        summary += f"  NB201 CIFAR-10 {result['nb201']['cifar10']:.2f}% (rank {result['nb201']['cifar10_rank']})"
        if config.preset == "smoke":
            summary += " [smoke preset: too short for the architecture to mean anything]"
    print(f"{summary}  [{result['search_seconds']:.0f} s]  -> {out}/result.json")
    return 0


def cmd_shrink(args) -> int:
    from .config import preset
    from .data import load_cifar10
    from .shrinking import abs_shrink
    from .trainer import resolve_device

    # the preset's strategy stays: abs_shrink keeps a uniform sampler (the abs presets' abs_uniform) and trains
    # with random for any other
    config = preset(args.preset, space=args.space, seed=args.seed,
                    space_options=parse_assignments(args.space_option, "--space-option"),
                    **parse_assignments(args.set, "--set")).validated()
    out = args.out or f"runs/{config.space}-abs-{args.preset}-s{config.seed}"
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    if args.drop is not None:  # before minutes of training, not after
        from .shrinking import scored_decisions
        from .spaces import create_space

        space = create_space(config.space, **config.space_options)
        most = sum(space.decisions[i].size - 1 for i in scored_decisions(space))
        if not 1 <= args.drop <= most:
            raise UserError(f"--drop must lie between 1 and {most} (every decision of {config.space} keeps one "
                            f"operator), got {args.drop}")
    data = load_cifar10(args.data)
    space = abs_shrink(config, data, out, resolve_device(args.device), n_drop=args.drop, resume=args.resume,
                       overwrite=args.overwrite, progress=not args.quiet)
    for d in space.decisions:
        print(f"{d.name}: {', '.join(d.choices)}")
    print(f"{space.size} architectures kept -> {out}/shrink.json; search them with --space-from {out}")
    return 0


def cmd_evaluate(args) -> int:
    from .tabular.nb201 import load_table
    from .spaces import create_space

    if args.space != "nb201":
        raise UserError(f"no tabular benchmark for space {args.space!r}; 'evaluate' knows nb201")
    table = load_table()
    if args.example or not args.architecture:
        if not args.example:
            raise UserError("give an architecture string, or --example to print one")
        print(table.best()[0])
        return 0
    space = create_space("nb201", ops=5)  # the table covers the 5-op space, 'none' included
    arch_string = space.to_string(space.from_string(args.architecture))
    r = table.lookup(arch_string)
    print(arch_string)
    for name in ("cifar10", "cifar100", "imagenet16"):
        print(f"  {name:<11} {r[name]:6.2f} %   rank {r[f'{name}_rank']:>5} / {len(table.strings)}")
    if r["isomorphs"] > 1:
        print(f"  ({r['isomorphs']} cells of the table compute the same function as this one)")
    return 0


def cmd_retrain(args) -> int:
    from .retrain import retrain

    record = retrain(args.arch, run=args.run, space=args.space,
                     space_options=parse_assignments(args.space_option, "--space-option"), task=args.task,
                     task_options=parse_assignments(args.task_option, "--task-option"), data=args.data,
                     preset=args.preset, changes=parse_assignments(args.set, "--set"), out=args.out,
                     device=args.device, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    metric = record["task"]["metric"]
    scores = [f"{split} {metric} " + (f"{100 * s[metric]:.2f} %" if metric == "accuracy" else f"{s[metric]:.2f}")
              for split, s in record["scores"].items()]
    size = f"params {record['parameters'] / 1e6:.2f} M"
    if record["flops"]:
        size += f"  FLOPs {record['flops'] / 1e6:.0f} M"
    written = record.get("summary") or f"{record['out']}/result.json"
    print(f"{'  '.join(scores)}  {size}  [{record['train_seconds']:.0f} s]  -> {written}")
    return 0


def cmd_export(args) -> int:
    from .export import export_run
    from .trainer import resolve_device

    if args.calibration_batches < 1:
        raise UserError("--calibration-batches must be at least 1")
    record = export_run(args.run, args.out, resolve_device(args.device), args.calibration_batches)
    metric = next(k for k in record if k.startswith("test_"))
    print(f"{record['architecture']}  {metric.replace('_', ' ')} {record[metric]:.4f}  -> {record['file']}")
    return 0


def cmd_report(args) -> int:
    from .report import report

    print(report(args.runs, args.out, x=args.x))
    return 0


def cmd_list(args) -> int:
    if args.command == "strategies":
        from .strategies import available, hyperparameters

        items = available()
    elif args.command == "tasks":
        from .tasks import available

        items = available()
    else:
        from . import plugins
        from .spaces import SPACES

        plugins.load()
        items = {name: desc for name, (_, desc) in SPACES.items()}
    width = max(map(len, items))
    for name, desc in items.items():
        print(f"{name:<{width}}  {desc}")
        if getattr(args, "details", False):
            for hp, (kind, default) in hyperparameters(name).items():
                print(f"{'':<{width}}    --hp {hp}={default!r:<10} ({kind})")
    return 0


def guarded(prog: str, body: Callable[[], int]) -> int:
    """``body()`` under the command line's rule, for scripts beside it (experiments/): a UserError becomes one
    line on stderr, "PROG: error: ...", and exit status 2; Ctrl-C a line and status 130."""
    try:
        return body()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


# Former subcommands, now experiment scripts of the repository (not of the installed package).
MOVED = {"toy": "experiments/toy.py", "asng-toy": "experiments/asng_toy.py", "inpaint": "experiments/inpainting.py"}


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        if argv and argv[0] in MOVED:
            raise UserError(f"'oneshot {argv[0]}' is now a script in the repository: python {MOVED[argv[0]]} "
                            "(see its --help)")
        args = build_parser().parse_args(argv)
        handler = {"search": cmd_search, "evaluate": cmd_evaluate, "report": cmd_report, "retrain": cmd_retrain,
                   "shrink": cmd_shrink, "export": cmd_export}.get(args.command, cmd_list)
        return handler(args)
    except UserError as e:
        print(f"oneshot: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        from .api import Interrupted

        if isinstance(e, Interrupted) and not e.resumable:
            print(f"oneshot: interrupted before the first checkpoint; {e.out} is as it was: run the same command "
                  "again", file=sys.stderr)
        elif isinstance(e, Interrupted):
            print(f"oneshot: interrupted; continue with the same command and --resume (or just "
                  f"'oneshot search --resume --out {e.out}')", file=sys.stderr)
        else:
            print("oneshot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
