"""Import CompressAI's entropy models and rANS coder without importing all of CompressAI.

Why: ``compressai/__init__.py`` (1.2.8) imports every subpackage, and ``compressai.datasets`` /
``compressai.registry`` import ``torch_geometric`` (which imports ``torch._dynamo``) and
``torchvision.transforms``: about 2-5 s of a ``sodec compress`` run, for point-cloud code a
codec never touches (``python -X importtime -c "import sodec.api"``). ``compressai.models`` and
``compressai.latent_codecs`` pull in the same through their own ``__init__``.

How: before the first ``import compressai``, :func:`use_lean_packages` registers those three
packages in ``sys.modules`` as *lazy packages*: real package modules (same spec, ``__path__``
and file) whose ``__init__`` runs minus its imports of the package's own submodules; each name
such an import would have bound is imported on first attribute access instead (PEP 562
``__getattr__``). So ``compressai.get_entropy_coder()`` and the coder registry are CompressAI's
own code, ``from compressai.entropy_models import GaussianConditional`` loads exactly the same
module as before, and ``import compressai.zoo`` or ``compressai.models.ScaleHyperprior`` still
work (they then import what they need). Nothing of CompressAI is copied or changed: bitstreams
are bit-exact with a plain ``import compressai`` (tests/test_codec.py, tests/test_conformance.py).

Importing this module sets that up and imports what :mod:`sodec.models.vae_codec` uses.

When ``compressai`` was already imported (by the user's own code) this does nothing. Any
surprise in a future CompressAI's ``__init__`` (a parse failure, an exception while running the
rest of it) falls back to the plain import, so the cost is only ever speed, never correctness.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

# Packages whose __init__ imports far more than the codec uses; parents come first.
LEAN_PACKAGES = ("compressai", "compressai.models", "compressai.latent_codecs")


def _own_imports(tree: ast.Module, package: str) -> tuple[list[ast.stmt], dict[str, str], list[str]]:
    """Split an ``__init__``'s top-level statements.

    -> (statements to run now, {bound name: "module:attr" or "module:" for a submodule},
    [modules of ``from .x import *``]); only imports of ``package``'s own submodules are lazy.
    """
    keep: list[ast.stmt] = []
    names: dict[str, str] = {}
    stars: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source == package or source.startswith(package + "."):
                for alias in node.names:
                    bound = alias.asname or alias.name
                    if alias.name == "*":
                        stars.append(source)
                    elif source == package:  # `from compressai import datasets`: a submodule
                        names[bound] = f"{package}.{alias.name}:"
                    else:
                        names[bound] = f"{source}:{alias.name}"
                continue
        keep.append(node)
    return keep, names, stars


def _lazy_package(name: str) -> ModuleType | None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.submodule_search_locations:
        return None
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=spec.origin)
    keep, names, stars = _own_imports(tree, name)
    module = importlib.util.module_from_spec(spec)

    def __getattr__(attr: str) -> object:
        target = names.get(attr)
        if target is not None:
            mod_name, _, obj = target.partition(":")
            mod = importlib.import_module(mod_name)
            value = getattr(mod, obj) if obj else mod
        else:
            # Names from `from .x import *`: look through those modules in __init__'s order.
            for mod_name in stars:
                mod = importlib.import_module(mod_name)
                if attr in getattr(mod, "__all__", ()) or (not attr.startswith("_") and hasattr(mod, attr)):
                    value = getattr(mod, attr)
                    break
            else:
                raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        setattr(module, attr, value)
        return value

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[name] = module
    try:
        exec(compile(ast.Module(body=keep, type_ignores=[]), spec.origin, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    if "." in name:
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, module)
    return module


def use_lean_packages() -> None:
    """Register CompressAI's heavy packages as lazy ones (see module doc); idempotent."""
    if any(p in sys.modules for p in LEAN_PACKAGES):
        return  # imported already (fully or lean): nothing to gain, nothing to change
    made: list[str] = []
    try:
        for name in LEAN_PACKAGES:
            if _lazy_package(name) is None:
                break
            made.append(name)
    except Exception:
        # A CompressAI whose __init__ no longer fits: import it the ordinary way.
        for name in made:
            sys.modules.pop(name, None)


@contextmanager
def _scipy_stats_on_demand() -> Iterator[None]:
    """While CompressAI's entropy models are imported, let their ``import scipy.stats`` bind a
    placeholder; afterwards the name resolves through scipy's own lazy submodule loading.

    ``compressai.entropy_models`` imports scipy.stats (about 0.5 s) for one call, the normal
    quantile in ``update()``, which builds CDF tables. A model loaded from a checkpoint takes its
    tables from the file (:func:`sodec.models.vae_codec.tables_from_checkpoint`) and never calls
    it. The module refers to it as ``scipy.stats.norm``, an attribute of the ``scipy`` package:
    once the placeholder is removed, scipy's module ``__getattr__`` (SciPy >= 1.9) imports the
    real scipy.stats on that first use. Nothing changes when scipy.stats is imported already or
    scipy does not load submodules on demand.
    """
    import scipy

    if "scipy.stats" in sys.modules or not hasattr(scipy, "__getattr__"):
        yield
        return
    placeholder = ModuleType("scipy.stats")
    placeholder.__spec__ = importlib.util.spec_from_loader("scipy.stats", loader=None)
    sys.modules["scipy.stats"] = placeholder
    try:
        yield
    finally:
        if sys.modules.get("scipy.stats") is placeholder:
            del sys.modules["scipy.stats"]
        if scipy.__dict__.get("stats") is placeholder:
            del scipy.stats


use_lean_packages()
with warnings.catch_warnings(), _scipy_stats_on_demand():
    # compressai 1.2.8 calls torch.jit.script at import, which torch 2.14 flags as deprecated.
    warnings.simplefilter("ignore", FutureWarning)
    from compressai.ans import BufferedRansEncoder, RansDecoder
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional
    from compressai.layers.gdn import GDN
    from compressai.layers.layers import CheckerboardMaskedConv2d
    from compressai.models.base import CompressionModel
    from compressai.models.utils import conv, deconv

__all__ = [
    "GDN",
    "BufferedRansEncoder",
    "CheckerboardMaskedConv2d",
    "CompressionModel",
    "EntropyBottleneck",
    "GaussianConditional",
    "RansDecoder",
    "conv",
    "deconv",
    "use_lean_packages",
]
