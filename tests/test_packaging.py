"""The built wheel: one `stmod` namespace, nothing named `core` or `plugins` at the top."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "src"]


def test_wheel_has_only_the_stmod_namespace(tmp_path: Path) -> None:
    """Every package folder lands under stmod/; no top-level core/plugins/backbones/layouts."""
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        item = ROOT / name
        if item.is_dir():
            shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(item, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("stmod-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"stmod"}
    for module in (ROOT / "src").rglob("*.py"):
        rel = module.relative_to(ROOT / "src").as_posix()
        assert rel in names, f"src/{rel} is missing from the wheel (a folder without __init__.py?)"
    assert "stmod/py.typed" in names
    shipped = json.loads((ROOT / "src/stmod/backbones/shapes/model/manifest.json").read_text())["files"]
    for name in [*shipped, "manifest.json"]:  # the trained shapes model is package data
        assert f"stmod/backbones/shapes/model/{name}" in names, f"shapes model file {name} is missing from the wheel"
    for name in ("bigbuckbunny.mp4", "README.md"):  # the page's example clip and its licence note
        assert f"stmod/plugins/ui/examples/{name}" in names, f"ui example file {name} is missing from the wheel"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "stmod-run = stmod.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
