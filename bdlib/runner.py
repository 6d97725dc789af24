"""Run the notebooks headless with papermill, in order, under one profile.

Why: "regenerate every table and figure from one command". Notebooks are executed in
their numeric order (data -> attacks -> defenses -> results); the profile reaches them
through ``BDLIB_PROFILE`` and a non-zero seed is injected; a failure stops the run and
names the notebook and cell.
"""
from __future__ import annotations

import os
import re
import sys
import time
import warnings
from pathlib import Path

from tqdm import tqdm  # text bars: readable in papermill outputs too

from .allocator import with_allocator_env
from .nbstreams import collapse_streams
from .paths import data_root
from .profiles import PROFILES
from .timings import new_run_id, record

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "bdlib"


def notebooks(directory: Path = NOTEBOOK_DIR, only: str | None = None) -> list[Path]:
    found = sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if re.search(only, p.name)]
    return found


def _kernel_name() -> str:
    """The registered ``bdlib`` kernel if present, else this interpreter's own."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else "python3"


class ParameterError(ValueError):
    """A parameter given to a run that a notebook's ``parameters`` cell does not define."""


def notebook_parameters(nb: Path) -> list[str]:
    """The names a notebook's ``parameters`` cell defines (papermill's own inspection)."""
    import papermill as pm

    return list(pm.inspect_notebook(str(nb)))


def check_parameters(nbs: list[Path], parameters: dict) -> None:
    """Refuse a parameter that a notebook does not define — papermill would only warn and
    run the notebook on its defaults (the synthetic set, say) — naming the valid ones."""
    for nb in nbs:
        valid = notebook_parameters(nb)
        unknown = sorted(set(parameters) - set(valid))
        if unknown:
            raise ParameterError(f"notebook {nb.name} has no parameter(s) {', '.join(map(repr, unknown))}; "
                                 f"its parameters: {', '.join(valid)}")


def run_parameters(parameters: dict | None, seed: int = 0, dataset: str = "embedded",
                   dataset_root: str | os.PathLike | None = None) -> dict:
    """The parameters every notebook of a run gets: ``parameters`` (``-p``), with a non-zero
    ``seed`` and a data source other than the embedded set put in (``--seed`` and ``--dataset``
    win over ``-p``). The run's first step builds its cells from the same dict (bdlib/plan.py)."""
    parameters = dict(parameters or {})
    if seed != 0:
        parameters["seed"] = seed
    if dataset != "embedded" or dataset_root is not None:
        from .data.sources import SOURCES

        SOURCES.get(dataset)  # unknown names list the valid ones
        parameters.update({"dataset": dataset, "dataset_root": None if dataset_root is None else str(dataset_root)})
    return parameters


