"""Fault injection: a study run is SIGKILLed at seeded random points — at random times, and
at a random step inside the store's writes (before or after a rename, half-way through
writing a file) — then rerun. Every rerun finishes, every stored artifact verifies, no
temporary is left, and the table and every stored tensor equal an uninterrupted run's
bit for bit. A corrupted store is then recomputed (``BDLIB_STORE_ON_CORRUPT=recompute``) or
refused with the command that removes the entry.

Each run is a fresh process with one torch thread (bit-reproducible results).
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bdlib.store import Store
from test_study_on_real_layouts import make_folder_corpus

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
VOLATILE = ["time_s", "peak_rss_mb"]  # wall-clock measurements: differ between any two runs

# A fork server: imports torch and bdlib once, then forks one fresh process per job (a study
# run), reporting its pid and then its exit status. Starting python and importing torch
# costs ~4 s; a fork costs nothing, which keeps eleven runs within the test budget. The
# server never touches a store; each child starts from the state of a freshly imported
# bdlib, as `bdlib run` does.
#
# A job with kill_step > 0 kills itself (SIGKILL: no cleanup, no finally) at that step of
# the store's writes: every file write, tensor write, rename, exchange and removal is one
# step (renames and exchanges twice: before and after), and writes die half-way through.
SERVER = r"""
import json, os, signal, sys, time, traceback
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
import shutil
from test_study_on_real_layouts import TINY
import bdlib.pipeline
import bdlib.store as S
from bdlib.profiles import get_profile
from bdlib.study import Study


