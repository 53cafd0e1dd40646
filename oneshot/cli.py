"""``oneshot``: search, evaluate, and list what is available.

Every user mistake ends with one line on stderr that names the fix, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import UserError


class Parser(argparse.ArgumentParser):
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
    parser = Parser(prog="oneshot", description="One-shot neural architecture search in PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = commands.add_parser("search", help="run an architecture search and write a run folder")
    s.add_argument("--space", default="nb201", help="search space (see 'oneshot spaces')")
    s.add_argument("--space-option", action="append", metavar="NAME=VALUE", help="e.g. ops=5 (NB201 with 'none')")
    s.add_argument("--strategy", default="advantage", help="search strategy (see 'oneshot strategies')")
    s.add_argument("--hp", action="append", metavar="NAME=VALUE", help="strategy hyper-parameter, e.g. baseline=true")
    s.add_argument("--preset", default="cpu", help="smoke (seconds), cpu (about 5 min on 2 cores), paper (GPU)")
    s.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a preset setting, e.g. epochs=20")
    s.add_argument("--data", help="CIFAR-10: image-folder tree, its .tar.gz, or cifar-10-batches-py "
                                  "(default: download the official archive into the cache)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="run folder (default: runs/SPACE-STRATEGY-PRESET-sSEED)")
    s.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    s.add_argument("--shrink", choices=["abs"], help="first shrink the space with ABS (into OUT/shrink), then search")
    s.add_argument("--space-from", metavar="RUN_DIR", help="search the space kept by an earlier 'oneshot shrink' run")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    s.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    k = commands.add_parser("shrink", help="ABS: train a uniform single-path supernet, drop low-angle operators")
    k.add_argument("--space", default="nb201")
    k.add_argument("--space-option", action="append", metavar="NAME=VALUE", help="e.g. ops=5 (NB201 with 'none')")
    k.add_argument("--preset", default="cpu")
    k.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a preset setting")
    k.add_argument("--drop", type=int, help="operators to drop (default: 2/3 of them, 20 of 30 on NB201 with 'none')")
    k.add_argument("--data")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--out", help="run folder (default: runs/SPACE-abs-PRESET-sSEED)")
    k.add_argument("--device", default="auto")
    k.add_argument("--resume", action="store_true")
    k.add_argument("--overwrite", action="store_true")
    k.add_argument("--quiet", action="store_true")

    e = commands.add_parser("evaluate", help="look an architecture up in a tabular benchmark")
    e.add_argument("architecture", nargs="?", help="e.g. '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|...|'")
    e.add_argument("--space", default="nb201")
    e.add_argument("--example", action="store_true", help="print the best cell of the table as an example")

    t = commands.add_parser("toy", help="the AdvantageNAS toy task: 8 estimators recover a teacher architecture")
    t.add_argument("--trials", type=int, default=10)
    t.add_argument("--iterations", type=int, default=2000)
    t.add_argument("--methods", nargs="+", help="strategies to compare (default: the paper's eight)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="runs/toy", help="folder for toy.json and toy.png")
    t.add_argument("--quiet", action="store_true")

    a = commands.add_parser("asng-toy", help="ASNG-NAS toy: iterations to target vs initial step size, ASNG/SNG/Adam")
    a.add_argument("--deltas", type=float, nargs="+", help="initial δ (Adam: learning rate) values")
    a.add_argument("--seeds", type=int, default=10, help="seeds per method and δ")
    a.add_argument("--max-iter", type=int, default=100_000)
    a.add_argument("--out", default="runs/asng_toy")
    a.add_argument("--quiet", action="store_true")

    i = commands.add_parser("inpaint", help="ASNG-NAS inpainting: search a CAE (Int or Cat encoding), retrain it "
                                              "and a hand-designed CAE for the same time, report PSNR/SSIM")
    i.add_argument("--data", help="CIFAR-10 (stands in for CelebA, which is not available here)")
    i.add_argument("--encoding", choices=["int", "cat"], default="int")
    i.add_argument("--mask", choices=["center", "pixel", "half"], default="center")
    i.add_argument("--layers", type=int, default=5)
    i.add_argument("--channel-scale", type=float, default=1 / 8, help="1 = the paper's 64..256 channels")
    i.add_argument("--iterations", type=int, default=4000, help="search iterations")
    i.add_argument("--retrain-seconds", type=float, default=60.0, help="training time of each final network")
    i.add_argument("--batch", type=int, default=16)
    i.add_argument("--test-images", type=int, default=1000)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--device", default="auto")
    i.add_argument("--out", default="runs/inpaint", help="folder for inpaint.json")

    t2 = commands.add_parser("retrain", help="train the architecture of a search run from scratch and test it")
    t2.add_argument("run", help="a finished 'oneshot search' folder (result.json)")
    t2.add_argument("--preset", default="cpu", help="smoke, cpu (minutes on 2 cores) or paper (600 epochs, GPU)")
    t2.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a setting, e.g. epochs=20")
    t2.add_argument("--data")
    t2.add_argument("--device", default="auto")
    t2.add_argument("--quiet", action="store_true")

    r = commands.add_parser("report", help="table and curves from search run folders")
    r.add_argument("runs", nargs="+", help="run folders (each with result.json)")
    r.add_argument("--out", help="also write report.md, report.json and curves.png here")

    commands.add_parser("strategies", help="list the search strategies")
    commands.add_parser("spaces", help="list the search spaces")
    return parser


def cmd_search(args) -> int:
    from .config import preset
    from .data import load_cifar10
    from .distributed import from_environment, shutdown
    from .runs import RunFolder
    from .spaces import create_space
    from .strategies import create
    from .trainer import Search, check_batch_split, resolve_device

    config = preset(args.preset, space=args.space, strategy=args.strategy, seed=args.seed,
                    space_options=parse_assignments(args.space_option, "--space-option"),
                    strategy_options=parse_assignments(args.hp, "--hp"),
                    **parse_assignments(args.set, "--set"))
    if args.space_from:
        config = config.replace(restrict=kept_choices(args.space_from, config))
    create(config.strategy, create_space(config.space, **config.space_options), **config.strategy_options)
    out = args.out or f"runs/{config.space}-{config.strategy}-{args.preset}-s{config.seed}"
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    group, device = from_environment(resolve_device(args.device))  # one process unless launched by torchrun
    try:
        check_batch_split(config, group.world)
        data = load_cifar10(args.data)  # before the folder is touched: bad data must not leave a half-made run
        if args.shrink == "abs":
            config = shrink_first(config, data, out, device, group, args)
        # Rank 0 makes (or checks) the folder first; the others follow only if that worked.
        error = None
        if group.is_main:
            try:
                folder = RunFolder(out, config.to_dict(), resume=args.resume, overwrite=args.overwrite)
            except UserError as e:
                error = e
        if group.agree(error is not None):
            raise error or SystemExit(2)
        if not group.is_main:
            folder = RunFolder(out, config.to_dict(), resume=args.resume, writer=False)
        search = Search(config, data, device, group)
        if folder.resumed_state is not None:
            search.load_state_dict(folder.resumed_state)
        result = search.run(folder, progress=not args.quiet)
    finally:
        shutdown()
    if not group.is_main:
        return 0
    summary = f"{result['architecture']}"
    if result.get("nb201"):
        summary += f"  NB201 CIFAR-10 {result['nb201']['cifar10']:.2f}% (rank {result['nb201']['cifar10_rank']})"
    print(f"{summary}  [{result['search_seconds']:.0f} s]  -> {out}/result.json")
    return 0


def kept_choices(run_dir: str, config) -> dict:
    """The choices an ABS run kept, checked against the space the user asked for."""
    from .shrinking import load_shrunk_space

    space = load_shrunk_space(run_dir)  # checks that the file is there and readable
    record = json.loads(Path(run_dir, "shrink.json").read_text())
    if record["space"] != config.space or record["space_options"] != config.space_options:
        raise UserError(f"{run_dir} shrank {record['space']} {record['space_options']}, not {config.space} "
                        f"{config.space_options}; pass the same --space and --space-option")
    return {d.name: list(d.choices) for d in space.decisions}


def shrink_first(config, data, out, device, group, args):
    """``--shrink abs``: ABS into OUT/shrink (resumable too), then the search runs on the kept choices."""
    from .runs import RunFolder
    from .shrinking import abs_shrink

    if group.world > 1:
        raise UserError("--shrink abs runs in one process; shrink first with 'oneshot shrink', then search "
                        "with torchrun and --space-from")
    if not args.resume and not args.overwrite and RunFolder.holds_run(out):
        RunFolder.refuse(out)  # before the shrink folder inside it is touched
    shrink_dir = os.path.join(out, "shrink")
    if not (args.resume and os.path.exists(os.path.join(shrink_dir, "shrink.json"))):
        resume = args.resume and os.path.exists(os.path.join(shrink_dir, "checkpoint.pt"))
        abs_shrink(config, data, shrink_dir, device, resume=resume, overwrite=not resume, progress=not args.quiet)
    return config.replace(restrict=kept_choices(shrink_dir, config))


def cmd_shrink(args) -> int:
    from .config import preset
    from .data import load_cifar10
    from .shrinking import abs_shrink
    from .trainer import resolve_device

    config = preset(args.preset, space=args.space, strategy="random", seed=args.seed,
                    space_options=parse_assignments(args.space_option, "--space-option"),
                    **parse_assignments(args.set, "--set"))
    out = args.out or f"runs/{config.space}-abs-{args.preset}-s{config.seed}"
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    data = load_cifar10(args.data)
    space = abs_shrink(config, data, out, resolve_device(args.device), n_drop=args.drop, resume=args.resume,
                       overwrite=args.overwrite, progress=not args.quiet)
    for d in space.decisions:
        print(f"{d.name}: {', '.join(d.choices)}")
    print(f"{space.size} architectures kept -> {out}/shrink.json; search them with --space-from {out}")
    return 0


def cmd_evaluate(args) -> int:
    from .benchmarks.nb201 import load_table
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


def cmd_toy(args) -> int:
    from .toy import run_toy

    result = run_toy(trials=args.trials, iterations=args.iterations, methods=args.methods, out_dir=args.out,
                     seed=args.seed, progress=not args.quiet)
    print(f"{'method':<18} {'median iters to teacher':>24} {'trials found':>13} {'final loss x100':>16}")
    for summary in result["summary"].values():
        iters = summary["median_iterations_to_threshold"]
        print(f"{summary['label']:<18} {'never' if iters is None else f'{iters:.0f}':>24} "
              f"{summary['trials_reaching_threshold']:>10}/{args.trials:<2} {summary['final_median_x100']:>16.3f}")
    print(f"-> {args.out}/toy.json, {args.out}/toy.png")
    return 0


def cmd_asng_toy(args) -> int:
    from .asng_toy import DELTAS, run_asng_toy

    record = run_asng_toy(deltas=args.deltas or DELTAS, seeds=tuple(range(args.seeds)), max_iter=args.max_iter,
                          out_dir=args.out, progress=not args.quiet)
    print(record["table"])
    print(f"-> {args.out}/asng_toy.json, {args.out}/asng_toy.png")
    return 0


def cmd_inpaint(args) -> int:
    import torch

    from .data import load_cifar10
    from .inpainting import baseline, search_inpainting, train_and_evaluate
    from .spaces.inpainting import InpaintingSpace
    from .trainer import resolve_device

    device = resolve_device(args.device)
    data = load_cifar10(args.data)
    space = InpaintingSpace(args.encoding, layers=args.layers, channel_scale=args.channel_scale)
    found = search_inpainting(space, data.train_x, args.mask, iterations=args.iterations, batch=args.batch,
                              device=device, seed=args.seed)
    # a fixed random subset: the test set is sorted by class, so its first images would all be airplanes
    test_x = data.test_x[torch.randperm(len(data.test_x), generator=torch.Generator().manual_seed(0))[:args.test_images]]
    common = dict(mask=args.mask, seconds=args.retrain_seconds, batch=args.batch, device=device, seed=args.seed)
    searched = train_and_evaluate(space, found.arch, data.train_x, test_x, **common)
    hand = baseline(space, data.train_x, test_x, **common)
    record = {"settings": {k: v for k, v in vars(args).items() if k not in ("command",)},
              "search_seconds": round(found.seconds, 2), "searched": searched, "baseline": hand}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "inpaint.json").write_text(json.dumps(record, indent=2, default=float))
    for name, r in (("searched", searched), ("hand-designed", hand)):
        print(f"{name:<14} PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.3f}  params {r['params']}  {r.get('path', '')}")
    print(f"-> {args.out}/inpaint.json")
    return 0


def cmd_retrain(args) -> int:
    from .data import load_cifar10
    from .retrain import retrain_preset, retrain_run
    from .trainer import resolve_device

    try:
        config = retrain_preset(args.preset, **parse_assignments(args.set, "--set"))
    except TypeError as e:
        raise UserError(f"unknown retraining setting ({e}); see oneshot/retrain.py RetrainConfig") from None
    device = resolve_device(args.device)
    record = retrain_run(args.run, load_cifar10(args.data), config, device, progress=not args.quiet,
                         preset_name=args.preset)
    print(f"test error {record['test_error_percent']:.2f} %  params {record['parameters'] / 1e6:.2f} M  "
          f"(C={record['channels']}, {record['cells']} cells)  [{record['train_seconds']:.0f} s]  "
          f"-> {args.run}/retrain-{args.preset}.json")
    return 0


def cmd_report(args) -> int:
    from .report import report

    print(report(args.runs, args.out))
    return 0


def cmd_list(args) -> int:
    if args.command == "strategies":
        from .strategies import available

        items = available()
    else:
        from .spaces import SPACES

        items = {name: desc for name, (_, desc) in SPACES.items()}
    width = max(map(len, items))
    for name, desc in items.items():
        print(f"{name:<{width}}  {desc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        handler = {"search": cmd_search, "evaluate": cmd_evaluate, "toy": cmd_toy, "report": cmd_report, "asng-toy": cmd_asng_toy,
                   "inpaint": cmd_inpaint, "retrain": cmd_retrain,
                   "shrink": cmd_shrink}.get(args.command, cmd_list)
        return handler(args)
    except UserError as e:
        print(f"oneshot: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oneshot: interrupted; continue the run with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
