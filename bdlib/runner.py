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


def run_all(profile: str = "default", seed: int = 0, output_dir: Path | None = None, only: str | None = None,
            log_output: bool = False) -> int:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    PROFILES.get(profile)  # fail fast, listing the valid profiles
    nbs = notebooks(only=only)
    if not nbs:
        print(f"no notebooks matched in {NOTEBOOK_DIR}", file=sys.stderr)
        return 2
    # the committed notebooks carry the default profile's outputs; other profiles write elsewhere
    if output_dir is None and profile != "default":
        output_dir = NOTEBOOK_DIR.parent / "data" / "executed" / profile
    kernel = _kernel_name()
    # Notebooks read their profile from BDLIB_PROFILE (their parameters-cell default), so the
    # committed default-profile notebooks carry no injected cell that would pin "default"
    # when nbval re-runs them under the smoke profile. Other values are injected as usual.
    os.environ["BDLIB_PROFILE"] = profile
    with_allocator_env()  # inherited by the kernels papermill starts (a 1.8-3x faster CPU step)
    parameters = {} if seed == 0 else {"seed": seed}
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
