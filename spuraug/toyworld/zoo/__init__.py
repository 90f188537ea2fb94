"""The toy model zoo: small "foundation models" trained by project code on the toy world.

Ids and their folders (next to this file, in each library's standard format):

- ``"spuraug/toy-sd-inpainting"`` -> ``toy-sd-inpainting/`` (diffusers StableDiffusionInpaintPipeline)
- ``"spuraug/toy-clipseg"``       -> ``toy-clipseg/`` (transformers CLIPSegForImageSegmentation + CLIPSegProcessor)
- ``"spuraug/toy-oracle"``        -> ``toy-oracle/`` (the world classifier, :mod:`spuraug.toyworld.oracle`)
- ``"spuraug/toy-backbone"``      -> ``toy-backbone/`` (a ToyCNN pretrained to name the world's digits,
  :mod:`spuraug.toyworld.backbone`: the toy's ImageNet, loaded by ``model.weights``)

``make toy-zoo`` (``python -m spuraug.toyworld.zoo train``) trains them; the trained
weights are committed, so it only retrains when the recipe or a file changed.
"""

from __future__ import annotations

import os
from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
ZOO_PREFIX = "spuraug/toy-"
MODEL_IDS: dict[str, str] = {
    "spuraug/toy-sd-inpainting": "toy-sd-inpainting",
    "spuraug/toy-clipseg": "toy-clipseg",
    "spuraug/toy-oracle": "toy-oracle",
    "spuraug/toy-backbone": "toy-backbone",
}


def zoo_dir() -> Path:
    """The zoo folder: ``$SPURAUG_TOY_ZOO`` if set, else the package's own ``zoo/`` folder."""
    return Path(os.environ.get("SPURAUG_TOY_ZOO", ZOO_DIR))


def resolve_model_id(model_id: str) -> str:
    """The local folder for a ``"spuraug/toy-..."`` id; any other id is returned unchanged.

    Raises FileNotFoundError (saying to run ``make toy-zoo``) when the id is a toy id but
    its folder is not built, and ValueError for an unknown toy id.
    """
    model_id = str(model_id)
    if not model_id.startswith(ZOO_PREFIX):
        return model_id
    if model_id not in MODEL_IDS:
        raise ValueError(f"unknown toy model id {model_id!r}; known: {', '.join(MODEL_IDS)}")
    folder = zoo_dir() / MODEL_IDS[model_id]
    if not (folder.is_dir() and any(folder.glob("*.json"))):
        raise FileNotFoundError(
            f"the toy model {model_id!r} is not built (no {folder}); run `make toy-zoo` to train the toy zoo"
        )
    return str(folder)
