"""Offline speech synthesis with eSpeak NG through the ``espeakng-loader`` wheel (ctypes).

Why eSpeak: the collection must run with no network, so the default dataset is
synthesised locally. The wheel ships ``libespeak-ng.so`` and its voice data; we drive
the C API directly (synchronous output + a synth callback that collects int16 samples).

eSpeak keeps global state, so each process owns exactly one initialised engine
(:func:`engine`); parallel synthesis uses a process pool (see ``bdlib.data.synth``).
This module imports neither torch nor numpy-heavy code so pool workers start fast.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 0x02
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
# Variants whose output is noise-driven, so not reproducible across processes.
UNVOICED_VARIANTS = ("whisper", "whisperf")


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


class _Engine:
    def __init__(self):
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data_path = espeakng_loader.get_data_path()
        # espeak_Initialize wants the folder that *contains* espeak-ng-data
        parent = os.path.dirname(data_path).encode()
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        self.sample_rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, parent, 0)
        if self.sample_rate <= 0:
            raise EspeakError(f"espeak_Initialize failed (data path {data_path})")
        self._chunks: list[np.ndarray] = []

        def _collect(wav, nsamples, events):
            if nsamples > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(nsamples,)).copy())
            return 0  # 0 = continue synthesis

        self._cb = _CALLBACK_T(_collect)  # keep a reference: ctypes callbacks must outlive use
        self.lib.espeak_SetSynthCallback(self._cb)

    def synth(self, text: str, voice: VoiceSpec) -> np.ndarray:
        """Synthesise ``text``; returns int16 samples at :attr:`sample_rate` (22 050 Hz)."""
        if self.lib.espeak_SetVoiceByName(voice.voice_name.encode()) != EE_OK:
            raise EspeakError(f"eSpeak NG rejected voice {voice.voice_name!r}")
        for param, value in ((ESPEAK_RATE, voice.rate), (ESPEAK_PITCH, voice.pitch), (ESPEAK_RANGE, voice.pitch_range)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        self._chunks = []
        err = self.lib.espeak_Synth(buf, len(buf), 0, POS_CHARACTER, 0, ESPEAK_CHARS_AUTO, None, None)
        if err != EE_OK:
            raise EspeakError(f"espeak_Synth failed with code {err} for {text!r} / {voice.voice_name}")
        self.lib.espeak_Synchronize()
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks).astype(np.int16)


_ENGINE: _Engine | None = None


def engine() -> _Engine:
    """The process's single eSpeak engine (eSpeak keeps global state: one per process)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


def synthesize(text: str, voice: VoiceSpec) -> tuple[np.ndarray, int]:
    """Return (float32 waveform in [-1, 1], sample rate) for ``text`` spoken by ``voice``."""
    eng = engine()
    pcm = eng.synth(text, voice)
    return (pcm.astype(np.float32) / 32768.0), eng.sample_rate


def synth_rows(rows: list[dict]) -> list[tuple[np.ndarray, int]]:
    """Process-pool worker: synthesise dataset-plan rows (keys label, accent, variant, rate,
    pitch, pitch_range) with this process's engine. Lives here, away from torch, so that
    spawned workers start in a fraction of a second."""
    return [
        synthesize(r["label"], VoiceSpec(r["accent"], r["variant"], int(r["rate"]), int(r["pitch"]), int(r["pitch_range"])))
        for r in rows
    ]
