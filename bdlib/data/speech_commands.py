"""Google Speech Commands v1/v2 (Warden 2018), the GN-FT paper's dataset (SCD v1, 10 keywords).

Layout: ``<root>/<word>/<speaker>_nohash_<n>.wav`` plus the official
``validation_list.txt`` / ``testing_list.txt``, which are speaker-disjoint by
construction (a hash of the speaker id); ``_background_noise_/`` is not a word.

Nothing is downloaded unless asked (``download=True`` or
:func:`download_speech_commands`): the archives are 1.4 / 2.3 GB. The download is
resumable (a ``.part`` file continued with an HTTP Range request), verified against the
archive's known sha256 and extracted without letting any member escape the folder.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from ..filelocks import held
from .source import DataSource, as_name_tuple, scan_folder
from .synth import KEYWORDS

SPEECH_COMMANDS_URLS = {
    1: "https://storage.googleapis.com/download.tensorflow.org/data/speech_commands_v0.01.tar.gz",
    2: "https://storage.googleapis.com/download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
}
# the published archives' sha256 (as torchaudio's SPEECHCOMMANDS checks them)
SPEECH_COMMANDS_SHA256 = {
    1: "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d",
    2: "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
}
V2_ONLY_WORDS = ("backward", "follow", "forward", "learn", "visual")
NOISE_FOLDER = "_background_noise_"
CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A downloaded archive whose sha256 is not the published one; the message names it."""


def _how_to_get(root, version: int) -> str:
    return (f"Get Speech Commands v{version} with make_source('speech_commands', root={str(root)!r}, "
            f"version={version}, download=True), or python -c \"from bdlib.data.speech_commands import "
            f"download_speech_commands; download_speech_commands({str(root)!r}, {version})\", or download "
            f"{SPEECH_COMMANDS_URLS[version]} and extract it into that folder.")


@dataclass
class SpeechCommandsConfig:
    """``version`` (1 or 2) names the release in the id and picks the download URL;
    ``words`` are the classes (default the 10 keywords); ``url``/``checksum`` override the
    download's source and expected sha256 (a mirror, a test archive)."""

    version: int = 1
    words: tuple[str, ...] = KEYWORDS
    download: bool = False
    url: str | None = None
    checksum: str | None = None

    def __post_init__(self):
        if self.version not in SPEECH_COMMANDS_URLS:
            raise ValueError(f"Speech Commands version must be one of {list(SPEECH_COMMANDS_URLS)}, "
                             f"got {self.version!r}")
        self.words = as_name_tuple(self.words, "words")
        if not self.words:
            raise ValueError("words must name at least one word folder")


class SpeechCommandsSource(DataSource):
    name = "speech_commands"
    Config = SpeechCommandsConfig

    def how_to_get_data(self, root: Path | None) -> str:
        return _how_to_get(root or "/path/to/speech_commands", self.config.version)

    def resolve_root(self, root):
        if self.config.download and root is not None:
            return Path(root)  # fetched by manifest() if missing
        return super().resolve_root(root)

    def compute_id(self) -> str:
        return f"{self.name}-v{self.config.version}-{super().compute_id().rsplit('-', 1)[1]}"

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.words

    def word_folders(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))

    def build_manifest(self) -> pd.DataFrame:
        cfg, root = self.config, self.root
        if cfg.download and not (root.is_dir() and self.word_folders()):
            with held(download_lock(root), f"Speech Commands in {root}"):
                if not (root.is_dir() and self.word_folders()):  # the other process may have finished it
                    download_speech_commands(root, cfg.version, cfg.url, cfg.checksum, progress=self.progress)
        available = self.word_folders()
        if cfg.version == 1 and any(w in available for w in V2_ONLY_WORDS):
            v2 = ", ".join(w for w in V2_ONLY_WORDS if w in available)
            raise ValueError(f"{root} has v2-only word folders ({v2}) but version=1; pass version=2 so the id and "
                             "description say which release this is")
        missing = [w for w in cfg.words if w not in available]
        if missing:
            hint = "" if available else f". {self.how_to_get_data(root)}"
            raise FileNotFoundError(f"Speech Commands folder {root} has no sub-folder {missing[0]!r}"
                                    f"{f' (nor {missing[1:]})' if missing[1:] else ''}; available word folders: "
                                    f"{', '.join(available) or 'none'}{hint}")
        val, test = _read_list(root / "validation_list.txt"), _read_list(root / "testing_list.txt")
        rows = []
        for word in cfg.words:
            files, skipped = scan_folder(root / word, root)
            self.skipped += skipped
            for f in files:
                rel = f"{word}/{f.name}"
                if "_nohash_" not in f.name:
                    self.skipped.append((rel, "name lacks '_nohash_' (speaker unknown)"))
                    continue
                split = "test" if rel in test else "val" if rel in val else "train"
                rows.append(dict(path=rel, label=word, speaker=f.name.split("_nohash_")[0], split=split))
        if not rows:
            raise FileNotFoundError(f"no audio files found under {root} for words {list(cfg.words)}")
        return pd.DataFrame(rows)

    def describe(self) -> dict:
        return {**super().describe(), "version": self.config.version}


