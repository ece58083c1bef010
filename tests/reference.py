"""Independent re-computation of the store's numbers from Hugging Face's own eager attention.

Written straight from the definitions in docs/store.md, with numpy and boolean indexing, sharing
no code with precompute/kernels/ or precompute/metrics.py, so the two can disagree.
"""

from __future__ import annotations

import numpy as np

SEGS = ("cls", "q", "sep1", "d", "sep2")


def eager_attentions(model, inputs):
    """Per-layer attention weights [batch, head, seq, seq] from output_attentions with eager attention."""
    import torch

    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
    return out.logits, [a.float().numpy() for a in out.attentions]


def summaries(attentions, segments: np.ndarray, input_ids: np.ndarray) -> np.ndarray:
    """[batch, layer, head, 29] in metrics.METRICS order (25 masses, q2d_max, d2q_max, q_d_exact, q_d_other)."""
    b = segments.shape[0]
    n_layers, n_heads = len(attentions), attentions[0].shape[1]
    out = np.zeros((b, n_layers, n_heads, 29))
    for r in range(b):
        seg, ids = segments[r], input_ids[r]
        q, d = np.where(seg == 1)[0], np.where(seg == 3)[0]
        for layer in range(n_layers):
            for head in range(n_heads):
                a = attentions[layer][r, head]
                k = 0
                for s in range(5):
                    for t in range(5):
                        src, dst = np.where(seg == s)[0], np.where(seg == t)[0]
                        out[r, layer, head, k] = a[np.ix_(src, dst)].sum(1).mean()
                        k += 1
                out[r, layer, head, 25] = a[np.ix_(q, d)].max(1).mean()
                out[r, layer, head, 26] = a[np.ix_(d, q)].max(1).mean()
                same = ids[q][:, None] == ids[d][None, :]
                block = a[np.ix_(q, d)]
                out[r, layer, head, 27] = (block * same).sum(1).mean()
                out[r, layer, head, 28] = (block * ~same).sum(1).mean()
    return out
