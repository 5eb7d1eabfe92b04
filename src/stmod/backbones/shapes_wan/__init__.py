"""The ``shapes-wan`` backbone: a tiny Wan 2.1-layout model trained here on the shapes world.

Its weights ship with stmod (``model/``: a diffusers folder — ``transformer/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``, safetensors only — with a ``manifest.json`` of checksums and the command that
trained it, :mod:`stmod.backbones.shapes_wan.train`). It loads through the ``wan`` code path
(``from_pretrained`` of that folder) and edits as ``wan`` does (flow matching, 1 + 4k frames, no
ControlNets or extensions); it knows the shapes world's words only (:data:`stmod.backbones.shapes.world.WORDS`),
so its edits can be measured (``bench/quality.py --backbone shapes-wan``). A toy at 128×128 pixels.
"""

from __future__ import annotations

from pathlib import Path

from attrs import frozen

from stmod.backbones.shapes import unknown_words, verify_model
from stmod.backbones.wan import WanBackbone, WanOptions
from stmod.core.errors import PromptError
from stmod.core.types import EditSpec

__all__ = ["ShapesWanOptions", "ShapesWanBackbone", "SHIPPED_MODEL"]

#: The model folder shipped inside the package.
SHIPPED_MODEL = Path(__file__).resolve().parent / "model"


@frozen(kw_only=True)
class ShapesWanOptions:
    """Options of the ``shapes-wan`` backbone."""

    #: A shapes-wan model folder (e.g. one you trained); default: the one shipped with stmod.
    folder: str | None = None
    #: ``cpu`` by default: the model is small enough that a GPU brings little.
    device: str = "cpu"


class ShapesWanBackbone(WanBackbone):
    """``wan`` loading the shapes-wan model; its transformer was trained on 77 text positions."""

    #: Text positions per prompt (the training's: a zero start row, the tokens, zero rows).
    text_length = 77

    def __init__(self, options: ShapesWanOptions) -> None:
        self.folder = Path(options.folder).expanduser() if options.folder else SHIPPED_MODEL
        super().__init__(WanOptions(model=str(self.folder), device=options.device, dtype="float32"))

    def check(self, spec: EditSpec) -> None:
        # a relative folder is the job's, as wan's check and loading read it (not the shell's)
        folder = self.folder if self.folder.is_absolute() else spec.base_dir / self.folder
        verify_model(folder, what="shapes-wan model", trainer="stmod.backbones.shapes_wan.train")
        super().check(spec)
        from stmod.backbones.shapes.world import WORDS

        prompts = [("prompt", spec.prompt), ("source_prompt", spec.source_prompt),
                   ("negative_prompt", spec.negative_prompt)]
        for where, prompt in prompts + [(f"regions.{r.name}", r.prompt) for r in spec.regions]:
            unknown = unknown_words(prompt)
            if unknown:
                raise PromptError(f"{where}: the shapes-wan model does not know {unknown[0]!r}; it edits only its "
                                  f"toy world and knows these words: {' '.join(WORDS)} (for other words, use real "
                                  f"Wan 2.1 weights: backbone wan)", prompt=prompt)
