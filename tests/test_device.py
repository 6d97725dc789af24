"""One device setting, the same code on the CPU or CUDA (bdlib/device.py).

* :func:`resolve_device` reads ``$BDLIB_DEVICE``, names bad specs and the valid choices, and
  never falls back from a missing GPU to the CPU.
* The smoke path — a BadNets victim, its evaluation, FT, GN-FT (approximate and exact), ANP
  (its own masks and noise) and I-BAU (its own perturbation) — with ``device="cpu"`` given
  explicitly gives bit-identical weights and metrics to the run without it, under the same
  store keys.
* Every batch that reaches a model went through ``.to(<the model's device>)``: on a CPU-only
  machine a missing move is invisible, so the check records the moves instead.
* With CUDA, the same path on the GPU agrees with the CPU within the tolerances stated below
  (a tensor a defense creates on the wrong device fails there loudly: PyTorch refuses to mix
  devices in one operation).
"""
import json
import shutil

import pytest
import torch

from bdlib import device as devmod
from bdlib.device import check_spec, model_device, resolve_device
from bdlib.pipeline import load_experiment

# --- resolve_device -------------------------------------------------------------------------


def test_auto_and_none_follow_cuda_availability_and_the_environment(monkeypatch):
    monkeypatch.delenv("BDLIB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu") and resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 1)  # auto prefers CUDA when present
    assert resolve_device("cuda") == torch.device("cuda", 1)
    monkeypatch.setenv("BDLIB_DEVICE", "cpu")
    assert resolve_device(None) == torch.device("cpu")  # the environment is read when no spec is given
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # ... and an explicit spec wins over it
    with pytest.raises(ValueError, match="2 CUDA device"):
        resolve_device("cuda:2")


def test_a_bad_spec_names_itself_and_the_valid_choices(monkeypatch):
    for bad in ("gpu", "cuda0", "meta", "xla"):
        with pytest.raises(ValueError, match=rf"{bad}.*valid: auto, cpu, cuda, cuda:N, mps"):
            resolve_device(bad)
    monkeypatch.setenv("BDLIB_DEVICE", "gpu")
    with pytest.raises(ValueError, match=r"'gpu' \(from \$BDLIB_DEVICE\)"):
        resolve_device(None)
    with pytest.raises(TypeError, match="int"):
        resolve_device(0)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        check_spec("gpu")