def _read_list(path: Path) -> set[str]:
    """An official split list as a set of posix paths (missing file: empty set)."""
    if not path.exists():
        return set()
    lines = (line.strip() for line in path.read_text().split())
    return {PurePosixPath(line.replace("\\", "/")).as_posix() for line in lines if line}


# --- download ------------------------------------------------------------------------------
def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _copy(src, dst, progress: bool, total: int | None, done: int) -> int:
    n = 0
    for block in iter(lambda: src.read(CHUNK), b""):
        dst.write(block)
        n += len(block)
        if progress and total:
            print(f"\r  {(done + n) / total:6.1%} of {total / 1e6:.0f} MB", end="", file=sys.stderr)
    if progress and total:
        print(file=sys.stderr)
    return n


def fetch_resumable(url: str, part: Path, progress: bool = False) -> int:
    """Append the rest of ``url`` to ``part`` (start it when absent); returns the bytes fetched.

    An existing ``part`` is continued: an HTTP Range request, or a seek for ``file://``
    URLs. A server that ignores the range (200 instead of 206) restarts the file.
    """
    offset = part.stat().st_size if part.exists() else 0
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        src = Path(urllib.request.url2pathname(parsed.path))
        total = src.stat().st_size
        if offset > total:
            offset = 0
        with open(src, "rb") as fin, open(part, "ab" if offset else "wb") as fout:
            fin.seek(offset)
            return _copy(fin, fout, progress, total, offset)
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            if offset and resp.status != 206:
                offset = 0
            length = resp.headers.get("Content-Length")
            total = offset + int(length) if length else None
            with open(part, "ab" if offset else "wb") as fout:
                return _copy(resp, fout, progress, total, offset)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to fetch: the part is complete
            return 0
        raise


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive into ``dest``, refusing any member (or link) that would land
    outside it, absolute paths, and device files; names the archive and the member."""
    dest_r = dest.resolve()

    def inside(p: Path) -> bool:
        return p.resolve() == dest_r or dest_r in p.resolve().parents

    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            bad = (m.name.startswith("/") or not inside(dest / m.name)
                   or (m.issym() and not inside((dest / m.name).parent / m.linkname))
                   or (m.islnk() and not inside(dest / m.linkname)) or m.isdev())
            if bad:
                raise ValueError(f"archive {archive.name}: member {m.name!r} would be written outside {dest} "
                                 "(or is a device file); refusing to extract it")
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **kwargs)


def download_lock(dest: Path) -> Path:
    """The lock file that keeps two processes from downloading into ``dest`` at once."""
    return dest.parent / ".locks" / f"{dest.name}.download.lock"


def download_speech_commands(dest: str | os.PathLike, version: int = 2, url: str | None = None,
                             checksum: str | None = None, *, progress: bool = True, keep_archive: bool = False) -> Path:
    """Download, verify and extract Speech Commands into ``dest``; returns ``dest``.

    Resumable: the archive streams to ``dest/<file>.part``, which a later call continues.
    The sha256 is checked against the published value (``checksum`` overrides it; a
    mirror ``url`` is checked against the release's value); a mismatch deletes the part
    and raises :class:`ChecksumError` naming the file. The archive is removed after
    extraction unless ``keep_archive``. Two processes downloading into one ``dest`` take
    turns (an OS lock beside it), so they never append to the same part file.
    """
    if version not in SPEECH_COMMANDS_URLS:
        raise ValueError(f"Speech Commands version must be one of {list(SPEECH_COMMANDS_URLS)}, got {version!r}")
    dest = Path(dest)
    with held(download_lock(dest), f"Speech Commands in {dest}"):
        dest.mkdir(parents=True, exist_ok=True)
        url = url or SPEECH_COMMANDS_URLS[version]
        expected = checksum or SPEECH_COMMANDS_SHA256[version]
        filename = PurePosixPath(urllib.parse.urlparse(url).path).name or f"speech_commands_v0.0{version}.tar.gz"
        archive, part = dest / filename, dest / f"{filename}.part"
        if not archive.exists():
            if progress:
                print(f"downloading {url} -> {part}", file=sys.stderr)
            try:
                fetch_resumable(url, part, progress)
            except (urllib.error.URLError, OSError) as exc:
                raise ConnectionError(f"could not download {url}: {exc}. The partial download is kept at {part}; "
                                      "run again to resume, or download the archive by hand and extract it into "
                                      f"{dest}") from exc
            got = sha256_of(part)
            if got != expected:
                part.unlink()
                raise ChecksumError(f"downloaded file {part.name} from {url} has sha256 {got}, expected {expected}; "
                                    "deleted it (run again to re-download)")
            os.replace(part, archive)
        safe_extract(archive, dest)
        if not keep_archive:
            archive.unlink()
        return dest
