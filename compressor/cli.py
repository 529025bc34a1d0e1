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
    if args.out:
        from compressor.core.readers import check_output_folder

        check_output_folder(Path(args.out))
    if args.nproc > 1 and args.seeds is not None:
        msg = "--seeds runs the seeds one after another in one process; use it without --nproc"
        raise CompressorError(msg)
    if args.nproc > 1 and not dist.enabled:
        return launch_torchrun(args)
    overrides = {"data": args.data, "model": args.model, "checkpoint": args.checkpoint, "output": args.out}
    recipe = load_recipe(Path(args.recipe), overrides, args.registry)
    seeds = args.seeds if args.seeds is not None else recipe.seeds
    if seeds is not None:
        if dist.enabled:
            msg = "--seeds runs one process per seed in turn; drop --nproc (or seeds:) for this run"
            raise CompressorError(msg)
        return _run_seeds(args, recipe, seeds)
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


def _run_seeds(args: argparse.Namespace, recipe: Recipe, seeds: int) -> int:
    """``run --seeds N``: the recipe under N seeds, mean ± std per artifact, gates over the seeds."""
    from compressor.engine import run_seeds

    result = run_seeds(recipe, seeds, log=_log if not args.quiet else (lambda _m: None),
                       show_progress=False if args.quiet else None, registry=args.registry,
                       verbose=args.verbose)
    manifests = {s: json.loads(r.manifest_path.read_text()) for s, r in result.runs.items()}
    print(f"\nrun {recipe.name} under {seeds} seed(s):")
    for seed, manifest in manifests.items():
        reused = sum(1 for st in manifest["stages"] if st["reused"])
        print(f"  seed {seed}: {len(manifest['stages'])} stages ({reused} reused), {result.runs[seed].manifest_path}")
    print("\n" + result.table_path.read_text().split("\n", 2)[2])
    print(f"seeds:    {result.table_path}")
    if recipe.gates is not None:
        _print_seed_gates(recipe, manifests, result.output_dir)
    return 0


def _print_seed_gates(recipe: Recipe, manifests: dict, out_dir: Path) -> None:
    """Each gate checked under every seed, then combined by its ``over_seeds`` (mean or worst)."""
    from compressor.core.artifacts import write_json, write_text
    from compressor.release.bundle import artifact_sizes, benchmark_rows
    from compressor.release.gates import combine_seeds, evaluate_gates, gate_table, summary

    assert recipe.gates is not None
    per_seed = {seed: evaluate_gates(recipe.gates, benchmark_rows(m["stages"]), artifact_sizes(m["stages"]))
                for seed, m in manifests.items()}
    results = combine_seeds(recipe.gates, per_seed)
    table = gate_table(results)
    write_text(out_dir / "gates.md", f"# Release gates: {recipe.name} over seeds {', '.join(map(str, manifests))}"
                                     f"\n\n{table}")
    write_json(out_dir / "gates.json", [r.to_json() for r in results])
    print(f"\n{table}{summary(results)} over {len(manifests)} seeds (advisory here)")
    print(f"gates:    {out_dir / 'gates.md'}")


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


def _search_argv(args: argparse.Namespace, out: Path, cache: Path, storage: str, study: str) -> list[str]:
    """The command line a worker process of this search runs (every path already resolved)."""
    argv = ["search", args.recipe, "--out", str(out), "--cache-dir", str(cache), "--storage", storage,
            "--study", study]
    for flag in ("data", "model", "checkpoint"):
        if getattr(args, flag):
            argv += [f"--{flag}", getattr(args, flag)]
    return argv + (["--quiet"] if args.quiet else [])


