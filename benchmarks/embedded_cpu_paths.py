"""Does the embedded set depend on the CPU? Its id under each of MKL's, torch's and numpy's CPU paths.

Why: the embedded set's id is a hash of its wavs, and different hosts gave the same code
different ids (README, *The embedded dataset*). This script synthesises a set in a fresh
process per setting, each holding one library to one instruction-set path through its
documented environment variable, and prints the id and how many wavs differ from the first
setting's (the host's own path). ``--resampling float32`` patches :func:`bdlib.audio.resample_np`
back to the float32 resampling used before stop 30, to show what the float64 one fixed.

    python benchmarks/embedded_cpu_paths.py [--size default|smoke] [--resampling float64 float32]

Each setting synthesises into a temporary folder, removed after; about 15 s a setting for the default set on
one core. The settings only reach what this CPU supports (a path above it falls back).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

#: (label, environment): the first is the host's own path, the baseline
SETTINGS = (
    ("host default", {}),
    ("MKL AVX2", {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}),
    ("MKL SSE4.2", {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}),
    ("MKL CBWR=COMPATIBLE", {"MKL_CBWR": "COMPATIBLE"}),
    ("torch ATen AVX2", {"ATEN_CPU_CAPABILITY": "avx2"}),
    ("torch ATen default", {"ATEN_CPU_CAPABILITY": "default"}),
    ("oneDNN AVX2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("numpy baseline SIMD only", {"NPY_DISABLE_CPU_FEATURES": "X86_V3,X86_V4,AVX512_ICL,AVX512_SPR"}),
    ("2 torch threads", {"BDLIB_PROBE_THREADS": "2"}),
)
SIZES = {"default": (160, 30, 60), "smoke": (32, 10, 16)}


def child(size: str, resampling: str) -> None:
    """Synthesise the set with the collection's own code into a temporary folder; print its wavs' sha256s."""
    import tempfile

    import numpy as np
    import torch

    from bdlib.data import synth

    torch.set_num_threads(int(os.environ.get("BDLIB_PROBE_THREADS", "1")))
    if resampling == "float32":
        import torchaudio.functional as AF

        def resample32(wav, orig_sr, new_sr):
            return AF.resample(torch.as_tensor(np.asarray(wav, dtype=np.float32)), orig_sr, new_sr).numpy()
        synth.resample_np = resample32  # render_clip, in this process (workers=1), looks it up here
    with tempfile.TemporaryDirectory() as tmp:
        manifest = synth.ensure_embedded_dataset(tmp, *SIZES[size], seed=0, progress=False, workers=1)
    print(json.dumps(manifest["sha256"].tolist()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="default")
    ap.add_argument("--resampling", nargs="+", choices=("float64", "float32"), default=["float64", "float32"])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.size, args.resampling[0])
    from bdlib.data.synth import content_hash
    import pandas as pd

    a, b, c = SIZES[args.size]
    print(f"embedded-{a}-{b}-{c}-t1-seed0, one fresh process per setting")
    for resampling in args.resampling:
        base = None
        print(f"\nresampling in {resampling}:")
        for label, env in SETTINGS:
            out = subprocess.run([sys.executable, __file__, "--child", "--size", args.size, "--resampling", resampling],
                                 env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout
            shas = json.loads(out.strip().splitlines()[-1])
            base = base or shas
            differ = sum(x != y for x, y in zip(shas, base))
            print(f"  {label:26s} id …-{content_hash(pd.DataFrame({'sha256': shas}))[:12]}  "
                  f"{differ:5d} of {len(shas)} wavs differ from the host default")


if __name__ == "__main__":
    main()
