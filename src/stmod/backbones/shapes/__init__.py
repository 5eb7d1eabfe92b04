"""The ``shapes`` backbone: a small SD-1.5-layout model trained here on the shapes world.

Its weights ship with stmod (``model/``: a diffusers folder, safetensors only, with a ``manifest.json``
of checksums and the command that trained it, see :mod:`stmod.backbones.shapes.train`). It loads
through the ``sd15`` code path (``from_pretrained`` of that folder). Words mean something to it —
eight colours, four shapes, dots and stripes, four backgrounds (:mod:`stmod.backbones.shapes.world`) —
so an edit's result can be read back and measured (:mod:`stmod.backbones.shapes.metrics`). It is a
toy world at 128×128 pixels, not SD 1.5 quality.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from attrs import frozen

from stmod.backbones.sd15 import SD15Options, StableDiffusionBackbone
from stmod.core.errors import CheckpointError
from stmod.core.types import EditSpec

__all__ = ["ShapesOptions", "ShapesBackbone", "SHIPPED_MODEL", "verify_model"]

#: The model folder shipped inside the package.
SHIPPED_MODEL = Path(__file__).resolve().parent / "model"


def verify_model(folder: Path) -> dict:
    """Check every file of a shapes model folder against its ``manifest.json``; returns the manifest.

    :raises CheckpointError: naming the first missing or altered file.
    """
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(str(folder), "shapes model folder has no manifest.json (train one with "
                                           "python -m stmod.backbones.shapes.train)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(str(path), "shapes model file is missing; reinstall stmod or retrain")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise CheckpointError(str(path), "shapes model file does not match its checksum in manifest.json; "
                                             "reinstall stmod or retrain")
    return manifest


@frozen(kw_only=True)
class ShapesOptions:
    """Options of the ``shapes`` backbone."""

    #: A shapes model folder (e.g. one you trained); default: the one shipped with stmod.
    folder: str | None = None
    #: ``cpu`` by default: the model is small enough that a GPU brings little.
    device: str = "cpu"


class ShapesBackbone(StableDiffusionBackbone):
    """``sd15`` loading the shapes model; it has no ControlNet."""

    def __init__(self, options: ShapesOptions) -> None:
        self.folder = Path(options.folder).expanduser() if options.folder else SHIPPED_MODEL
        super().__init__(SD15Options(model=str(self.folder), device=options.device))

    def controlnet_location(self, annotator: str, model: str | None) -> str:
        raise CheckpointError(annotator, "the shapes model has no ControlNet; remove the job's control entries")

    def check(self, spec: EditSpec) -> None:
        # a relative folder is the job's, as sd15's check and loading read it (not the shell's)
        verify_model(self.folder if self.folder.is_absolute() else spec.base_dir / self.folder)
        super().check(spec)