def cmd_search(args: argparse.Namespace) -> int:
    from compressor.recipe import apply_overrides, read_recipe_file, validate_document
    from compressor.search.run import SearchOptions, default_paths, run_worker, search
    from compressor.search.study import deadline

    if args.workers < 1:
        msg = f"--workers must be at least 1 (got {args.workers})"
        raise CompressorError(msg)
    path = Path(args.recipe)
    overrides = {"data": args.data, "model": args.model, "checkpoint": args.checkpoint}
    doc = apply_overrides(read_recipe_file(path), overrides)
    recipe = validate_document(doc, str(path), args.registry)
    cfg = recipe.settings.search
    if cfg is None:
        msg = f"{path} has no search: section; add one (space, objectives, constraints, budget; see docs/search.md)"
        raise CompressorError(msg)
    out, cache, storage = default_paths(recipe, Path(args.out) if args.out else None,
                                        Path(args.cache_dir) if args.cache_dir else None, args.storage)
    from compressor.core.readers import check_output_folder

    check_output_folder(out, "--out")
    check_output_folder(cache, "--cache-dir")
    study = args.study or recipe.name
    log = (lambda _m: None) if args.quiet else (
        (lambda m: _log(f"[worker {args.worker_index}] {m}")) if args.worker else _log)
    opts = SearchOptions(out_dir=out, cache_dir=cache, storage=storage, study_name=study, workers=args.workers,
                         worker_argv=_search_argv(args, out, cache, storage, study), log=log,
                         registry=args.registry)
    if args.worker:
        import time

        run_worker(doc, recipe, cfg, opts, args.worker_index, deadline(cfg, time.monotonic()))
        return 0
    result = search(doc, recipe, opts, report_only=args.report_only)
    chosen = result.chosen
    assert chosen is not None  # search raises NoFeasiblePlan otherwise
    counts = ", ".join(f"{v} {k}" for k, v in result.summary["counts"].items())
    print(f"\nsearch {recipe.name}: {len(result.rows)} trials ({counts}); Pareto front: trials "
          f"{', '.join(str(r['trial']) for r in result.front)}")
    metrics = ", ".join(f"{label} {chosen['metrics'][name]:.3f}" for name, label in result.summary["objectives"].items()
                        if name in chosen["metrics"] and name != "size")
    print(f"chosen:   trial {chosen['trial']} ({metrics})")
    if result.summary.get("baseline") is not None:
        beaten = result.summary["baseline_dominated_by"]
        print(f"recipe as written (trial {result.summary['baseline']}): "
              + (f"dominated by trial(s) {', '.join(map(str, beaten))}" if beaten else "not dominated by any trial"))
    print(f"best:     {result.best_path}")
    print(f"report:   {result.report_path}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from compressor.core.readers import check_output_folder
    from compressor.errors import GateFailed
    from compressor.recipe import load_recipe
    from compressor.release.gates import gate_table, summary
    from compressor.releasing import make_release

    if args.out:
        check_output_folder(Path(args.out))
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
        from pydantic import TypeAdapter, ValidationError

        from compressor.core.readers import read_yaml_file
        from compressor.runtime.targets import TargetConfig

        path = Path(args.targets_file)
        try:
            targets += TypeAdapter(list[TargetConfig]).validate_python(read_yaml_file(path, "targets"))
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
    from compressor.core.readers import check_output_folder

    out = check_output_folder(Path(args.out or f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}"))
    timing = {"warmup": args.warmup, "min_iters": args.min_iters, "time_budget_s": args.time_budget_s,
              "max_iters": args.max_iters, "requests": args.requests}
    path = run_bench([Path(p) for p in args.artifacts], _targets_from(args), out, args.data, preprocess,
                     args.batch_sizes, args.mode or ["latency"], args.images,
                     args.budget, timing, log=_log)
    print(f"report: {path}")
    return 0


def _at_least(low: float, kind: type = int) -> Any:
    """An argparse type: a number of ``kind`` no smaller than ``low`` (argparse reports the rest, exit 2)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            msg = f"{text!r} is not {'an integer' if kind is int else 'a number'}"
            raise argparse.ArgumentTypeError(msg) from None
        if not value >= low:  # also refuses nan
            msg = f"must be at least {low:g} (got {text})"
            raise argparse.ArgumentTypeError(msg)
        return value

    parse.__name__ = kind.__name__
    return parse


def _batch_sizes(text: str) -> list[int]:
    """``--batch-sizes 1,8``: positive integers."""
    sizes = []
    for part in text.split(","):
        try:
            size = int(part)
        except ValueError:
            size = 0
        if size < 1:
            msg = f"{text!r}: give comma-separated batch sizes of at least 1, e.g. 1,8"
            raise argparse.ArgumentTypeError(msg)
        sizes.append(size)
    return sizes


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
    p.add_argument("--seeds", type=int, metavar="N", help="run under N seeds (the recipe's seed, +1, ...) and "
                   "report each artifact's metrics as mean ± std (default: the recipe's seeds:, else one run)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N processes (torchrun, DistributedDataParallel: one per GPU on CUDA, "
                   "gloo on CPU); stages that do not train run on the first process only")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("search", help="search the recipe's search: space with Optuna; writes search.md and best.yaml "
                       "(exit 1: no plan meets the constraints)")
    p.add_argument("recipe")
    p.add_argument("--out", help="search folder (default: <recipe output>/search)")
    p.add_argument("--storage", help="Optuna RDB URL shared by every worker, e.g. postgresql://user:pass@host/db "
                   "(default: sqlite:///<out>/study.db)")
    p.add_argument("--study", help="study name in the storage (default: the recipe's name)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes on this machine (default 1)")
    p.add_argument("--cache-dir", help="stage cache every trial shares (default: the recipe's cache_dir, else "
                   "<out>/cache); a shared folder when workers run on several machines")
    p.add_argument("--report-only", action="store_true", help="run no trial: write the report of the study as it is")
    p.add_argument("--data", help="ImageFolder root instead of the recipe's data")
    p.add_argument("--model", help="torchvision architecture name or package.module:factory")
    p.add_argument("--checkpoint", help="state dict to start from")
    p.add_argument("--quiet", action="store_true", help="no per-trial log")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one worker process of --workers N
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_search)

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
    p.add_argument("--tolerance", type=_at_least(0.0, float), default=0.5,
                   help="accepted top-1 difference in points (default 0.5)")
    p.add_argument("--threads", type=_at_least(1), default=1, help="runtime threads (default 1)")
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
    p.add_argument("--images", type=_at_least(1), help="use at most this many labelled images")
    p.add_argument("--target", action="append", help="local[:threads=N,cores=0-3] | cuda | arm64-emulated | "
                   "ssh:USER@HOST[:PORT],key=FILE,known_hosts=FILE (repeatable)")
    p.add_argument("--targets-file", help="YAML list of targets (the benchmark stage's targets syntax)")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=[1], help="comma-separated (default 1)")
    p.add_argument("--mode", action="append", choices=["latency", "throughput"], help="repeatable (default latency)")
    p.add_argument("--requests", type=_at_least(1), default=2, help="parallel requests in throughput mode")
    p.add_argument("--warmup", type=_at_least(0), default=10)
    p.add_argument("--min-iters", type=_at_least(1), default=50)
    p.add_argument("--time-budget-s", type=_at_least(0.0, float), default=2.0)
    p.add_argument("--max-iters", type=_at_least(1), default=10000)
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
