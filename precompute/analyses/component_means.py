"""The component-means pass: each layer's attention and MLP output averaged over every token of each segment, across
all the run's pairs (what mean-mode component ablations put in place of the removed output).

Pairs go in the summary pass's chunks; each chunk's sums (float64) are one resumable part of ``component_sums``,
merged into ``component_means`` once every chunk is there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from precompute.kernels.block_hooks import COMPONENTS
from precompute.names import SEGMENTS


@torch.inference_mode()
def sums_chunk(lm, pairs: Sequence, *, batch_size: int, max_length: int, batch_tokens: int | None = None) -> pa.Table:
    """``component_sums`` rows of one chunk: per layer x component x segment, tokens and summed output."""
    from precompute.kernels.block_hooks import ComponentHooks
    from precompute.kernels.eager import SummaryProbe
    from precompute.analyses.batching import length_batches

    layers, _ = lm.shape
    hidden = None
    sums = tokens = None
    with SummaryProbe(lm) as probe, ComponentHooks(lm):
        for batch in length_batches(lm, pairs, batch_size, max_length, batch_tokens):
            enc = lm.encode([p.query for p in batch], [p.doc for p in batch], max_length).to(lm.device)
            _, state = probe.forward(enc, capture=frozenset(COMPONENTS))
            onehot = state.onehot.double()  # [b, s, 5]
            for (kind, layer), out in state.captured.items():
                if sums is None:
                    hidden = out.shape[-1]
                    sums = np.zeros((layers, len(COMPONENTS), len(SEGMENTS), hidden))
                    tokens = np.zeros((layers, len(COMPONENTS), len(SEGMENTS)), dtype=np.int64)
                c = COMPONENTS.index(kind)
                sums[layer, c] += torch.einsum("bsk,bsh->kh", onehot, out.double()).cpu().numpy()
                tokens[layer, c] += onehot.sum((0, 1)).long().cpu().numpy()
    rows = [(layer, kind, seg) for layer in range(layers) for kind in COMPONENTS for seg in SEGMENTS]
    return pa.table({
        "layer": pa.array([r[0] for r in rows], pa.int8()),
        "component": [r[1] for r in rows],
        "segment": [r[2] for r in rows],
        "tokens": pa.array([int(tokens[l, COMPONENTS.index(c), SEGMENTS.index(s)]) for l, c, s in rows], pa.int64()),
        "sum": pa.array([sums[l, COMPONENTS.index(c), SEGMENTS.index(s)].tolist() for l, c, s in rows],
                        pa.list_(pa.float64())),
    })


def means_table(parts: Sequence[pa.Table]) -> pa.Table:
    """``component_means`` from every chunk's sums (a segment with no token anywhere gets a zero vector)."""
    keys = list(zip(*(parts[0].column(c).to_pylist() for c in ("layer", "component", "segment"))))
    tokens = sum(np.asarray(p.column("tokens").to_pylist(), dtype=np.int64) for p in parts)
    total = sum(np.asarray(p.column("sum").to_pylist(), dtype=np.float64) for p in parts)
    means = total / np.maximum(tokens, 1)[:, None]
    return pa.table({
        "layer": pa.array([k[0] for k in keys], pa.int8()),
        "component": [k[1] for k in keys],
        "segment": [k[2] for k in keys],
        "tokens": pa.array(tokens, pa.int64()),
        "mean": pa.array(means.astype(np.float32).tolist(), pa.list_(pa.float32())),
    })


def means_tensor(table: pa.Table, layers: int) -> torch.Tensor:
    """[layers, 2, 5, hidden] float32 from a ``component_means`` table (the kernels' ``Intervention.means``)."""
    out = None
    for layer, kind, seg, mean in zip(*(table.column(c).to_pylist() for c in ("layer", "component", "segment", "mean"))):
        if out is None:
            out = torch.zeros(layers, len(COMPONENTS), len(SEGMENTS), len(mean))
        out[layer, COMPONENTS.index(kind), SEGMENTS.index(seg)] = torch.tensor(mean)
    return out
