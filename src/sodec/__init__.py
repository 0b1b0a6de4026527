"""sodec: SODEC, a one-step diffusion image codec steered by a fidelity-rich decoder.

The library API lives in :mod:`sodec.api` (``load_model``, ``compress``, ``decompress``, ``info``).
"""

__version__ = "0.3.0"
