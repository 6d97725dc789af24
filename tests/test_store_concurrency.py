"""The store under concurrent use: one computation per key, atomic entries, stale temporaries,
strict JSON and readable file modes."""
import json
import math
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bdlib.store import Store, config_key

REPO = Path(__file__).resolve().parents[1]
CFG = {"attack": "badnets", "seed": 3}

# Requests one artifact through lock + has/save, the way the pipeline does.
COMPUTE_ONCE = r"""
import json, sys, time
from pathlib import Path
root, counter, go = sys.argv[1:4]
from bdlib.store import Store
import torch
store, cfg = Store(root), {"attack": "badnets", "seed": 3}
Path(go + "." + sys.argv[4]).touch()
while not Path(go).exists():
    time.sleep(0.005)
with store.lock("models", cfg, notice_after=0.3):
    if not store.has("models", cfg):
        with open(counter, "a") as f:
            f.write(sys.argv[4] + "\n")
        time.sleep(1.0)  # "training"
        store.save("models", cfg, {"acc": 0.5, "asr": float("nan"), "by": sys.argv[4]}, {"w": torch.arange(1000.0)})
m = store.load_metrics("models", cfg)
t = store.load_tensors("models", cfg)
print(json.dumps({"by": m["by"], "asr_nan": m["asr"] != m["asr"], "w": float(t["w"].sum())}))
"""

# Re-saves one key in a loop until a stop file appears.
RESAVE = r"""
import sys, time
from pathlib import Path
root, stop, ready, replace = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
from bdlib.store import Store
import torch
store, cfg, i = Store(root), {"attack": "badnets", "seed": 3}, 0
Path(ready).touch()
while not Path(stop).exists():
    i += 1
    kw = {"replace": True} if replace else {}
    store.save("models", cfg, {"writer": "proc", "i": i, "asr": float("nan")}, {"w": torch.full((4096,), float(i))}, **kw)
print(i)
"""


def _scratch(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".t*-*") if p.name.startswith((".tmp-", ".trash-")))