def run(job):
    kill_step, steps = job["kill_step"], [0]

    def hit(what):
        steps[0] += 1
        if steps[0] == kill_step:
            with open(job["killed_at"], "w") as f:
                f.write(what)
            return True
        return False

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    real_write, real_save_file, real_rename, real_rmtree, real_exchange = (
        S._write_text, S.save_file, os.rename, shutil.rmtree, S._exchange)

    def write_text(path, text):
        if hit(f"half-way through writing {path}"):
            path.write_text(text[: len(text) // 2]); die()
        return real_write(path, text)

    def save_file(tensors, filename, *a, **k):
        real_save_file(tensors, filename, *a, **k)
        if hit(f"half-way through writing {filename}"):
            os.truncate(filename, os.path.getsize(filename) // 2); die()

    def rename(a, b, *args, **kw):
        if hit(f"before renaming {a} to {b}"): die()
        real_rename(a, b, *args, **kw)
        if hit(f"after renaming {a} to {b}"): die()

    def exchange(a, b):
        if hit(f"before exchanging {a} and {b}"): die()
        done = real_exchange(a, b)
        if hit(f"after exchanging {a} and {b}"): die()
        return done

    def rmtree(path, *a, **k):
        if hit(f"before removing {path}"): die()
        return real_rmtree(path, *a, **k)

    S._write_text, S.save_file, os.rename, shutil.rmtree, S._exchange = write_text, save_file, rename, rmtree, exchange
    os.environ.pop("BDLIB_STORE_ON_CORRUPT", None)
    os.environ.update(job["env"])
    study = Study(get_profile("smoke", **TINY), dataset="folder", dataset_root=job["corpus"], attacks={"badnets": {}},
                  defenses={"ft": {"lr": 1e-2}, "clp": {}}, data_root=job["data_root"])
    open(job["started"], "w").close()
    t0 = time.perf_counter()
    table = study.run(serial=True, progress=False)
    table.attrs = {"steps": steps[0], "compute_s": time.perf_counter() - t0}
    table.to_pickle(job["out"])


for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(log, 1), os.dup2(log, 2)
            run(job)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Runs:
    """Study runs, each a fresh forked process of the fork server."""

    def __init__(self, tmp: Path):
        self.tmp, self.n = tmp, 0
        (tmp / "server.py").write_text(SERVER)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.server = subprocess.Popen([sys.executable, str(tmp / "server.py"), str(TESTS)], cwd=REPO, env=env,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=open(tmp / "server.log", "w"), text=True)

    def start(self, corpus, data_root, kill_step=0, env=None) -> dict:
        self.n += 1
        job = {"corpus": str(corpus), "data_root": str(data_root), "kill_step": kill_step, "env": env or {},
               **{k: str(self.tmp / f"{k}-{self.n}") for k in ("out", "started", "log", "killed_at")}}
        self.server.stdin.write(json.dumps(job) + "\n")
        self.server.stdin.flush()
        reply = self.server.stdout.readline()
        assert reply, (self.tmp / "server.log").read_text()[-3000:]
        assert "pid" in json.loads(reply), f"a previous job's exit was never read: {reply}"
        return {**job, "pid": json.loads(reply)["pid"]}

    def wait(self, job) -> int:
        """The job's exit code (-9: SIGKILLed)."""
        return json.loads(self.server.stdout.readline())["exit"]

    def log(self, job) -> str:
        return Path(job["log"]).read_text()

    def finish(self, corpus, data_root, env=None) -> pd.DataFrame:
        job = self.start(corpus, data_root, env=env)
        code = self.wait(job)
        assert code == 0, self.log(job)[-3000:]
        return pd.read_pickle(job["out"])

    def close(self):
        self.server.stdin.close()
        self.server.wait(timeout=30)


def _weights(store_root: Path) -> dict:
    """kind/key -> SHA-256 of the entry's tensors, from the manifests."""
    out = {}
    for m in sorted(store_root.glob("*/*/manifest.json")):
        if not m.parent.name.startswith("."):
            out[f"{m.parent.parent.name}/{m.parent.name}"] = json.loads(m.read_text())["sha256"].get(
                "weights.safetensors")
    return out


def _assert_same_as_reference(reference, table, data_root):
    store_root = data_root / "store"
    assert Store(store_root).verify(strict=True) == []
    assert not [p.name for p in store_root.glob("*/.tmp-*")] and not list(store_root.glob("*/.trash-*"))
    pd.testing.assert_frame_equal(table.drop(columns=VOLATILE), reference["table"].drop(columns=VOLATILE),
                                  check_exact=True)
    assert _weights(store_root) == reference["weights"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, and the corpus and fork server every trial shares."""
    tmp = tmp_path_factory.mktemp("fault")
    corpus = make_folder_corpus(tmp / "words")
    runs = Runs(tmp)
    table = runs.finish(corpus, tmp / "ref")
    assert len(table) == 3 and table.torch_threads.dropna().eq(1).all()
    assert Store(tmp / "ref" / "store").verify(strict=True) == []
    yield {"tmp": tmp, "corpus": corpus, "runs": runs, "table": table, "weights": _weights(tmp / "ref" / "store"),
           "steps": table.attrs["steps"], "compute_s": table.attrs["compute_s"]}
    runs.close()


@pytest.mark.parametrize("trial", range(4))
def test_killed_runs_resume_to_the_uninterrupted_result(reference, trial):
    """Even trials: SIGKILL from outside at a random time of the computation. Odd trials:
    the process kills itself at a random step of the store's writes."""
    tmp, corpus, runs = reference["tmp"], reference["corpus"], reference["runs"]
    rng = random.Random(1000 + trial)
    data_root = tmp / f"trial{trial}"
    if trial % 2 == 0:
        # The delay is a fraction of the reference run's time; a run can go faster than the
        # reference did (CI's other worker idle now, busy then) and finish before the kill.
        # Such an attempt proves nothing, so it is redone on a fresh store with half the delay.
        fraction = rng.uniform(0.05, 0.8)
        for attempt in range(6):
            data_root = tmp / f"trial{trial}-{attempt}"
            job = runs.start(corpus, data_root)
            while not Path(job["started"]).exists():
                time.sleep(0.005)
            time.sleep(fraction * reference["compute_s"])
            try:
                os.kill(job["pid"], signal.SIGKILL)
            except ProcessLookupError:  # already exited and reaped: its exit code says how
                pass
            code = runs.wait(job)
            if code != 0:
                break
            fraction /= 2
    else:
        job = runs.start(corpus, data_root, kill_step=rng.randint(1, reference["steps"]))
        code = runs.wait(job)
    assert code == -signal.SIGKILL, f"the run was not killed (exit {code}): {runs.log(job)[-2000:]}"
    if trial % 2:
        print("killed", Path(job["killed_at"]).read_text())
    table = runs.finish(corpus, data_root)
    _assert_same_as_reference(reference, table, data_root)


def test_a_corrupted_store_is_refused_then_recomputed(reference):
    """Victim weights with bytes flipped: a rerun fails naming the entry and the command that
    removes it; with BDLIB_STORE_ON_CORRUPT=recompute it recomputes the victim and gives the
    uninterrupted result again."""
    tmp, corpus, runs = reference["tmp"], reference["corpus"], reference["runs"]
    data_root = tmp / "corrupt"
    shutil.copytree(tmp / "ref", data_root)
    store = Store(data_root / "store")
    victim = next(r for r in store.records("models") if r["config"]["attack"] == "badnets")
    w = Path(victim["path"]) / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-4000:] = bytes(b ^ 0xFF for b in data[-4000:])
    w.write_bytes(bytes(data))
    job = runs.start(corpus, data_root)
    assert runs.wait(job) == 1
    log = runs.log(job)
    assert "StoreIntegrityError" in log and f"rm -rf {victim['path']}" in log and "weights.safetensors: SHA-256" in log
    table = runs.finish(corpus, data_root, env={"BDLIB_STORE_ON_CORRUPT": "recompute"})
    _assert_same_as_reference(reference, table, data_root)
    assert len(list((data_root / "store" / "models").glob(".corrupt-*"))) == 1
