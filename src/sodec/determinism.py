"""Thread-count-independent attention for decoding.

PyTorch's fused CPU attention kernel (flash attention) splits its work by the number of threads,
so the same file decoded with 1 or 2 threads could differ in the last bits and, after rounding
to 8 bits, in a few pixels. Matrix products and softmax on the CPU give identical results for
any thread count (tests/test_sodec_model.py checks the whole decode), so while decoding we route
``F.scaled_dot_product_attention`` through its MATH backend, over fixed-size query chunks to keep
the attention matrix small. CUDA tensors keep the fused kernel (deterministic for a given GPU).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

QUERY_CHUNK = 1024  # queries per attention block: an (L_q=1024) x (L_k) matrix per head


@contextmanager
def deterministic_attention(chunk: int = QUERY_CHUNK) -> Iterator[None]:
    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        if query.is_cuda or dropout_p or is_causal or attn_mask is not None or kw:
            return original(
                query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw
            )
        with sdpa_kernel([SDPBackend.MATH]):
            if query.size(-2) <= chunk:
                return original(query, key, value, scale=scale)
            parts = [
                original(query[..., i : i + chunk, :], key, value, scale=scale) for i in range(0, query.size(-2), chunk)
            ]
        return torch.cat(parts, dim=-2)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
