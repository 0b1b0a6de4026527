"""One rank of a multi-process training run, for tests/test_training.py (not a test module).

Usage: ``python ddp_train_worker.py STAGE.toml RUN_DIR OUT_PREFIX`` with torchrun's environment
(MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK) set by the caller. Runs the stage through
:class:`~sodec.training.trainer.Trainer` (which joins the process group in ``_dist()``) and writes
``OUT_PREFIX-rank<r>-init.safetensors`` / ``-final.safetensors``: every model and discriminator
parameter as this rank holds it before the first step and after the last, and ``-lambda.txt``.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from sodec.training.stages import load_stage
from sodec.training.trainer import Trainer


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{n}": p.detach().cpu().clone().contiguous() for n, p in trainer.model.named_parameters()}
    if trainer.disc is not None:
        disc = trainer.disc.module if hasattr(trainer.disc, "module") else trainer.disc
        out.update({f"disc.{n}": p.detach().cpu().clone().contiguous() for n, p in disc.named_parameters()})
    return out


def main(argv: list[str]) -> int:
    stage_path, run_dir, prefix = argv
    torch.set_num_threads(1)
    trainer = Trainer(load_stage(stage_path), run_dir, progress=False)
    if not dist.is_initialized() or dist.get_world_size() < 2:
        print("worker: no multi-process group was formed", file=sys.stderr)
        return 2
    rank = dist.get_rank()
    # After DDP's construction: rank 0's weights were broadcast, except the ignored quantiles.
    save_file(_params(trainer), f"{prefix}-rank{rank}-init.safetensors")
    trainer.run(resume=False)
    save_file(_params(trainer), f"{prefix}-rank{rank}-final.safetensors")
    # lambda is not in the weights (DDP averages gradients, so ranks with different lambdas would
    # still hold equal weights): written so the test can compare it across ranks.
    with open(f"{prefix}-rank{rank}-lambda.txt", "w") as f:
        f.write(repr(trainer.rate_weight))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
