"""Command line.

    python -m bdlib run   --profile default [--dataset NAME --dataset-root PATH] [--models M ...] [--scheduler ADDR]
                          [--device cuda]
    python -m bdlib study --profile default [--models M ...] [--serial] [--seeds 0 1 2] [--device cuda]
    python -m bdlib data  --profile default [--dataset NAME --dataset-root PATH]
    python -m bdlib store verify [--kind K] [--remove] | store remove KIND KEY
    python -m bdlib figures [--folder PATH] [--strict]
    python -m bdlib timings [--run ID | --runs]

``run`` first computes every notebook's cells (the collection's grid, the model rows, the
budget curves, the ablations and the main table: :mod:`bdlib.plan`) — on Dask when there is
more than one worker, else in this process — then executes the notebooks with papermill over
the cached results; ``--only`` limits both to the matching notebooks.
``--models`` (registry names, :data:`bdlib.models.MODELS`; default the profile's) sets the
architectures of the study and the ``models`` parameter of every notebook; without it the
study also computes the profile's ``model_rows`` (default: LSTM-attention and ResNet on three
attacks), shown by notebook 90.
``--device`` (default ``$BDLIB_DEVICE``, else CUDA when present) is where models run; the
stored results do not depend on it (bdlib/device.py says what does and does not stay
bit-identical across devices).
``figures`` redraws every figure of ``figures/`` (or ``--folder``) from the CSV saved next to
it, without training anything, and lists the PNGs it cannot redraw (bdlib/figures.py).
``timings`` prints the wall time of every step (the study, each notebook) of the latest ``run``
(or of ``--run ID``), read from ``$BDLIB_DATA/executed/timings.jsonl``; ``--runs`` lists the
recorded runs with their totals (bdlib/timings.py).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import os
import shlex
import sys
from pathlib import Path

from .profiles import PROFILES
from .registry import UnknownNameError
from .store import Store, StoreError


def _parameter(text: str) -> tuple[str, object]:
    """``NAME=VALUE``; VALUE is a Python literal (``0.5``, ``['badnets']``, ``None``) or a string."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"parameter {text!r} is not NAME=VALUE")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="default", help=f"one of: {', '.join(PROFILES.names())}")
    p.add_argument("--dataset", default="embedded",
                   help="data source: embedded (default), speech_commands, spoken_digits, folder")
    p.add_argument("--dataset-root", help="the data source's folder (every source but embedded needs one)")
    p.add_argument("--target", help="the attacks' target class by name (default: the profile's, index 2)")


