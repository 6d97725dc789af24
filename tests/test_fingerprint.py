"""Code fingerprints follow the source: an edit changes the edited module's fingerprint only."""
import importlib
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import bdlib
from bdlib.attacks import badnets, blended
from bdlib.fingerprint import code_fingerprint, module_fingerprint

SRC = Path(bdlib.__file__).parent


@pytest.fixture
def copied_attacks(tmp_path):
    """A throw-away package holding copies of badnets.py and blended.py (and what they import)."""
    name = f"fpcopy_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / name
    (pkg / "attacks").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "attacks" / "__init__.py").write_text("")
    for rel in ("registry.py", "audio.py", "attacks/base.py", "attacks/badnets.py", "attacks/blended.py"):
        shutil.copyfile(SRC / rel, pkg / rel)
    sys.path.insert(0, str(tmp_path))
    try:
        yield name, pkg
    finally:
        sys.path.remove(str(tmp_path))
        for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[mod]


def test_edit_changes_only_the_edited_modules_fingerprint(copied_attacks):
    name, pkg = copied_attacks
    bn = importlib.import_module(f"{name}.attacks.badnets")
    bl = importlib.import_module(f"{name}.attacks.blended")
    # location-independent: a copy elsewhere fingerprints like the original
    assert module_fingerprint(bn) == module_fingerprint(badnets) == code_fingerprint(badnets.BadNets)
    assert module_fingerprint(bl) == module_fingerprint(blended)
    assert module_fingerprint(bn) != module_fingerprint(bl)
    before = {"bn": code_fingerprint(bn.BadNets), "bl": code_fingerprint(bl.Blended),
              "both": code_fingerprint(bn.BadNets, bl.Blended)}

    path = pkg / "attacks" / "badnets.py"
    text = path.read_text()
    assert "value: float = -200.0" in text
    path.write_text(text.replace("value: float = -200.0", "value: float = -201.0"))  # same length
    bn = importlib.reload(bn)
    assert bn.BadNetsConfig().value == -201.0  # the edited code is what got imported

    assert code_fingerprint(bn.BadNets) != before["bn"]
    assert code_fingerprint(bn.BadNetsBurst) == code_fingerprint(bn.BadNets)  # same module file
    assert code_fingerprint(bl.Blended) == before["bl"]
    assert code_fingerprint(bn.BadNets, bl.Blended) != before["both"]
    assert module_fingerprint(bl) == module_fingerprint(blended)


def test_line_endings_do_not_count_other_bytes_do(tmp_path):
    text = (SRC / "attacks" / "blended.py").read_text()
    lf, crlf, ws = tmp_path / "lf.py", tmp_path / "crlf.py", tmp_path / "ws.py"
    lf.write_bytes(text.encode())
    crlf.write_bytes(text.replace("\n", "\r\n").encode())
    ws.write_bytes(text.replace("\n", " \n", 1).encode())  # one trailing space
    assert module_fingerprint(lf) == module_fingerprint(crlf) == module_fingerprint(blended)
    assert module_fingerprint(ws) != module_fingerprint(lf)


def test_fingerprint_is_order_free_and_stable_across_processes():
    fp = code_fingerprint(badnets.BadNets, blended.Blended)
    assert fp == code_fingerprint(blended, badnets, badnets.BadNetsBurst) and len(fp) == 16
    child = subprocess.run(
        [sys.executable, "-c", "from bdlib.fingerprint import code_fingerprint as c; import sys;"
         f"print(c({str(SRC / 'attacks' / 'badnets.py')!r}, {str(SRC / 'attacks' / 'blended.py')!r}))"],
        capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=SRC.parent)
    assert child.stdout.strip() == fp


def test_objects_without_source_are_rejected():
    with pytest.raises(TypeError, match="no Python source"):
        code_fingerprint(len)
    with pytest.raises(FileNotFoundError):
        code_fingerprint("/no/such/file.py")
