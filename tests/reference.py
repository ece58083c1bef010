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


def value_outputs(run, layers, value_path: str):
    """(what ``run()`` returns, per layer the value projection's output [batch, seq, kv_heads * dv] in that forward
    pass): forward hooks on the module at ``value_path`` within each layer."""
    got, hooks = [], []
    for layer in layers:
        module = layer
        for part in value_path.split("."):
            module = getattr(module, part)
        hooks.append(module.register_forward_hook(lambda _m, _i, out: got.append(out.detach().float().numpy())))
    try:
        result = run()
    finally:
        for hook in hooks:
            hook.remove()
    return result, got


def value_weighted(attentions, values, output_weights, segments: np.ndarray) -> np.ndarray:
    """[batch, layer, head, 25]: for source row i, the vectors f_ij = a_ij * (W_O^h v_j) by an explicit loop over i and
    j; the share of target segment T is sum_{j in T} ||f_ij|| / sum_j ||f_ij||, averaged over the rows i of source
    segment S (docs/store.md, vw_*). ``values``: per layer [b, s, kv_heads * dv]; ``output_weights``: per layer the
    attention output projection's weight [hidden, heads * dv]. Query head h reads value head h // (heads / kv_heads)."""
    b = segments.shape[0]
    n_layers, n_heads = len(attentions), attentions[0].shape[1]
    out = np.full((b, n_layers, n_heads, 25), np.nan)
    for layer in range(n_layers):
        wo = output_weights[layer]
        dv = wo.shape[1] // n_heads
        kv_heads = values[layer].shape[-1] // dv
        for r in range(b):
            seg = segments[r]
            tokens = np.where(seg >= 0)[0]
            for head in range(n_heads):
                a = attentions[layer][r, head]
                w_h = wo[:, head * dv:(head + 1) * dv]
                g = head // (n_heads // kv_heads)
                share = np.zeros((len(seg), 5))
                for i in tokens:
                    norms = np.zeros(len(seg))
                    for j in range(len(seg)):
                        v_j = values[layer][r, j, g * dv:(g + 1) * dv]
                        norms[j] = np.linalg.norm(a[i, j] * (w_h @ v_j))
                    for t in range(5):
                        share[i, t] = norms[seg == t].sum() / norms.sum()
                for s in range(5):
                    src = np.where(seg == s)[0]
                    if len(src):
                        out[r, layer, head, s * 5:(s + 1) * 5] = share[src].mean(0)
    return out