def _add_models_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", metavar="MODEL",
                   help="the architectures (bdlib.models.MODELS: smallcnn, largecnn, ...; default: the profile's); "
                        "`run` also passes them to every notebook as its `models` parameter")


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    from .device import CHOICES, ENV_VAR

    p.add_argument("--device", help=f"where models train and run: {', '.join(CHOICES)} (default ${ENV_VAR}, else auto: "
                                    "CUDA when available); no fallback when the device is missing")


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", help="Dask scheduler address (tcp://HOST:8786); default $BDLIB_SCHEDULER, "
                                       "else a local cluster sized to this machine")
    p.add_argument("--serial", action="store_true", default=None,
                   help="compute the study in this process, without Dask (the default where a local cluster would "
                        "have one worker: fewer than 8 cores, unless BDLIB_WORKERS is set)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bdlib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="compute the study, then execute every notebook in order with papermill")
    _add_data_args(run)
    _add_models_arg(run)
    _add_cluster_args(run)
    _add_device_arg(run)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--only", help="regular expression: run only the notebooks whose file name matches "
                                    "(and compute only their cells first)")
    run.add_argument("--no-study", action="store_true", help="skip computing the notebooks' cells first")
    run.add_argument("-p", "--parameter", action="append", type=_parameter, default=[], metavar="NAME=VALUE",
                     help="a notebook parameter for every notebook run (each must define it)")
    run.add_argument("--output-dir", type=Path, help="write executed notebooks here instead of in place")
    run.add_argument("--log-output", action="store_true", help="stream the notebooks' own output")
    run.add_argument("--jobs", type=int, default=1, help="notebooks executed at once, each in its own kernel "
                                                         "(default 1: in order); for a warm store")
    study = sub.add_parser("study", help="compute the collection's grid (victims, then defense runs) on Dask")
    _add_data_args(study)
    _add_models_arg(study)
    _add_cluster_args(study)
    _add_device_arg(study)
    study.add_argument("--seeds", type=int, nargs="+", default=[0])
    data = sub.add_parser("data", help="load (synthesise or verify) a data source and print its load report")
    _add_data_args(data)
    store = sub.add_parser("store", help="check or clean the artifact store ($BDLIB_DATA/store)")
    store_sub = store.add_subparsers(dest="store_cmd", required=True)
    verify = store_sub.add_parser("verify", help="verify every entry's checksums; exit 1 if a problem remains")
    verify.add_argument("--kind", help="only this kind (models, defenses, features, ...)")
    verify.add_argument("--strict", action="store_true", help="also list entries saved without checksums")
    verify.add_argument("--remove", action="store_true", help="remove every entry that fails")
    remove = store_sub.add_parser("remove", help="remove one entry")
    remove.add_argument("kind")
    remove.add_argument("key")
    figs = sub.add_parser("figures", help="redraw every figure from its CSV (PNG + PDF; no training) and list the "
                                          "PNGs that have no CSV or no drawer")
    figs.add_argument("--folder", type=Path, help="the figures folder (default: the repository's figures/)")
    figs.add_argument("--strict", action="store_true", help="exit 1 when a PNG in the folder cannot be redrawn")
    tim = sub.add_parser("timings", help="the wall time of each step of the latest `run` (the study, every notebook)")
    tim.add_argument("--run", help="this run's id instead of the latest (see --runs)")
    tim.add_argument("--runs", action="store_true", help="list every recorded run: steps, total seconds, when it ended")
    args = parser.parse_args(argv)
    if argv is None and args.cmd in ("run", "study"):
        _restart_with_allocator_settings()
    try:
        import re

        if getattr(args, "only", None):
            try:
                re.compile(args.only)
            except re.error as exc:
                raise ValueError(f"--only {args.only!r} is not a regular expression: {exc}") from None
        if args.cmd == "run":
            if args.jobs < 1:
                raise ValueError(f"--jobs must be at least 1, got {args.jobs}")

            if args.device is not None:
                from .device import ENV_VAR, resolve_device

                resolve_device(args.device)  # the notebooks run here: the device must be here
                os.environ[ENV_VAR] = args.device  # inherited by the notebook kernels papermill starts
            parameters = dict(args.parameter)
            if args.models:
                parameters["models"] = list(args.models)
            if isinstance(parameters.get("models"), str):  # -p models=smallcnn: a string, not a list
                raise TypeError(f"models takes a list of names, got {parameters['models']!r}: "
                                f"--models {parameters['models']} or -p \"models=['{parameters['models']}']\"")
            if parameters.get("models") is not None:
                from .models import MODELS

                for m in parameters["models"]:
                    MODELS.get(m)  # a misspelt model fails before the study and the notebooks, naming the valid ones
            from .timings import mark, new_run_id

            run_id = new_run_id()
            if args.target is not None:
                parameters["target"] = args.target
            # a start and an end marker: a run killed outright (a time limit) shows as such in `timings --runs`
            command = shlex.join(sys.argv[1:] if argv is None else argv)
            mark("start", run=run_id, profile=args.profile, dataset=args.dataset, command=command)
            try:
                rc = _run(args, parameters, run_id)
            except BaseException as exc:
                with contextlib.suppress(OSError):  # a full disk must not hide the error itself
                    mark("end", run=run_id, rc=None, error=type(exc).__name__)
                raise
            mark("end", run=run_id, rc=rc)
            return rc
        if args.cmd == "study":
            _study(args, seeds=args.seeds)
            return 0
        if args.cmd == "data":
            from .pipeline import load_experiment

            exp = load_experiment(args.profile, dataset=args.dataset, dataset_root=args.dataset_root,
                                  target=args.target)
            print(f"target class: {exp.class_names[exp.target_index]!r}")
            print(f"{exp.dataset_id}: {len(exp.manifest)} clips in {exp.dataset_dir}, classes {list(exp.class_names)}")
            for split in ("train", "val", "test"):
                s = exp.split(split)  # prints the split's load report and its warnings (non-embedded sources)
                print(f"{split}: {len(s)} clips, {len(set(s.speakers))} speakers")
            return 0
        if args.cmd == "store":
            return _store(args)
        if args.cmd == "figures":
            return _figures(args)
        if args.cmd == "timings":
            return _timings(args)
    except (UnknownNameError, ValueError, TypeError, FileNotFoundError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


def _run(args, parameters: dict, run_id: str) -> int:
    """``run`` after its checks: every notebook's cells (unless ``--no-study``), then the notebooks."""
    from .runner import run_all

    if not args.no_study:
        try:
            _notebook_cells(args, parameters, run_id)
        except KeyboardInterrupt:
            print("\nINTERRUPTED while computing the notebooks' cells: every cell that finished is stored "
                  "(a cell in flight is not, and nothing half-written is read); run the same command again "
                  "to go on from there. No notebook was executed.", file=sys.stderr)
            return 130
    return run_all(args.profile, args.seed, args.output_dir, args.only, args.log_output,
                   parameters=parameters, dataset=args.dataset, dataset_root=args.dataset_root, jobs=args.jobs,
                   run_id=run_id)


def _store(args) -> int:
    from .paths import data_root

    store = Store(data_root() / "store")
    if args.store_cmd == "remove":
        if not store.remove(args.kind, args.key):
            print(f"error: no entry {args.kind}/{args.key} in {store.root}", file=sys.stderr)
            return 2
        print(f"removed {args.kind}/{args.key}")
        return 0
    problems = store.verify(args.kind, strict=args.strict)
    for p in problems:
        print(p)
        if args.remove:
            store.remove(p.kind, p.key)
    left = [] if args.remove else problems
    print(f"{len(problems)} problem(s) in {store.root}" + (", removed" if args.remove and problems else ""))
    return 1 if left else 0


def _figures(args) -> int:
    import time

    import matplotlib

    t0 = time.perf_counter()
    matplotlib.use("Agg")  # files only: no display needed
    from .figures import redraw
    from .paths import REPO_ROOT

    report = redraw(args.folder or REPO_ROOT / "figures")
    print(f"figures redrawn in {time.perf_counter() - t0:.1f} s")
    return 1 if args.strict and (report.no_csv or report.no_drawer) else 0


def _timings(args) -> int:
    from .timings import read_timings, run_summary, run_table, timings_path

    frame = read_timings()
    if frame.attrs["skipped"]:
        print(f"warning: {frame.attrs['skipped']} unreadable line(s) in {timings_path()} skipped", file=sys.stderr)
    runs = run_summary()
    if runs.empty:
        print(f"no timings recorded yet in {timings_path()}: `python -m bdlib run` records one line per step")
        return 0
    if args.runs:  # before any step: a run killed in its first step has only its start marker
        print(runs.round(1).to_string())
        return 0
    if frame.empty:
        print(f"no step finished yet in {timings_path()}; `--runs` lists the runs started")
        return 0
    table = run_table(frame, args.run)
    cols = [c for c in ("step", "seconds", "cumulative_s", "finished", "profile", "dataset", "jobs", "cores")
            if c in table]
    print(f"run {table['run'].iloc[0]}: {len(table)} step(s), {table['seconds'].sum():.1f} s in all")
    print(table[cols].to_string(index=False))
    return 0


def _restart_with_allocator_settings() -> None:
    """Start this command again with ``make``'s malloc settings when they are not in the
    environment (``python -m bdlib run`` typed by hand): glibc reads them once, at process start,
    and the cells computed here train 1.8–3× faster with them (bdlib/allocator.py). A value
    already set wins; only Linux (glibc) is restarted."""
    from .allocator import ALLOCATOR_ENV, with_allocator_env

    if sys.platform.startswith("linux") and not set(ALLOCATOR_ENV) <= set(os.environ):
        env = with_allocator_env(dict(os.environ))
        os.execve(sys.executable, [sys.executable, "-m", "bdlib", *sys.argv[1:]], env)


def _notebook_cells(args, parameters: dict, run_id: str) -> None:
    """What ``run`` computes before the notebooks (:func:`bdlib.plan.plan`): the cells of the
    notebooks it will run, from the parameters they will get; each part's wall time (serially)
    or the whole (on Dask) is appended to the timings record."""
    from .plan import compute_plan, plan
    from .runner import check_parameters, notebooks, run_parameters
    from .study import forget_experiments
    from .timings import record

    nbs = notebooks(only=args.only)
    given = run_parameters(parameters, args.seed, args.dataset, args.dataset_root)  # what the notebooks will get
    check_parameters(nbs, given)  # a name a notebook does not define fails before anything is computed
    parts = plan(args.profile, [nb.stem for nb in nbs], given, device=args.device, log=sys.stderr)

    def done(part, seconds: float) -> None:
        print(f"{part.label}: {len(part)} cells in {seconds:.1f} s", file=sys.stderr)
        record(f"cells: {part.label}", seconds, run=run_id, profile=args.profile, dataset=args.dataset,
               seed=args.seed, cells=len(part))

    compute_plan(parts, scheduler=args.scheduler, serial=args.serial, on_part=done)
    forget_experiments()  # their data and features stay out of memory while the notebooks run


def _study(args, seeds: list[int], models=None) -> None:
    """``study``: the collection grid over ``seeds`` and, unless ``models`` are given, the profile's
    model rows (notebook 90); each study's wall time is appended to the timings record
    (:mod:`bdlib.timings`). ``run`` computes every notebook's cells instead (:func:`_notebook_cells`)."""
    from .study import collection_study, model_rows_studies
    from .timings import new_run_id, record

    run_id = new_run_id()
    models = models or args.models  # --models; None: the profile's
    common = dict(seeds=seeds, dataset=args.dataset, dataset_root=args.dataset_root, target=args.target,
                  device=args.device)
    studies = [collection_study(args.profile, models=None if models is None else list(models), **common)]
    if models is None:
        studies += model_rows_studies(args.profile, **common)
    for study in studies:
        print(f"study: {len(study.victim_cells())} victim cells, {len(study.defense_cells())} defense cells "
              f"({args.profile}, {args.dataset}, models {', '.join(study.models)}, attacks "
              f"{', '.join(study.attacks)}, device {study.device or 'default'})", file=sys.stderr)
        study.run(scheduler=args.scheduler, serial=args.serial)
        print(f"study computed in {study.last_run['wall_s']:.1f} s", file=sys.stderr)
        record(f"study ({', '.join(study.models)})", study.last_run["wall_s"], run=run_id, profile=args.profile, dataset=args.dataset,
               seeds=list(seeds), cells=len(study.victim_cells()) + len(study.defense_cells()))


if __name__ == "__main__":
    sys.exit(main())
