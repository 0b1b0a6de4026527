"""Copy a trained model into the package and record it in sodec/weights/models.json.

    python scripts/ship_model.py runs/codec-small-q2/model.safetensors --name codec-small-q2 \
        --family codec-small --quality 2 --description "..." [--default]

The weights are re-saved with ``sodec.model_id`` in their metadata, their sha256 is computed and
written to the registry; nothing here is typed by hand. ``--kodak-bpp`` takes the figure printed
by scripts/eval_codec.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sodec.checkpoint import build_model, read_checkpoint, save_checkpoint
from sodec.registry import weights_folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--name", required=True)
    p.add_argument("--family", required=True)
    p.add_argument("--quality", type=int, required=True)
    p.add_argument("--description", default="")
    p.add_argument("--kodak-bpp", type=float)
    p.add_argument("--default", action="store_true")
    p.add_argument(
        "--half",
        action="store_true",
        help="store parameters as float16 (buffers such as CDF tables stay exact): half the size",
    )
    p.add_argument(
        "--codec-only",
        action="store_true",
        help="ship the codec inside a SODEC checkpoint as a plain codec (its g_s decodes: x_vae)",
    )
    p.add_argument(
        "--rate-weight", type=float, help="record this final lambda (a run whose last stage did not steer it)"
    )
    p.add_argument("--target-bpp", type=float, help="record this rate target (likewise)")
    p.add_argument(
        "--margin",
        action="store_true",
        help="compress() gives this model's pictures a replicated margin by default (registry field margin)",
    )
    a = p.parse_args(argv)
    kind, cfg, state, meta = read_checkpoint(a.checkpoint)
    if a.codec_only:
        if kind != "sodec":
            raise SystemExit("--codec-only needs a SODEC checkpoint")
        kind, cfg = "codec", cfg.codec
        state = {k[len("codec.") :]: v for k, v in state.items() if k.startswith("codec.")}
    model = build_model(kind, cfg)
    model.load_state_dict(state, strict=True)
    dest = weights_folder() / f"{a.name}.safetensors"
    extra = {k: v for k, v in meta.items() if not k.startswith("sodec.") or k == "sodec.stage"}
    extra["sodec.model_id"] = a.name
    state = model.checkpoint_state_dict() if hasattr(model, "checkpoint_state_dict") else model.state_dict()
    if a.half:
        # Encoder and decoder both load these same rounded weights, so coding stays exact; the
        # entropy bottleneck's quantiles and all buffers (CDF tables, scale table) keep float32.
        params = {n for n, _ in model.named_parameters() if not n.endswith("quantiles")}
        state = {k: v.half() if k in params and v.is_floating_point() else v for k, v in state.items()}
        extra["sodec.stored_dtype"] = "float16"
    sha = save_checkpoint(dest, model, kind, cfg, extra, state_dict=state)
    reg_path = weights_folder() / "models.json"
    reg = json.loads(reg_path.read_text()) if reg_path.is_file() else {"models": [], "default": None}
    reg["models"] = [m for m in reg["models"] if m["name"] != a.name]
    train_meta = {}
    run_stage = Path(a.checkpoint).parent / "stage.json"
    if run_stage.is_file():
        train_meta = json.loads(run_stage.read_text())
    final_lambda = None
    train_state = Path(a.checkpoint).parent / "train_state.safetensors"
    if train_state.is_file():  # lambda where the run ended (steered runs: not in the stage file)
        from safetensors import safe_open

        with safe_open(str(train_state), framework="pt") as f:
            final_lambda = json.loads(f.metadata()["sodec.train"]).get("rate_weight")
    reg["models"].append(
        {
            "name": a.name,
            "kind": kind,
            "family": a.family,
            "quality": a.quality,
            "file": dest.name,
            "sha256": sha,
            "description": a.description,
            "rate_weight": a.rate_weight
            or final_lambda
            or train_meta.get("rate_weight_end")
            or train_meta.get("rate_weight"),
            "target_bpp": a.target_bpp or train_meta.get("target_bpp"),
            "kodak_bpp": a.kodak_bpp,
            **({"margin": True} if a.margin else {}),
        }
    )
    reg["models"].sort(key=lambda m: (m["family"], m["quality"]))
    if a.default or reg.get("default") is None:
        reg["default"] = a.name
    reg_path.write_text(json.dumps(reg, indent=2) + "\n")
    print(f"{dest} sha256 {sha} ({dest.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
