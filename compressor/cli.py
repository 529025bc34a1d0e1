"""The ``compressor`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressor import __version__
from compressor.errors import CompressorError

if TYPE_CHECKING:
    from compressor.recipe import Recipe

EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_validate(args: argparse.Namespace) -> int:
    from compressor.recipe import load_recipe

    for path in args.recipes:
        recipe = load_recipe(Path(path), registry=args.registry)
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
    from compressor.report.render import headline

    when = "reused" if record["reused"] else f"{record['seconds']:.1f} s"
    return f"  {record['name']:18} {record['type']:14} {when:>9}  {headline(record)}"


def launch_torchrun(args: argparse.Namespace) -> int:
    """Re-run this same command under ``torchrun`` with ``args.nproc`` processes on this machine."""
    import subprocess

    from compressor.recipe import load_recipe

    # Validate here so a bad recipe gives one error, not one per rank.
    overrides = {"data": args.data, "model": args.model, "checkpoint": args.checkpoint, "output": args.out}
    load_recipe(Path(args.recipe), overrides)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "compressor.cli"]
    cmd += [flag for flag in ("--debug", "--verbose") if getattr(args, flag[2:])]
    cmd += ["run", args.recipe]
    for flag in ("data", "model", "checkpoint", "out"):
        if getattr(args, flag):
            cmd += [f"--{flag}", getattr(args, flag)]
    if args.quiet:
        cmd.append("--quiet")
    _log(f"launching {args.nproc} processes: {' '.join(cmd)}")
    return subprocess.run(cmd, check=False).returncode


def cmd_run(args: argparse.Namespace) -> int:
    from compressor.core.distributed import from_env
    from compressor.engine import run_recipe
    from compressor.recipe import load_recipe

    dist = from_env()
    if args.nproc < 1:
        msg = f"--nproc must be at least 1 (got {args.nproc})"
        raise CompressorError(msg)
    if args.nproc > 1 and not dist.enabled:
        return launch_torchrun(args)
    overrides = {"data": args.data, "model": args.model, "checkpoint": args.checkpoint, "output": args.out}
    recipe = load_recipe(Path(args.recipe), overrides, args.registry)
    result = run_recipe(recipe, log=_log if not args.quiet else (lambda _m: None),
                        show_progress=False if args.quiet else None, registry=args.registry,
                        verbose=args.verbose)
    if not dist.is_main:
        return 0  # rank 0 prints the summary for the job
    manifest = json.loads(result.manifest_path.read_text())
    print(f"\nrun {recipe.name}: {len(manifest['stages'])} stages "
          f"({sum(1 for s in manifest['stages'] if s['reused'])} reused)")
    for record in manifest["stages"]:
        print(_summary_line(record))
    print(f"manifest: {result.manifest_path}")
    print(f"report:   {result.report_path}")
    if recipe.gates is not None:
        _print_run_gates(recipe, manifest, result.output_dir)
    return 0


def _print_run_gates(recipe: Recipe, manifest: dict, out_dir: Path) -> None:
    """A recipe with gates gets the gate table after a run too; only ``release`` acts on it."""
    from compressor.core.artifacts import write_json, write_text
    from compressor.release.bundle import artifact_sizes, benchmark_rows
    from compressor.release.gates import evaluate_gates, gate_table, summary

    stages = manifest["stages"]
    assert recipe.gates is not None
    results = evaluate_gates(recipe.gates, benchmark_rows(stages), artifact_sizes(stages))
    table = gate_table(results)
    write_text(out_dir / "gates.md", f"# Release gates: {recipe.name}\n\n{table}")
    write_json(out_dir / "gates.json", [r.to_json() for r in results])
    print(f"\n{table}{summary(results)} (advisory here; 'compressor release' fails on a failed gate)")
    print(f"gates:    {out_dir / 'gates.md'}")


def cmd_release(args: argparse.Namespace) -> int:
    from compressor.errors import GateFailed
    from compressor.recipe import load_recipe
    from compressor.release.gates import gate_table, summary
    from compressor.releasing import make_release

    recipe = load_recipe(Path(args.recipe), registry=args.registry)
    result = make_release(
        recipe, args.version, out=Path(args.out) if args.out else None,
        baseline=Path(args.baseline) if args.baseline else None, force=args.force,
        log=_log if not args.quiet else (lambda _m: None), show_progress=False if args.quiet else None,
        registry=args.registry, verbose=args.verbose,
    )
    print(f"\nrelease {recipe.name} {args.version}\n")
    print(gate_table(result.results) + summary(result.results))
    print(f"bundle:   {result.bundle} ({'releasable' if result.releasable else 'NOT releasable'})")
    print(f"manifest sha256: {result.manifest_sha256}")
    if not result.releasable:
        failed = sum(r.status == "fail" for r in result.results)
        msg = (f"{failed} gate check(s) failed; the evidence is in {result.bundle} (gates.md), "
               "which is marked not releasable")
        raise GateFailed(msg)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from compressor.release.verify import verify_bundle

    report = verify_bundle(Path(args.bundle), data_path=Path(args.data) if args.data else None,
                           tolerance=args.tolerance, threads=args.threads, accuracy=not args.hashes_only,
                           expect_sha256=args.expect_sha256, log=_log)
    for warning in report.warnings:
        _err(f"warning: {warning}")
    checked = f"{len(report.accuracy)} accuracy check(s)" if not args.hashes_only else "hashes only"
    print(f"verified {args.bundle}: {report.files} files match the manifest; {checked} reproduce")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from compressor.report.render import write_report

    path = write_report(Path(args.run_dir), Path(args.baseline) if args.baseline else None, args.budget,
                        args.latency_tolerance, args.accuracy_tolerance)
    print(f"report: {path} (+ report.html, results.json, PNG figures)")
    if args.baseline and args.fail_on_regression:
        doc = json.loads((path.parent / "results.json").read_text())
        regressions = (doc.get("comparison") or {}).get("regressions", 0)
        if regressions:
            _err(f"{regressions} regression(s) against {args.baseline}; see {path}")
            return 1
    return 0


def _targets_from(args: argparse.Namespace) -> list:
    from compressor.runtime.targets import parse_target

    targets = [parse_target(spec) for spec in args.target or []]
    if args.targets_file:
        import yaml
        from pydantic import TypeAdapter, ValidationError

        from compressor.runtime.targets import TargetConfig

        path = Path(args.targets_file)
        if not path.is_file():
            msg = f"--targets-file {path} does not exist"
            raise CompressorError(msg)
        try:
            targets += TypeAdapter(list[TargetConfig]).validate_python(yaml.safe_load(path.read_text()))
        except ValidationError as err:
            first = err.errors()[0]
            msg = f"{path}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
            raise CompressorError(msg) from None
    return targets or [parse_target("local")]


def cmd_bench(args: argparse.Namespace) -> int:
    import time

    from compressor.runtime.foreign import run_bench

    preprocess = None
    if args.preprocess:
        try:
            preprocess = json.loads(args.preprocess)
        except json.JSONDecodeError as err:
            msg = f"--preprocess is not JSON ({err}); e.g. '{{\"crop\": 224, \"channels\": 3}}'"
            raise CompressorError(msg) from err
    out = Path(args.out or f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    timing = {"warmup": args.warmup, "min_iters": args.min_iters, "time_budget_s": args.time_budget_s,
              "max_iters": args.max_iters, "requests": args.requests}
    path = run_bench([Path(p) for p in args.artifacts], _targets_from(args), out, args.data, preprocess,
                     [int(b) for b in args.batch_sizes.split(",")], args.mode or ["latency"], args.images,
                     args.budget, timing, log=_log)
    print(f"report: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compressor", description=__doc__)
    parser.add_argument("--version", action="version", version=f"compressor {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    parser.add_argument("--verbose", action="store_true",
                        help="show what converters and runtimes print (default: each stage's stage.log)")
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

    p = sub.add_parser("release", help="run a recipe, check its gates, write a release bundle (exit 1: a gate failed)")
    p.add_argument("recipe")
    p.add_argument("--version", required=True, help="release version, e.g. 1.4.0")
    p.add_argument("--baseline", help="the previous release's bundle folder, for max_regression gates")
    p.add_argument("--out", help="bundle folder (default: <run output>/releases/<version>)")
    p.add_argument("--force", action="store_true", help="replace an existing releasable bundle (a failed release's folder is always replaced)")
    p.add_argument("--quiet", action="store_true", help="no progress and no per-stage log")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("verify", help="check a release bundle's files and re-run its accuracy (exit 1: mismatch)")
    p.add_argument("bundle")
    p.add_argument("--data", help="folder of the data set, if not where the release found it")
    p.add_argument("--tolerance", type=float, default=0.5, help="accepted top-1 difference in points (default 0.5)")
    p.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
    p.add_argument("--hashes-only", action="store_true", help="check file hashes, skip re-running accuracy")
    p.add_argument("--expect-sha256", help="the manifest's sha256 as release printed it (pins the manifest too)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("validate", help="check recipes without running them")
    p.add_argument("recipes", nargs="+")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of recipes")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("stages", help="list the stage types")
    p.set_defaults(func=cmd_stages)

    p = sub.add_parser("report", help="(re)write report.md/.html, results.json and figures of a run folder")
    p.add_argument("run_dir")
    p.add_argument("--baseline", help="another run folder: show changes and flag regressions")
    p.add_argument("--budget", type=float, help="top-1 points below the teacher allowed (default: the recipe's)")
    p.add_argument("--latency-tolerance", type=float, default=10.0, help="median slow-down %% flagged (default 10)")
    p.add_argument("--accuracy-tolerance", type=float, default=0.5, help="top-1 drop in points flagged (default 0.5)")
    p.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a regression is flagged")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="benchmark ONNX / OpenVINO IR / TFLite files on targets")
    p.add_argument("artifacts", nargs="+", help=".onnx, .tflite or OpenVINO .xml files")
    p.add_argument("--data", help="labelled images: a folder of class folders (or with val/), or fashion-mnist")
    p.add_argument("--preprocess", help='JSON, e.g. {"resize": 256, "crop": 224, "channels": 3} '
                   "(default: the artifact's metadata)")
    p.add_argument("--images", type=int, help="use at most this many labelled images")
    p.add_argument("--target", action="append", help="local[:threads=N,cores=0-3] | cuda | arm64-emulated | "
                   "ssh:USER@HOST[:PORT],key=FILE,known_hosts=FILE (repeatable)")
    p.add_argument("--targets-file", help="YAML list of targets (the benchmark stage's targets syntax)")
    p.add_argument("--batch-sizes", default="1", help="comma-separated (default 1)")
    p.add_argument("--mode", action="append", choices=["latency", "throughput"], help="repeatable (default latency)")
    p.add_argument("--requests", type=int, default=2, help="parallel requests in throughput mode")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--min-iters", type=int, default=50)
    p.add_argument("--time-budget-s", type=float, default=2.0)
    p.add_argument("--max-iters", type=int, default=10000)
    p.add_argument("--budget", type=float, default=1.0, help="top-1 points below the first file allowed")
    p.add_argument("--out", help="output folder (default runs/bench-<time>)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None, registry: Mapping[str, Any] | None = None) -> int:
    """The command line; ``registry`` replaces the stage registry (default: :data:`compressor.registry.STAGES`)."""
    from compressor.registry import STAGES

    parser = build_parser()
    args = parser.parse_args(argv)
    args.registry = STAGES if registry is None else registry
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
