"""Model names -> config, weights file, sha256 and rate point (the shipped models).

Release metadata lives in ``sodec/weights/models.json`` next to the weights, apart from the
architecture code (as timm keeps entry points and pretrained configs apart). The file is written
by ``scripts/ship_model.py`` from a training run, never by hand.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import SodecError, UsageError, WeightsError


@dataclass(frozen=True)
class ModelEntry:
    name: str  # stable id written into every .sodec file
    kind: str  # "codec" or "sodec"
    family: str  # models of one family differ only in rate point
    quality: int  # 1 = lowest rate in the family
    file: str  # weights file name inside sodec/weights/
    sha256: str
    description: str = ""
    rate_weight: float | None = None  # lambda it was trained at (where a steered run ended)
    target_bpp: float | None = None  # the rate target its last stage was steered to, if any
    kodak_bpp: float | None = None  # measured by scripts/eval_codec.py (bytes written)
    margin: bool = False  # compress() centres the picture with a replicated margin (fileinfo.MARGIN)

    @property
    def path(self) -> Path:
        return weights_folder() / self.file


def weights_folder() -> Path:
    return Path(str(resources.files("sodec") / "weights"))


def _load() -> tuple[dict[str, ModelEntry], str | None]:
    path = weights_folder() / "models.json"
    if not path.is_file():
        return {}, None
    data = json.loads(path.read_text())
    entries = {e["name"]: ModelEntry(**e) for e in data.get("models", [])}
    return entries, data.get("default")


def models() -> list[ModelEntry]:
    return sorted(_load()[0].values(), key=lambda e: (e.family, e.quality))


def default_name() -> str | None:
    """The model ``sodec compress`` uses when none is named (None when none is shipped)."""
    return _load()[1]


def get(name: str) -> ModelEntry:
    entries, _ = _load()
    if name not in entries:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(sorted(entries)) or 'none'}")
    return entries[name]


def resolve(model: str | None = None, quality: int | None = None) -> ModelEntry:
    """Pick a shipped model by full name, by family (+ quality), or the default."""
    entries, default = _load()
    if not entries:
        raise WeightsError("no shipped models found in the sodec package (sodec/weights/models.json)")
    if model is None:
        if default is None:
            raise WeightsError("models.json names no default model")
        if quality is None:
            return entries[default]
        model = entries[default].family
    if model in entries:
        e = entries[model]
        if quality is not None and quality != e.quality:
            return resolve(e.family, quality)
        return e
    family = sorted((e for e in entries.values() if e.family == model), key=lambda e: e.quality)
    if not family:
        raise UsageError(f"unknown model {model!r}; known: {', '.join(sorted(entries))}")
    if quality is None:
        return family[-1]
    for e in family:
        if e.quality == quality:
            return e
    qs = ", ".join(str(e.quality) for e in family)
    raise UsageError(f"model family {model!r} has qualities {qs}, not {quality}")


def model_id_for_path(path: Path) -> str:
    """A file id for a user's own checkpoint: its stem, lower-cased, restricted to [a-z0-9._-]."""
    stem = re.sub(r"[^a-z0-9._-]", "-", path.stem.lower())[:48].strip("-") or "model"
    return stem


def names_checkpoint(model: str | os.PathLike[str] | None) -> bool:
    """Whether ``model`` (a ``--model`` value) names a checkpoint file rather than a shipped model:
    it ends in ``.safetensors`` or holds a path separator. The one rule every loader uses."""
    return model is not None and (Path(model).suffix == ".safetensors" or os.sep in str(model))


def default_margin(model: str | None = None, quality: int | None = None) -> bool:
    """Whether ``compress`` gives this model's pictures the replicated margin by default (the
    entry's ``margin``; docs/format.md, "Margin"). A checkpoint named by path has none; a name
    that resolves to nothing answers False here and fails where the model loads."""
    if names_checkpoint(model):
        return False
    try:
        return resolve(model, quality).margin
    except SodecError:
        return False
