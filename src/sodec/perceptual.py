"""LPIPS and DISTS built from offline backbone weights (no download, ever).

The ``lpips`` and ``DISTS_pytorch`` packages fetch torchvision ImageNet backbones on first use.
Here the backbones' convolutional weights come from a folder of safetensors files (the layout of
``shared/weights``: ``<net>_features.safetensors`` holding ``torchvision.models.<net>().features``
state dicts, plus DISTS' ``alpha``/``beta``), found through an explicit ``weights_dir``, the
``SODEC_WEIGHTS_DIR`` variable, or ``~/.cache/sodec/weights``. Each file's sha256 is checked
against the published value before use. The metric code itself is the packages' own.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from .checkpoint import sha256_file
from .errors import WeightsError

# sha256 of the verified offline copies (shared/weights/README.md).
BACKBONES = {
    "alex": ("alexnet_features.safetensors", "889a9ed0249fad79da5157ecf3125bef56243b12ec058c99296bc803ad24ec94"),
    "vgg": ("vgg16_features.safetensors", "5ec800ff5c189c3fef18ab4abcecdf326ec5662e690866094e9f55006cdd9ecf"),
    "squeeze": (
        "squeezenet1_1_features.safetensors",
        "34a832b8d26660222fea690872ffda0133182f6acc79771786ac37c7e87f3216",
    ),
    "dists": ("dists_alpha_beta.safetensors", "50980d68bc38b2fcc738b1a8c3ae77a87cb73883b230951c2c57190855bdb52f"),
}


def weights_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder holding backbone weights, or None when none is configured/present."""
    for cand in (explicit, os.environ.get("SODEC_WEIGHTS_DIR"), Path.home() / ".cache" / "sodec" / "weights"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    if explicit:
        raise WeightsError(f"weights dir not found: {explicit}")
    return None


@functools.lru_cache(maxsize=16)
def _verified(path: Path, sha: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    got = sha256_file(path)
    if got != sha:
        raise WeightsError(f"{path.name}: sha256 {got[:12]}… differs from the published {sha[:12]}…")
    return load_file(str(path))


def backbone_state(net: str, explicit_dir: str | os.PathLike[str] | None = None) -> dict[str, torch.Tensor]:
    """The verified state dict for ``net`` (alex, vgg, squeeze, dists), or WeightsError."""
    fname, sha = BACKBONES[net]
    d = weights_dir(explicit_dir)
    if d is None:
        raise WeightsError(f"{fname} not found: set --weights-dir or SODEC_WEIGHTS_DIR to a folder holding it")
    path = d / fname
    if not path.is_file():
        raise WeightsError(f"{fname} not found in {d}")
    return _verified(path.resolve(), sha)


def _load_by_index(module: nn.Module, feats: dict[str, torch.Tensor], prefixes: list[str]) -> None:
    """Copy torchvision ``features.<i>.*`` tensors into modules named ``<prefix>.<i>`` (LPIPS/DISTS
    keep torchvision's layer indices inside their slices)."""
    own = module.state_dict()
    loaded = 0
    for key, tensor in feats.items():
        idx, rest = key.split(".", 1)
        for p in prefixes:
            target = f"{p}.{idx}.{rest}"
            if target in own:
                own[target] = tensor
                loaded += 1
                break
    if loaded != len(feats):
        raise WeightsError(f"backbone weights did not map onto the network ({loaded}/{len(feats)})")
    module.load_state_dict(own)


def lpips_model(net: str = "alex", explicit_dir: str | os.PathLike[str] | None = None) -> nn.Module:
    """``lpips.LPIPS`` v0.1 (inputs in [-1, 1]) with the offline backbone; frozen, eval mode."""
    import lpips

    if net not in ("alex", "vgg", "squeeze"):
        raise ValueError(f"unknown LPIPS net {net!r}")
    feats = backbone_state(net, explicit_dir)
    # pnet_rand=True: build the backbone without asking torchvision to download it; the linear
    # layers (pretrained=True) ship inside the lpips package.
    with warnings.catch_warnings():
        # lpips passes torchvision's deprecated ``pretrained`` flag: a warning that says nothing
        # to a user (training and evaluation both build these nets).
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    _load_by_index(model.net, feats, [f"slice{i}" for i in range(1, 6)])
    model.eval().requires_grad_(False)
    return model


def dists_model(explicit_dir: str | os.PathLike[str] | None = None) -> nn.Module:
    """``DISTS_pytorch.DISTS`` (images in [0, 1]) with the offline VGG16 and alpha/beta."""
    import torchvision
    from DISTS_pytorch import DISTS_pt

    feats = backbone_state("vgg", explicit_dir)
    ab = backbone_state("dists", explicit_dir)
    vgg16 = torchvision.models.vgg16  # the real constructor, captured before patching

    with mock.patch.object(DISTS_pt.models, "vgg16", lambda *a, **k: vgg16(weights=None)):
        model = DISTS_pt.DISTS(load_weights=False)
    _load_by_index(model, feats, [f"stage{i}" for i in range(1, 6)])
    model.alpha.data.copy_(ab["alpha"])
    model.beta.data.copy_(ab["beta"])
    model.eval().requires_grad_(False)
    return model
