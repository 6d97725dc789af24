"""Offline speech synthesis with eSpeak NG through the ``espeakng-loader`` wheel (ctypes).

Why eSpeak: the collection must run with no network, so the default dataset is
synthesised locally. The wheel ships ``libespeak-ng.so`` and its voice data; we drive
the C API directly (synchronous output + a synth callback that collects int16 samples).

Why a fresh engine per clip (measured, see ``bdlib.data.synth``): eSpeak's output for a
clip depends on more than its text and voice. (1) Its noise generator (breath, frication,
the klatt voices) starts from a per-process seed and the klatt voices also draw from libc
``rand()``; (2) static state that ``espeak_Terminate`` does not reset (the pitch-flutter
phase, oscillator phase, echo and filter memories) carries over from every clip
synthesised before in the process. So with one long-lived engine, a clip's samples
depended on which clips its pool worker happened to synthesise first: 546 of the 672
(accent, variant) voices gave different sha256s across two runs in different orders.
Each clip is therefore synthesised by a freshly loaded library (``dlopen`` →
``espeak_Initialize`` → seed both generators from the plan → synthesise → ``dlclose``),
which makes every voice bit-identical across processes and orders (0/672 differ), at
about 6 ms per clip. If another component of the process keeps ``libespeak-ng`` loaded,
the library cannot be unloaded and clips are no longer guaranteed reproducible: a
warning says so (:data:`REPRODUCIBLE` turns False).

Parallel synthesis runs this module as a plain subprocess (``python -m
bdlib.data.espeak``, see :func:`synth_in_workers`), never as a multiprocessing pool:
spawned pool workers re-run the user's ``__main__`` script, which hangs a script that
lacks an ``if __name__ == "__main__"`` guard. This module imports neither torch nor
pandas, so workers start in a fraction of a second.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 0x02
ESPEAK_INITIALIZE_DONT_EXIT = 0x8000
POS_CHARACTER = 1
ESPEAK_CHARS_AUTO = 0
ESPEAK_RATE, ESPEAK_VOLUME, ESPEAK_PITCH, ESPEAK_RANGE = 1, 2, 3, 4
EE_OK = 0

# English accents that ``espeak_SetVoiceByName`` accepts (``en-gb`` does not: use ``en``).
ACCENTS = (
    "en",
    "en-us",
    "en-029",
    "en-GB-scotland",
    "en-GB-x-gbclan",
    "en-GB-x-gbcwmd",
    "en-GB-x-rp",
    "en-US-nyc",
)
# Voice variants that sound like a person (the robotic/demonic ones are left out).
VARIANTS = (
    "f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "Denis", "Diogo", "Gene", "Gene2",
    "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen",
    "Reed", "Tweaky", "adam", "anika", "announcer", "antonio", "aunty", "belinda",
    "benjamin", "boris", "caleb", "croak", "david", "ed", "edward", "edward2", "grandma",
    "grandpa", "gustave", "ian", "iven", "iven2", "iven3", "iven4", "john", "kaukovalta",
    "klatt", "klatt2", "klatt3", "klatt4", "linda", "marcelo", "max", "michel", "miguel",
    "mike2", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro",
    "shelby", "steph", "steph2", "steph3", "travis", "victor", "zac",
)
# Whispering variants: noise-driven, reproducible with the seeding below, but left out
# of the plan because they do not sound like keyword speech.
UNVOICED_VARIANTS = ("whisper", "whisperf")

# False once a clip could not be synthesised by a freshly loaded library (see module doc)
REPRODUCIBLE = True


class EspeakError(RuntimeError):
    pass


@dataclass(frozen=True)
class VoiceSpec:
    """One synthetic speaker: accent × variant × speaking rate (wpm) × pitch (0-99)."""

    accent: str
    variant: str
    rate: int
    pitch: int
    pitch_range: int = 50

    @property
    def voice_name(self) -> str:
        return f"{self.accent}+{self.variant}"


_CALLBACK_T = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_chunks: list[np.ndarray] = []


def _collect(wav, nsamples, events):
    if nsamples > 0 and wav:
        _chunks.append(np.ctypeslib.as_array(wav, shape=(nsamples,)).copy())
    return 0  # 0 = continue synthesis


_CALLBACK = _CALLBACK_T(_collect)  # module-level: ctypes callbacks must outlive every use


def _paths() -> tuple[str, bytes]:
    import espeakng_loader

    # espeak_Initialize wants the folder that *contains* espeak-ng-data
    return espeakng_loader.get_library_path(), os.path.dirname(espeakng_loader.get_data_path()).encode()


def _is_loaded(path: str) -> bool:
    """Whether ``path`` is mapped in this process (``dlopen`` with ``RTLD_NOLOAD``)."""
    if not hasattr(os, "RTLD_NOLOAD"):
        return False
    try:
        probe = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return False
    _dlclose(probe)
    return True


def _dlclose(lib: ctypes.CDLL) -> None:
    import _ctypes

    close = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)
    if close is not None:
        close(lib._handle)


def _load() -> ctypes.CDLL:
    path, _ = _paths()
    lib = ctypes.CDLL(path, mode=os.RTLD_LOCAL if hasattr(os, "RTLD_LOCAL") else 0)
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Info.restype = ctypes.c_char_p
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]
    return lib


def _libc_srand(seed: int) -> None:
    try:
        libc = ctypes.CDLL(None)
        libc.srand(ctypes.c_uint(seed & 0xFFFFFFFF))
    except (OSError, AttributeError):  # no libc symbol table here (Windows): klatt voices may vary
        pass


def _warn_not_reproducible(path: str) -> None:
    global REPRODUCIBLE
    if REPRODUCIBLE:
        REPRODUCIBLE = False
        warnings.warn(f"{path} stays loaded in this process (another package holds it), so eSpeak state "
                      "carries over between clips and the synthesised wavs may not be bit-reproducible",
                      RuntimeWarning, stacklevel=3)


def synth_pcm(text: str, voice: VoiceSpec, seed: int = 0) -> tuple[np.ndarray, int]:
    """Synthesise ``text`` with a freshly loaded eSpeak library; returns (int16 samples,
    sample rate). A pure function of (text, voice, seed) on a given eSpeak build."""
    path, data_parent = _paths()
    if _is_loaded(path):
        _warn_not_reproducible(path)
    lib = _load()
    try:
        sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, ESPEAK_INITIALIZE_DONT_EXIT)
        if sample_rate <= 0:
            raise EspeakError(f"espeak_Initialize failed (data folder {data_parent.decode()}/espeak-ng-data)")
        lib.espeak_SetSynthCallback(_CALLBACK)
        if lib.espeak_SetVoiceByName(voice.voice_name.encode()) != EE_OK:
            raise EspeakError(f"eSpeak NG rejected voice {voice.voice_name!r}")
        for param, value in ((ESPEAK_RATE, voice.rate), (ESPEAK_PITCH, voice.pitch), (ESPEAK_RANGE, voice.pitch_range)):
            lib.espeak_SetParameter(param, int(value), 0)
        seed = int(seed) % (2**31 - 1) + 1  # eSpeak's xorshift generator must not be seeded with 0
        lib.espeak_ng_SetRandSeed(seed)
        _libc_srand(seed)
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        _chunks.clear()
        err = lib.espeak_Synth(buf, len(buf), 0, POS_CHARACTER, 0, ESPEAK_CHARS_AUTO, None, None)
        if err != EE_OK:
            raise EspeakError(f"espeak_Synth failed with code {err} for {text!r} / {voice.voice_name}")
        lib.espeak_Synchronize()
        pcm = np.concatenate(_chunks).astype(np.int16) if _chunks else np.zeros(0, dtype=np.int16)
        _chunks.clear()
    finally:
        lib.espeak_Terminate()
        _dlclose(lib)
    return pcm, sample_rate


def espeak_version() -> str:
    """eSpeak NG's version string and the espeakng-loader wheel's version (for the dataset's record)."""
    from importlib.metadata import PackageNotFoundError, version

    lib = _load()
    try:
        info = lib.espeak_Info(None).decode()
    finally:
        _dlclose(lib)
    try:
        loader = version("espeakng-loader")
    except PackageNotFoundError:
        loader = "unknown"
    return f"eSpeak NG {info} (espeakng-loader {loader})"


def synthesize(text: str, voice: VoiceSpec, seed: int = 0) -> tuple[np.ndarray, int]:
    """Return (float32 waveform in [-1, 1], sample rate) for ``text`` spoken by ``voice``."""
    pcm, sr = synth_pcm(text, voice, seed)
    return (pcm.astype(np.float32) / 32768.0), sr


def synth_rows(rows: list[dict]) -> list[tuple[np.ndarray, int]]:
    """Synthesise dataset-plan rows (keys label, accent, variant, rate, pitch, pitch_range,
    noise_seed); returns (int16 samples, sample rate) per row."""
    return [
        synth_pcm(r["label"], VoiceSpec(r["accent"], r["variant"], int(r["rate"]), int(r["pitch"]), int(r["pitch_range"])),
                  seed=int(r.get("noise_seed", 0)))
        for r in rows
    ]


def synth_in_workers(chunks: list[list[dict]], workers: int):
    """Yield ``synth_rows(chunk)`` for each chunk, in order, computed by ``workers``
    subprocesses running this module (no multiprocessing: works from any script).

    Chunk ``i`` goes to worker ``i % workers``; a worker that dies raises
    :class:`EspeakError` with its stderr.
    """
    workers = max(1, min(workers, len(chunks)))
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[2])  # importable without an install
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    procs, logs = [], []
    try:
        for k in range(workers):
            log = tempfile.TemporaryFile()
            proc = subprocess.Popen([sys.executable, "-m", "bdlib.data.espeak"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=log, env=env)
            procs.append(proc)
            logs.append(log)
        for k, proc in enumerate(procs):
            try:
                pickle.dump(chunks[k::workers], proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                proc.stdin.close()
            except BrokenPipeError:  # the worker died at start: reported with its stderr below
                pass
        for i in range(len(chunks)):
            proc = procs[i % workers]
            try:
                yield pickle.load(proc.stdout)
            except (EOFError, pickle.UnpicklingError):
                proc.wait()
                log = logs[i % workers]
                log.seek(0)
                err = log.read().decode(errors="replace").strip()[-2000:]
                raise EspeakError(f"eSpeak worker (python -m bdlib.data.espeak) exited with code {proc.returncode}"
                                  f"{': ' + err if err else ''}") from None
        for proc in procs:
            proc.wait()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


def _serve() -> None:
    """Worker loop: read a pickled list of chunks from stdin, write one pickled
    ``synth_rows`` result per chunk to stdout (C-level prints are sent to stderr)."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    chunks = pickle.load(sys.stdin.buffer)
    for chunk in chunks:
        pickle.dump(synth_rows(chunk), out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()
    out.close()


if __name__ == "__main__":
    _serve()