def run_all(profile: str = "default", seed: int = 0, output_dir: Path | None = None, only: str | None = None,
            log_output: bool = False, parameters: dict | None = None, dataset: str = "embedded",
            dataset_root: str | None = None, jobs: int = 1, run_id: str | None = None) -> int:
    """Execute the notebooks in order. ``parameters`` go to every notebook (each must define
    them); ``dataset``/``dataset_root`` select the data source of every notebook.

    ``jobs`` > 1 executes that many notebooks at once, each in its own kernel, started in
    numeric order. Meant for a warm store (``bdlib run`` computes the study first), where a
    notebook is mostly kernel start-up and imports; on a cold store two notebooks asking for
    one artifact are safe (the store's per-key locks: one computes, the other reads it) but
    the order data -> attacks -> defenses no longer paces the work. On a failure no further
    notebook starts; those already running finish.

    Every notebook that finishes appends its wall time to ``$BDLIB_DATA/executed/timings.jsonl``
    under ``run_id`` (:mod:`bdlib.timings`; a fresh id when none is given), so a long run's
    per-notebook times survive an interruption; ``python -m bdlib timings`` shows them.

    No half-written notebook ever sits at a final path: papermill writes each notebook to
    ``<name>.ipynb.partial`` next to its final path (``partial_path``) and saves it there
    after every cell; only when execution has finished — successfully, or with a
    ``PapermillExecutionError`` whose error papermill has already written into the notebook
    (its ``metadata.papermill.exception`` is then true) — is it renamed onto
    ``<name>.ipynb``. A run that is killed or interrupted (Ctrl-C, OOM killer, a lost
    machine) therefore leaves the previous ``<name>.ipynb`` untouched — for the in-place
    default profile, the committed notebook — and at most a ``<name>.ipynb.partial`` that
    says by its name that it is incomplete (a later run overwrites it).
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    PROFILES.get(profile)  # fail fast, listing the valid profiles
    nbs = notebooks(only=only)
    if not nbs:
        print(f"no notebooks matched in {NOTEBOOK_DIR}", file=sys.stderr)
        return 2
    parameters = run_parameters(parameters, seed, dataset, dataset_root)
    check_parameters(nbs, parameters)
    # the committed notebooks carry the default profile's outputs on the embedded set;
    # other profiles and datasets write elsewhere
    if output_dir is None and (profile != "default" or dataset != "embedded"):
        sub = profile if dataset == "embedded" else f"{profile}-{dataset}"
        output_dir = data_root() / "executed" / sub
    kernel = _kernel_name()
    # Notebooks read their profile from BDLIB_PROFILE (their parameters-cell default), so the
    # committed default-profile notebooks carry no injected cell that would pin "default"
    # when nbval re-runs them under the smoke profile. Other values are injected as usual.
    os.environ["BDLIB_PROFILE"] = profile
    with_allocator_env()  # inherited by the kernels papermill starts (a 1.8-3x faster CPU step)
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    run_id = run_id or new_run_id()

    def finished(nb: Path, out: Path, seconds: float) -> None:
        record(nb.stem, seconds, run=run_id, profile=profile, dataset=dataset, seed=seed, jobs=jobs)
        tqdm.write(f"{nb.name}: {seconds:.1f} s -> {out}")

    def execute(nb: Path) -> tuple[Path, float]:
        """One notebook into ``<out>.partial``, renamed onto ``out`` when it has finished
        (also after an error, which papermill has written into it)."""
        out = (output_dir / nb.name) if output_dir else nb
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = partial_path(out)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():  # papermill warns that *.partial is not *.ipynb
                warnings.filterwarnings("ignore", message=r"The specified file .* does not end in")
                pm.execute_notebook(str(_source(nb, partial)), str(partial), parameters=parameters, kernel_name=kernel,
                                    cwd=str(nb.parent), progress_bar=False, log_output=log_output)
        except PapermillExecutionError:
            _finish(partial, out, nb)
            raise
        except KeyboardInterrupt:
            print(f"\nINTERRUPTED: {nb.name}; {out} was left as it was"
                  + (f", the incomplete notebook is at {partial}" if partial.exists() else ""), file=sys.stderr)
            raise
        _finish(partial, out, nb)
        return out, time.perf_counter() - t0

    def failed(nb: Path, exc: PapermillExecutionError) -> int:
        out = (output_dir / nb.name) if output_dir else nb
        print(f"\nFAILED: {nb.name}, cell {exc.exec_count} (index {exc.cell_index}): {exc.ename}: {exc.evalue}\n"
              f"the partially executed notebook is at {out}", file=sys.stderr)
        return 1

    bar = tqdm(nbs, desc=f"notebooks ({profile})", unit="nb")
    if jobs == 1:  # in this thread: Ctrl-C reaches papermill's own loop, which stops the kernel at once
        for nb in bar:
            bar.set_postfix_str(nb.name)
            try:
                out, seconds = execute(nb)
            except PapermillExecutionError as exc:
                bar.close()
                return failed(nb, exc)
            except KeyboardInterrupt:
                bar.close()
                raise
            finished(nb, out, seconds)
        return 0
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    pending = list(nbs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running = {}
        try:
            while pending or running:
                while pending and len(running) < jobs:  # start in numeric order, `jobs` at a time
                    nb = pending.pop(0)
                    running[pool.submit(execute, nb)] = nb
                bar.set_postfix_str(", ".join(n.name for n in running.values()))
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    nb = running.pop(fut)
                    try:
                        out, seconds = fut.result()
                    except PapermillExecutionError as exc:
                        pending.clear()  # start nothing more; the running ones finish
                        wait(running)
                        bar.close()
                        return failed(nb, exc)
                    bar.update(1)
                    finished(nb, out, seconds)
        except KeyboardInterrupt:
            pending.clear()
            bar.close()
            raise
    bar.close()
    return 0


def partial_path(out: Path) -> Path:
    """Where a notebook is written while it executes: ``<name>.ipynb.partial`` beside ``out``."""
    return out.with_name(out.name + ".partial")


def _source(nb_path: Path, partial: Path) -> Path:
    """The notebook papermill reads: ``nb_path`` itself, or a copy at ``partial`` without the
    ``injected-parameters`` cell an earlier run with parameters left in it (a default-profile
    run writes in place). Papermill replaces that cell only when it is given parameters, so
    without this a plain run would silently keep the earlier run's values: ``-p grid=long``
    once, and every later ``make reproduce`` recomputes hours of curves (and nbval, which runs
    the committed cells as they are, would run them under the smoke profile)."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    keep = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    meta = nb.metadata.get("papermill", {})
    if len(keep) == len(nb.cells) and not meta.get("parameters"):
        return nb_path
    nb.cells = keep
    if meta:
        meta["parameters"] = {}  # the record of the earlier run's values goes with its cell
    nbformat.write(nb, partial)
    return partial


def _finish(partial: Path, out: Path, source: Path | None = None) -> None:
    """Tidy the finished notebook at ``partial`` and rename it onto ``out`` (atomic on one
    file system), recording ``out`` as papermill's output path (and ``source`` as its input:
    not the stripped copy :func:`_source` may have made)."""
    if not partial.exists():  # papermill failed before writing it: keep its own error in view
        return
    import nbformat

    nb = nbformat.read(partial, as_version=4)
    changed = collapse_streams(nb)  # as _tidy does
    meta = nb.metadata.get("papermill")
    paths = {"output_path": str(out), **({"input_path": str(source)} if source is not None else {})}
    for key, value in paths.items():
        if meta is not None and meta.get(key) != value:
            meta[key] = value
            changed = True
    if changed:
        nbformat.write(nb, partial)
    os.replace(partial, out)


def _tidy(path: Path) -> None:
    """Keep only the final state of progress bars in an executed notebook (see nbstreams)."""
    import nbformat

    if not path.exists():  # papermill failed before writing it: keep its own error in view
        return
    nb = nbformat.read(path, as_version=4)
    if collapse_streams(nb):
        nbformat.write(nb, path)
