"""Turn a stage's ``train_state.safetensors`` (or a float16 copy of it) into a model checkpoint.

    python scripts/export_train_state.py RUN/2-anneal/train_state.safetensors --preset sodec:small \
        --out runs/small-q2/model.safetensors
    python scripts/export_train_state.py RUN/train_state.safetensors --config-from sodec-small-q2 \
        --out RUN/model.safetensors   # an architecture that is no preset (e.g. a context model added)

A time-boxed stage on a lent machine may end before its final checkpoint is written; its last
train state holds the weights (``model.*``). The model is rebuilt from the preset the stage trained
(the train state carries the stage, not the architecture), loaded strictly, its entropy tables
rebuilt (``update(force=True)``), and saved with its config and sha256 like a finished stage's.
Float16 tensors (a packed copy) are widened to float32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("state", help="train_state.safetensors (or a packed float16 copy)")
    arch = p.add_mutually_exclusive_group(required=True)
    arch.add_argument("--preset", help="kind:preset the stage trained, e.g. sodec:small or codec:small-gdn")
    arch.add_argument(
        "--config-from",
        help="a checkpoint (or shipped model name) with the architecture the stage trained, e.g. its --init",
    )
    p.add_argument("--out", required=True, help="checkpoint to write (model.safetensors)")
    a = p.parse_args(argv)
    from sodec.checkpoint import build_model, save_checkpoint
    from sodec.models.presets import preset_config

    if a.preset:
        kind, _, name = a.preset.partition(":")
        cfg = preset_config(kind, name)
    else:
        from sodec.checkpoint import read_checkpoint
        from sodec.registry import get

        src = a.config_from if Path(a.config_from).is_file() else get(a.config_from).path
        kind, cfg, _, _ = read_checkpoint(src)
    with safe_open(a.state, framework="pt") as f:
        meta = f.metadata() or {}
        keys = list(f.keys())
        prefix = "model." if any(k.startswith("model.") for k in keys) else ""
        state = {k[len(prefix) :]: f.get_tensor(k) for k in keys if k.startswith(prefix)}
    state = {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in state.items()}
    model = build_model(kind, cfg)
    model.load_state_dict(state, strict=True)
    model.eval()
    model.update(force=True)
    train = json.loads(meta.get("sodec.train", "{}"))
    stage = json.loads(train.get("stage", "{}"))
    extra = {"sodec.stage": stage.get("name", "?"), "sodec.exported_from_step": str(train.get("step", "?"))}
    sha = save_checkpoint(a.out, model, kind, cfg, extra)
    print(f"{a.out}: step {train.get('step', '?')}, sha256 {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