def test_cuda_without_cuda_raises_instead_of_falling_back(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for spec in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device(spec)
    monkeypatch.setenv("BDLIB_DEVICE", "cuda")
    with pytest.raises(ValueError, match=r"\$BDLIB_DEVICE.*CUDA is not available"):
        resolve_device(None)
    assert check_spec("cuda:1") == "cuda:1"  # a study built here may run on GPU workers: form only


def test_model_device_is_where_the_parameters_are():
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")
    assert model_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")


def test_the_cli_refuses_a_bad_device(capsys):
    from bdlib.__main__ import main

    assert main(["study", "--profile", "smoke", "--device", "gpu"]) == 2
    assert "unknown device 'gpu'" in capsys.readouterr().err


# --- the smoke path -------------------------------------------------------------------------

#: a 3/2/2-speaker embedded set (30 train, 20 val, 20 test clips); the defender holds 8 clean
#: clips, one batch, for one epoch
DATA = {"speakers_train": 3, "speakers_val": 2, "speakers_test": 2, "seed": 11}
BUDGET = {"train_epochs": 2, "train_batch_size": 16, "defense_epochs": 1, "defense_batch_size": 8,
          "clean_fraction": 0.27}
DEFENSES = (("ft", {}), ("gnft-approx", {"mode": "approx"}), ("gnft-exact", {"mode": "exact"}),
            ("anp", {"batch_size": 8}), ("ibau", {"batch_size": 8, "K": 2, "pert_steps": 2}))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("device_data")


def experiment(data_dir, root, **device):
    return load_experiment("smoke", progress=False, dataset_options=DATA, dataset_root=data_dir, root=root,
                           **device, **BUDGET)


def smoke_path(exp) -> dict:
    """Victim metrics and, per defense, its metrics after."""
    _, rec = exp.backdoored_model("badnets")
    out = {"victim": {k: rec["metrics"][k] for k in ("acc", "asr", "ra")}}
    for label, knobs in DEFENSES:
        name = label.split("-")[0]
        out[label] = exp.defend(name, "badnets", **knobs)["metrics"]["after"]
    return out


def stored(root) -> dict:
    """kind/key -> (SHA-256 of the weights, recorded device) for every entry of a store."""
    out = {}
    for m in sorted((root / "store").glob("*/*/manifest.json")):
        if not m.parent.name.startswith("."):
            metrics = json.loads((m.parent / "metrics.json").read_text())
            out[f"{m.parent.parent.name}/{m.parent.name}"] = (
                json.loads(m.read_text())["sha256"].get("weights.safetensors"), metrics.get("device"))
    return out


@pytest.fixture(scope="module")
def cpu_run(data_dir, tmp_path_factory):
    """The smoke path without a device argument (this machine's default: the CPU without CUDA)."""
    root = tmp_path_factory.mktemp("default_device")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("BDLIB_DEVICE", raising=False)
        if torch.cuda.is_available():
            exp = experiment(data_dir, root, device="cpu")  # the reference is the CPU run
        else:
            exp = experiment(data_dir, root)
        return root, smoke_path(exp)


def test_an_explicit_cpu_device_is_bit_identical_and_keyed_the_same(cpu_run, data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("BDLIB_DEVICE", raising=False)
    ref_root, ref = cpu_run
    exp = experiment(data_dir, tmp_path, device="cpu")
    assert exp.device == torch.device("cpu")
    got = smoke_path(exp)
    assert got == ref  # every metric, exactly
    entries = stored(tmp_path)
    assert entries == stored(ref_root)  # same keys (the device is no part of them), same weights bit for bit
    assert {d for _, d in entries.values()} == {"cpu"}  # ... and the device is recorded in the provenance
    assert len([k for k in entries if k.startswith("defenses/")]) == len(DEFENSES)
    # the device does not enter a key: the configs of an experiment on another device are the same
    exp.device = torch.device("meta")
    assert exp.attack_config("badnets") == experiment(data_dir, tmp_path, device="cpu").attack_config("badnets")
    # the tables show the device next to the thread count
    assert set(exp.results_table().device) == {"cpu"}


@pytest.fixture
def moves_checked(monkeypatch):
    """Record every ``Tensor.to`` result's target; a forward pre-hook on the models under test
    asserts that their input was moved to their device by such a call. On the CPU a move is a
    no-op, so without the record a forgotten ``.to(device)`` could not be seen here."""
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        out = real_to(self, *args, **kwargs)
        out._bdlib_moved_to = out.device
        return out

    monkeypatch.setattr(torch.Tensor, "to", to)
    seen = []

    def check(model):
        def hook(module, inputs):
            x = inputs[0]
            assert getattr(x, "_bdlib_moved_to", None) == model_device(module), \
                f"a batch reached {type(module).__name__} without .to(model_device(model))"
            seen.append(x.device)
        return model.register_forward_pre_hook(hook)

    return check, seen


def test_every_batch_is_moved_to_the_models_device(moves_checked, cpu_run, data_dir):
    """Training, FT, GN-FT (both modes), ANP and evaluation; the check itself is shown to
    fire on a batch that skipped the move."""
    from bdlib.defenses import CleanData, make_defense
    from bdlib.metrics import evaluate
    from bdlib.models import build_model
    from bdlib.training import train_model

    check, seen = moves_checked
    exp = experiment(data_dir, cpu_run[0], device="cpu")
    feats, labels = exp.features("train")[:16], torch.as_tensor(exp.split("train").labels[:16])
    net = build_model("smallcnn", exp.input_shape, len(exp.class_names), seed=0)
    handle = check(net)
    train_model(net, feats, labels, epochs=1, batch_size=8, lr=1e-3, seed=0, progress=False)
    for label, knobs in DEFENSES[:-1]:  # I-BAU feeds x + δ, a sum, not a moved batch
        make_defense(label.split("-")[0], epochs=1, **{"batch_size": 8, **knobs}).defend(
            net, CleanData(feats[:8], labels[:8]), progress=False)
    evaluate(net, feats, labels.numpy(), feats, labels.numpy(), target=2)
    assert len(seen) >= 12 and set(seen) == {torch.device("cpu")}  # 2 train + 4 defenses (1+2+1+3) + 3 eval
    with pytest.raises(AssertionError, match="without .to"):
        net(feats[:2])  # not moved: caught
    handle.remove()


# --- CUDA -----------------------------------------------------------------------------------

#: CPU vs CUDA, the same victim weights evaluated with TF32 off: logits agree up to float32
#: summation order (TF32, cuDNN's default for convolutions, would round inputs to 10 bits)
LOGIT_RTOL, LOGIT_ATOL = 1e-3, 1e-3
#: CPU vs CUDA fine-tuning from the same victim: dropout draws from the CUDA generator and the
#: kernels sum in another order, so the weights differ beyond rounding; on 20 test clips a
#: metric may move by up to 3 clips
METRIC_TOL = 0.15


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_smoke_path_on_cuda_agrees_with_the_cpu(cpu_run, data_dir, tmp_path):
    ref_root, ref = cpu_run
    # the CPU's victim, from the shared store, evaluated on the GPU: the same predictions
    shutil.copytree(ref_root / "store", tmp_path / "store")
    shutil.rmtree(tmp_path / "store" / "defenses")
    gpu = experiment(data_dir, tmp_path, device="cuda")
    cpu = experiment(data_dir, ref_root, device="cpu")
    net_gpu, net_cpu = gpu.backdoored_model("badnets")[0], cpu.backdoored_model("badnets")[0]
    assert model_device(net_gpu).type == "cuda" and model_device(net_cpu).type == "cpu"
    x = cpu.features("test")
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            torch.testing.assert_close(net_gpu.eval()(x.to(gpu.device)).cpu(), net_cpu.eval()(x), rtol=LOGIT_RTOL,
                                       atol=LOGIT_ATOL)
        # evaluated on the GPU: the same metrics, up to a clip on a near-tie
        for metric, value in gpu.evaluate(net_gpu, "badnets").items():
            assert abs(value - ref["victim"][metric]) <= 0.06, (metric, value, ref["victim"])
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    got = smoke_path(gpu)
    assert got["victim"] == ref["victim"]  # loaded, not retrained: the victim's stored metrics
    for label, _ in DEFENSES:
        for metric in ("acc", "asr", "ra"):
            assert abs(got[label][metric] - ref[label][metric]) <= METRIC_TOL, (label, metric, got[label], ref[label])
    devices = {d for k, (_, d) in stored(tmp_path).items() if k.startswith("defenses/")}
    assert devices == {str(gpu.device)}
    # the whole path on the GPU, victim training included, in a fresh store
    fresh = smoke_path(experiment(data_dir, tmp_path / "fresh", device="cuda"))
    assert set(fresh) == set(ref)
    # another victim (other numerics and dropout stream), the same recipe: it is planted and learns as the CPU's
    # did; the defenses start from it, so their metrics after are not compared (only where they ran, below)
    for metric in ("acc", "asr"):
        assert abs(fresh["victim"][metric] - ref["victim"][metric]) <= METRIC_TOL, (metric, fresh["victim"], ref)
    assert {d for k, (_, d) in stored(tmp_path / "fresh").items() if k.split("/")[0] in ("models", "defenses")} == {
        str(gpu.device)}


def test_rng_state_replays_the_dropout_mask_on_the_cpu():
    state = devmod.rng_state(torch.device("cpu"))
    a = torch.nn.functional.dropout(torch.ones(64), 0.5)
    devmod.set_rng_state(state, torch.device("cpu"))
    assert torch.equal(torch.nn.functional.dropout(torch.ones(64), 0.5), a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rng_state_replays_the_dropout_mask_on_cuda():
    dev = resolve_device("cuda")
    state = devmod.rng_state(dev)
    a = torch.nn.functional.dropout(torch.ones(4096, device=dev), 0.5)
    devmod.set_rng_state(state, dev)
    assert torch.equal(torch.nn.functional.dropout(torch.ones(4096, device=dev), 0.5), a)
