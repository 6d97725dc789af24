"""Store keys carry the code that produced them (bdlib/keys.py): an edited attack gets new
victim keys, the other attacks keep theirs."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import bdlib

PROBE = """
import json
from bdlib import keys
base = {"dataset": "d", "features": {}, "seed": 0}
out = {a: keys.victim_key(base, "smallcnn", a, {}, 0.1, 2)["code"] for a in ("badnets", "blended", None)}
out["fit"] = keys.attack_fit_key(base, "daba", {}, 0.1, 2, 10)["code"]
out["ft"] = keys.defense_key({}, "ft", {}, 0.05, 0)["code"]
out["gnft"] = keys.defense_key({}, "gnft", {}, 0.05, 0)["code"]
print(json.dumps(out))
"""


def _keys(package_parent: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"},
                          cwd=package_parent)
    return json.loads(proc.stdout)


def test_editing_an_attack_changes_its_victims_keys_only(tmp_path):
    src = Path(bdlib.__file__).parent
    shutil.copytree(src, tmp_path / "bdlib", ignore=shutil.ignore_patterns("__pycache__"))
    before = _keys(tmp_path)
    assert before == _keys(src.parent)  # a copy elsewhere: same keys (no paths in the fingerprint)
    badnets = tmp_path / "bdlib" / "attacks" / "badnets.py"
    badnets.write_text(badnets.read_text() + "\n# an edit\n")
    after = _keys(tmp_path)
    assert after["badnets"] != before["badnets"]
    for unchanged in ("blended", "null", "fit", "ft", "gnft"):  # null: the clean model
        assert after[unchanged] == before[unchanged], unchanged
    # a shared module a defense imports (finetune.py) changes every fine-tuning defense, not the attacks
    finetune = tmp_path / "bdlib" / "defenses" / "finetune.py"
    finetune.write_text(finetune.read_text() + "\n# an edit\n")
    edited = _keys(tmp_path)
    assert edited["ft"] != after["ft"] and edited["gnft"] != after["gnft"]
    assert edited["badnets"] == after["badnets"] and edited["blended"] == after["blended"]