def _wait_for(*paths: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, f"timed out waiting for {paths}"
        time.sleep(0.01)


def test_two_processes_compute_one_artifact_once(tmp_path):
    """(a) lock + has/save: exactly one process computes, both end with the same artifact."""
    root, counter, go = tmp_path / "store", tmp_path / "computed.txt", tmp_path / "go"
    script = tmp_path / "compute_once.py"
    script.write_text(COMPUTE_ONCE)
    procs = [subprocess.Popen([sys.executable, str(script), str(root), str(counter), str(go), str(i)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    _wait_for(*(Path(f"{go}.{i}") for i in (1, 2)))
    go.touch()  # both start requesting at once
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert len(counter.read_text().split()) == 1  # computed once
    results = [json.loads(out) for out, _ in outs]
    assert results[0] == results[1] and results[0]["asr_nan"] and results[0]["w"] == sum(range(1000))
    waiter = [err for _, err in outs if "waiting for" in err]
    assert len(waiter) == 1 and f"waiting for models/{config_key(CFG)}" in waiter[0]
    assert _scratch(root) == [] and len(Store(root).records("models")) == 1


@pytest.mark.parametrize("replace", [False, True], ids=["immutable", "replace"])
def test_concurrent_resaves_never_show_a_partial_entry(tmp_path, replace):
    """(b) two writers (a process and a thread) re-save one key while a reader loads it."""
    root, stop, ready = tmp_path / "store", tmp_path / "stop", tmp_path / "ready"
    store = Store(root)
    store.save("models", CFG, {"writer": "first", "i": 0, "asr": float("nan")}, {"w": torch.zeros(4096)})
    script = tmp_path / "resave.py"
    script.write_text(RESAVE)
    proc = subprocess.Popen([sys.executable, str(script), str(root), str(stop), str(ready), str(int(replace))],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errors: list[BaseException] = []

    def writer():
        i = 0
        try:
            while not stop.exists():
                i -= 1
                kw = {"replace": True} if replace else {}
                Store(root).save("models", CFG, {"writer": "thread", "i": i, "asr": float("nan")},
                                 {"w": torch.full((4096,), float(i))}, **kw)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    try:
        _wait_for(ready)
        thread = threading.Thread(target=writer)
        thread.start()
        seen, reads, deadline = set(), 0, time.monotonic() + 2.5
        while time.monotonic() < deadline:
            reader = Store(root)
            assert reader.has("models", CFG)
            m = reader.load_metrics("models", CFG)
            assert set(m) == {"writer", "i", "asr"} and math.isnan(m["asr"])
            w = reader.load_tensors("models", CFG)["w"]
            assert w.shape == (4096,) and bool((w == w[0]).all())
            recs = reader.records("models")
            assert len(recs) == 1 and recs[0]["config"] == CFG
            seen.add((m["writer"], m["i"]))
            reads += 1
    finally:
        stop.touch()
        out, err = proc.communicate(timeout=60)
        thread.join(timeout=60)
    assert proc.returncode == 0, err
    assert not errors, errors
    assert int(out) > 3 and reads > 3
    if replace:
        assert len(seen) > 1  # the swaps did happen while reading
    else:
        assert seen == {("first", 0)}  # immutable: the first complete entry is kept
    assert _scratch(root) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_are_cleaned(tmp_path):
    """(c) .tmp/.trash of a dead pid go; a live process's and a recent foreign host's stay."""
    store = Store(tmp_path)
    store.save("models", CFG, {"acc": 1.0})
    key, host, dead, kind_dir = config_key(CFG), socket.gethostname(), _dead_pid(), tmp_path / "models"
    host = "".join(c if c.isalnum() or c == "." else "_" for c in host)
    names = {"dead_tmp": f".tmp-{key}-{host}-{dead}-0001", "dead_trash": f".trash-{key}-{host}-{dead}-0002",
             "old_format": f".tmp-{key}-{dead}", "live": f".tmp-{key}-{host}-{os.getpid()}-0003",
             "foreign": f".tmp-{key}-some.other.host-{dead}-0004"}
    for n in names.values():
        (kind_dir / n).mkdir()
        (kind_dir / n / "config.json").write_text("{}")
    removed = {p.name for p in store.clean_stale()}
    assert removed == {names["dead_tmp"], names["dead_trash"], names["old_format"]}
    assert (kind_dir / names["live"]).exists() and (kind_dir / names["foreign"]).exists()
    assert store.has("models", CFG)

    # a writer killed between renaming the old entry aside and renaming its new one in
    cfg2 = {"x": 2}
    store.save("models", cfg2, {"acc": 0.7})
    aside = kind_dir / f".trash-{config_key(cfg2)}-{host}-{dead}-0005"
    os.rename(kind_dir / config_key(cfg2), aside)
    assert store.clean_stale("models") == [] and store.load_metrics("models", cfg2) == {"acc": 0.7}


def test_save_cleans_lazily_and_an_entry_missing_its_weights_is_not_trusted(tmp_path):
    """(c') the first save of a process cleans; has() needs every file the entry declares."""
    kind_dir = tmp_path / "models"
    stale = kind_dir / f".tmp-{config_key(CFG)}-{socket.gethostname().replace('-', '_')}-{_dead_pid()}-beef"
    stale.mkdir(parents=True)
    store = Store(tmp_path)
    store.save("models", CFG, {"acc": 1.0}, {"w": torch.ones(3)})
    assert not stale.exists()
    (store.path("models", CFG) / "weights.safetensors").unlink()  # e.g. a partial copy of the store
    assert not store.has("models", CFG) and store.records("models") == []
    store.save("models", CFG, {"acc": 1.0}, {"w": torch.ones(3)})  # an incomplete entry is replaced
    assert store.has("models", CFG) and torch.equal(store.load_tensors("models", CFG)["w"], torch.ones(3))


def test_non_finite_metrics_are_strict_json_nulls(tmp_path):
    """(d) NaN/inf are written as null (strict JSON) and come back as NaN/inf in Python."""
    store = Store(tmp_path)
    metrics = {"acc": 0.9, "asr": float("nan"), "top": float("inf"), "np": np.float32("nan"),
               "history": [{"loss": 1.0}, {"loss": -float("inf")}], "none": None, "t": torch.tensor([1.0, float("nan")])}
    store.save("models", CFG, metrics)

    def reject(token):
        raise ValueError(f"non-standard JSON token {token}")
    on_disk = json.loads((store.path("models", CFG) / "metrics.json").read_text(), parse_constant=reject)
    assert on_disk["asr"] is None and on_disk["top"] is None and on_disk["np"] is None
    assert on_disk["history"][1]["loss"] is None and on_disk["t"] == [1.0, None] and on_disk["acc"] == 0.9
    back = store.load_metrics("models", CFG)
    assert math.isnan(back["asr"]) and back["top"] == math.inf and back["history"][1]["loss"] == -math.inf
    assert math.isnan(back["np"]) and math.isnan(back["t"][1]) and back["none"] is None
    assert math.isnan(store.records("models")[0]["metrics"]["asr"])


def test_files_are_world_readable_whatever_the_umask(tmp_path):
    """(e) entries are 0644 files in a 0755 directory, even under umask 077."""
    old = os.umask(0o077)
    try:
        path = Store(tmp_path).save("models", CFG, {"acc": 1.0}, {"w": torch.ones(3)})
    finally:
        os.umask(old)
    files = sorted(p.name for p in path.iterdir())
    assert {"config.json", "metrics.json", "weights.safetensors"} <= set(files)
    assert {n: stat.S_IMODE((path / n).stat().st_mode) for n in files} == {n: 0o644 for n in files}
    assert stat.S_IMODE(path.stat().st_mode) == 0o755


def test_lock_is_reentrant_in_a_thread_and_exclusive_between_threads(tmp_path):
    store, events = Store(tmp_path), []

    def hold(name):
        with store.lock("models", CFG):
            events.append(f"{name}+")
            time.sleep(0.2)
            events.append(f"{name}-")

    with store.lock("models", CFG):
        with store.lock("models", CFG):  # nested: no self-deadlock
            t = threading.Thread(target=hold, args=("t",))
            t.start()
            time.sleep(0.2)
            assert events == []  # the other thread waits for us
    t.join(timeout=10)
    assert events == ["t+", "t-"]
    with store.lock("models", {"other": 1}, notice_after=0.05, timeout=5):
        pass  # another key is independent
    assert (tmp_path / "models" / ".locks" / f"{config_key(CFG)}.lock").exists()
    assert store.records("models") == []  # lock files are not entries


def test_entries_written_before_manifests_still_read(tmp_path):
    """Entries of the previous format (no manifest, NaN tokens) keep working."""
    store = Store(tmp_path)
    d = store.path("models", CFG)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(CFG))
    (d / "metrics.json").write_text('{"acc": 0.5, "asr": NaN}')
    assert store.has("models", CFG) and math.isnan(store.load_metrics("models", CFG)["asr"])
    assert store.save("models", CFG, {"acc": 0.1}) == d and store.load_metrics("models", CFG)["acc"] == 0.5


def test_replace_without_atomic_exchange_falls_back_to_rename_aside(tmp_path, monkeypatch):
    """Where renameat2(RENAME_EXCHANGE) is unavailable, replace renames the old entry aside."""
    import bdlib.store as store_mod

    monkeypatch.setattr(store_mod, "_exchange", lambda a, b: False)
    store = Store(tmp_path)
    store.save("models", CFG, {"v": 1}, {"w": torch.ones(2)})
    store.save("models", CFG, {"v": 2}, {"w": torch.zeros(2)}, replace=True)
    assert store.load_metrics("models", CFG) == {"v": 2} and torch.equal(store.load_tensors("models", CFG)["w"], torch.zeros(2))
    store.save("models", CFG, {"v": 3})
    assert store.load_metrics("models", CFG) == {"v": 2} and _scratch(tmp_path) == []
