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
from pathlib import Path

from tqdm import tqdm  # text bars: readable in papermill outputs too

from .allocator import with_allocator_env
from .nbstreams import collapse_streams
from .paths import data_root
from .profiles import PROFILES

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


def run_all(profile: str = "default", seed: int = 0, output_dir: Path | None = None, only: str | None = None,
            log_output: bool = False, parameters: dict | None = None, dataset: str = "embedded",
            dataset_root: str | None = None) -> int:
    """Execute the notebooks in order. ``parameters`` go to every notebook (each must define
    them); ``dataset``/``dataset_root`` select the data source of every notebook."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    PROFILES.get(profile)  # fail fast, listing the valid profiles
    nbs = notebooks(only=only)
    if not nbs:
        print(f"no notebooks matched in {NOTEBOOK_DIR}", file=sys.stderr)
        return 2
    parameters = dict(parameters or {})
    if seed != 0:
        parameters["seed"] = seed
    if dataset != "embedded" or dataset_root is not None:
        from .data.sources import SOURCES

        SOURCES.get(dataset)  # unknown names list the valid ones
        parameters.update({"dataset": dataset, "dataset_root": None if dataset_root is None else str(dataset_root)})
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
    bar = tqdm(nbs, desc=f"notebooks ({profile})", unit="nb")
    for nb in bar:
        bar.set_postfix_str(nb.name)
        out = (output_dir / nb.name) if output_dir else nb
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(out), parameters=parameters, kernel_name=kernel,
                                cwd=str(nb.parent), progress_bar=False, log_output=log_output)
        except PapermillExecutionError as exc:
            _tidy(out)
            bar.close()
            print(f"\nFAILED: {nb.name}, cell {exc.exec_count} (index {exc.cell_index}): {exc.ename}: {exc.evalue}\n"
                  f"the partially executed notebook is at {out}", file=sys.stderr)
            return 1
        _tidy(out)
        tqdm.write(f"{nb.name}: {time.perf_counter() - t0:.1f} s -> {out}")
    return 0


def _tidy(path: Path) -> None:
    """Keep only the final state of progress bars in an executed notebook (see nbstreams)."""
    import nbformat

    if not path.exists():  # papermill failed before writing it: keep its own error in view
        return
    nb = nbformat.read(path, as_version=4)
    if collapse_streams(nb):
        nbformat.write(nb, path)
