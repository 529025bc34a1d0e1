"""The ``compressor`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from compressor import __version__
from compressor.errors import CompressorError

EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_validate(args: argparse.Namespace) -> int:
    from compressor.recipe import load_recipe

    for path in args.recipes:
        recipe = load_recipe(Path(path))
        print(f"{path}: ok ({len(recipe.stages)} stages: {', '.join(s.name for s in recipe.stages)})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from compressor.recipe import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    from compressor.registry import STAGES

    for name, entry in sorted(STAGES.items()):
        print(f"{name:16} {entry.summary}")
    return 0


def _summary_line(record: dict) -> str:
    from compressor.report import _headline

    when = "reused" if record["reused"] else f"{record['seconds']:.1f} s"
    return f"  {record['name']:18} {record['type']:14} {when:>9}  {_headline(record)}"


def launch_torchrun(args: argparse.Namespace) -> int:
    """Re-run this same command under ``torchrun`` with ``args.nproc`` processes on this machine."""
    import subprocess

    from compressor.recipe import load_recipe

    # Validate here so a bad recipe gives one error, not one per rank.
    overrides = {"data": args.data, "model": args.model, "checkpoint": args.checkpoint, "output": args.out}
    load_recipe(Path(args.recipe), overrides)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "compressor.cli"]
    if args.debug:
        cmd.append("--debug")
    cmd += ["run", args.recipe]
    for flag in ("data", "model", "checkpoint", "out"):
        if getattr(args, flag):
            cmd += [f"--{flag}", getattr(args, flag)]
    if args.quiet:
        cmd.append("--quiet")
    _log(f"launching {args.nproc} processes: {' '.join(cmd)}")
    return subprocess.run(cmd, check=False).returncode


def cmd_run(args: argparse.Namespace) -> int:
    from compressor.distributed import from_env
    from compressor.engine import run_recipe
    from compressor.recipe import load_recipe

    dist = from_env()
    if args.nproc < 1:
        msg = f"--nproc must be at least 1 (got {args.nproc})"
        raise CompressorError(msg)
    if args.nproc > 1 and not dist.enabled:
        return launch_torchrun(args)
    overrides = {"data": args.data, "model": args.model, "checkpoint": args.checkpoint, "output": args.out}
    recipe = load_recipe(Path(args.recipe), overrides)
    result = run_recipe(recipe, log=_log if not args.quiet else (lambda _m: None),
                        show_progress=False if args.quiet else None)
    if not dist.is_main:
        return 0  # rank 0 prints the summary for the job
    manifest = json.loads(result.manifest_path.read_text())
    print(f"\nrun {recipe.name}: {len(manifest['stages'])} stages "
          f"({sum(1 for s in manifest['stages'] if s['reused'])} reused)")
    for record in manifest["stages"]:
        print(_summary_line(record))
    print(f"manifest: {result.manifest_path}")
    print(f"report:   {result.report_path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from compressor.report import write_report

    path = write_report(Path(args.run_dir))
    print(f"report: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compressor", description=__doc__)
    parser.add_argument("--version", action="version", version=f"compressor {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a recipe")
    p.add_argument("recipe")
    p.add_argument("--data", help="ImageFolder root (train/<class>/..., val/<class>/...) instead of the recipe's data")
    p.add_argument("--model", help="torchvision architecture name or package.module:factory")
    p.add_argument("--checkpoint", help="state dict to start from")
    p.add_argument("--out", help="output folder (default: the recipe's output, or runs/<name>)")
    p.add_argument("--quiet", action="store_true", help="no progress and no per-stage log")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N processes (torchrun, DistributedDataParallel: one per GPU on CUDA, "
                   "gloo on CPU); stages that do not train run on the first process only")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check recipes without running them")
    p.add_argument("recipes", nargs="+")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of recipes")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("stages", help="list the stage types")
    p.set_defaults(func=cmd_stages)

    p = sub.add_parser("report", help="(re)write report.md of a run folder")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CompressorError as err:
        _err(f"error: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        _err("interrupted: finished stages are kept in the cache; run the same command again to resume")
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - last resort: one line unless --debug
        if args.debug or os.environ.get("COMPRESSOR_DEBUG"):
            traceback.print_exc()
        _err(f"internal error: {type(err).__name__}: {err} (rerun with --debug for the traceback, "
             "and report it with the manifest)")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
