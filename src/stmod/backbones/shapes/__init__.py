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
import re
from pathlib import Path

from attrs import frozen

from stmod.backbones.sd15 import SD15Options, StableDiffusionBackbone
from stmod.core.errors import CheckpointError, PromptError
from stmod.core.types import EditSpec

__all__ = ["ShapesOptions", "ShapesBackbone", "SHIPPED_MODEL", "CONTROLNET_FOLDERS", "verify_model", "unknown_words"]

#: Annotator → the ControlNet's subfolder in a shapes model folder (the training command writes it).
CONTROLNET_FOLDERS = {"canny": "controlnet-canny"}

#: The model folder shipped inside the package.
SHIPPED_MODEL = Path(__file__).resolve().parent / "model"


def verify_model(folder: Path, *, what: str = "shapes model", trainer: str = "stmod.backbones.shapes.train") -> dict:
    """Check every file of a shapes model folder against its ``manifest.json``; returns the manifest.
    ``what`` and ``trainer`` name the model and its training module in the errors.

    :raises CheckpointError: naming the first missing or altered file.
    """
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(str(folder), f"{what} folder has no manifest.json (train one with "
                                           f"python -m {trainer})")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(str(path), f"{what} file is missing; reinstall stmod or retrain")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise CheckpointError(str(path), f"{what} file does not match its checksum in manifest.json; "
                                             "reinstall stmod or retrain")
    return manifest


@frozen(kw_only=True)
class ShapesOptions:
    """Options of the ``shapes`` backbone."""

    #: A shapes model folder (e.g. one you trained); default: the one shipped with stmod.
    folder: str | None = None
    #: ``cpu`` by default: the model is small enough that a GPU brings little.
    device: str = "cpu"


def unknown_words(prompt: str) -> list[str]:
    """The words (and punctuation marks) of ``prompt`` outside the shapes world's vocabulary
    (:data:`stmod.backbones.shapes.world.WORDS`), in order, once each: the model was trained on those words
    alone, and its tokenizer splits any other into pieces it never learned ("van" → "v", "an")."""
    from stmod.backbones.shapes.world import WORDS

    return list(dict.fromkeys(w for w in re.findall(r"[a-z]+|\S", prompt.lower()) if w not in WORDS))


class ShapesBackbone(StableDiffusionBackbone):
    """``sd15`` loading the shapes model, with the ControlNets its folder holds (``controlnet-canny``)."""

    def __init__(self, options: ShapesOptions) -> None:
        self.folder = Path(options.folder).expanduser() if options.folder else SHIPPED_MODEL
        super().__init__(SD15Options(model=str(self.folder), device=options.device))

    def controlnet_location(self, annotator: str, model: str | None) -> str:
        """A control entry's ``model``, or the ControlNet for its annotator inside the model folder."""
        if model:
            return model
        if annotator not in CONTROLNET_FOLDERS:
            raise CheckpointError(annotator, f"the shapes model has a ControlNet for {', '.join(CONTROLNET_FOLDERS)} "
                                             f"only; use annotator: canny, or remove the control entry")
        return str(self.folder / CONTROLNET_FOLDERS[annotator])

    def check(self, spec: EditSpec) -> None:
        # a relative folder is the job's, as sd15's check and loading read it (not the shell's)
        folder = self.folder if self.folder.is_absolute() else spec.base_dir / self.folder
        verify_model(folder)
        for control in spec.control:
            if not control.model and not (folder / CONTROLNET_FOLDERS.get(control.annotator.name, "-")).is_dir():
                raise CheckpointError(str(folder / CONTROLNET_FOLDERS.get(control.annotator.name, "")),
                                      "this shapes model folder has no ControlNet for the canny annotator; retrain "
                                      "it with python -m stmod.backbones.shapes.train (its controlnet stage) or "
                                      "remove the job's control entries")
        super().check(spec)
        self._check_words(spec)

    def _check_words(self, spec: EditSpec) -> None:
        from stmod.backbones.shapes.world import WORDS

        prompts = [("prompt", spec.prompt), ("source_prompt", spec.source_prompt),
                   ("negative_prompt", spec.negative_prompt)]
        prompts += [(f"regions.{r.name}", r.prompt) for r in spec.regions]
        for where, prompt in prompts:
            unknown = unknown_words(prompt)
            if unknown:
                raise PromptError(f"{where}: the shapes model does not know {unknown[0]!r}; it edits only its toy "
                                  f"world and knows these words: {' '.join(WORDS)} (for other words, use real "
                                  f"SD 1.5 weights: backbone sd15)", prompt=prompt)
