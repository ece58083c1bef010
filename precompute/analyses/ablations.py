"""Ablation conditions and the ablation pass: re-score every pair with attention directions or heads removed.

What a condition is and how it is named: :mod:`precompute.conditions`.

The pass
--------
Pairs are cut into the summary pass's chunks, then length-sorted batches. ``stack`` conditions share a
forward pass: every batch of ``batch_size // stack`` pairs is replicated once per condition (rows =
pairs x conditions, each row with its own :class:`~precompute.kernels.state.Intervention` slice), so a forward
keeps about ``batch_size`` rows. Conditions sharing a forward must share a direction mode.

Two kernels compute the same thing:

* ``sdpa``: :mod:`precompute.kernels.sdpa`, built on ``scaled_dot_product_attention`` (fused kernels,
  no [batch, head, seq, seq] weights in memory).
* ``eager``: the summary kernel's own attention function (:mod:`precompute.kernels.eager`), slower.
* ``auto`` (default): sdpa wherever it computes the family's attention exactly, else eager (DeBERTa-v2 and MPNet
  compute their softmax inline; Gemma-2 soft-caps its logits, which SDPA cannot).

Both equal a hand-written forward pass to 1e-5 (tests/precompute/analyses/test_ablations.py). A row left with
nothing to attend to (all its keys removed in ``mask`` mode) outputs zeros, never NaN.

The baseline ``none`` is scored by the same pass (same kernel and batching) as the conditions, so every
delta compares like with like. With the eager kernel and ``stack`` 1 it is bit-identical to
``pairs.score``; with sdpa it equals a plain SDPA scoring pass bit for bit and ``pairs.score`` to a few 1e-6
(two kernels summing in a different order; 3e-6 on MiniLM logits of magnitude ~10). Stacking conditions
(``stack`` > 1) changes the shapes of the matrix products and moves scores by float noise (< 1e-5) too.

Where the scores go and how reruns resume: :mod:`precompute.stages.ablations_stage`.

This module imports no torch or pyarrow at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from precompute.conditions import KERNELS, Condition, forward_edits, forward_mode


def resolve_kernel(lm, kernel: str) -> str:
    """The kernel a run uses: ``auto`` is sdpa where the family's attention allows it exactly, else eager."""
    if kernel not in KERNELS:
        raise ValueError(f"--ablation-kernel {kernel!r}: expected one of {', '.join(KERNELS)}")
    exact = lm.family.sdpa_ablation(lm.model)
    if kernel == "auto":
        return "sdpa" if exact else "eager"
    if kernel == "sdpa" and not exact:
        raise ValueError(f"--ablation-kernel sdpa cannot compute {lm.family.name} attention exactly "
                         "(inline softmax or logit soft-capping); use --ablation-kernel eager or auto")
    return kernel


class _EagerAblation:
    """The summary kernel's eager path (interventions, summaries on request) behind the ablation probe's interface."""

    def __init__(self, lm):
        from precompute.kernels.eager import SummaryProbe

        self._probe = SummaryProbe(lm)

    def __enter__(self):
        self._probe.__enter__()
        return self

    def __exit__(self, *exc):
        self._probe.__exit__(*exc)

    def run(self, batch, *, intervention=None, summarise: bool = False):
        scores, summaries, _ = self._probe.run(batch, intervention=intervention, summarise=summarise)
        return (scores, summaries) if summarise else scores


def probe(lm, kernel: str):
    """The probe of a resolved kernel (``sdpa`` or ``eager``)."""
    if kernel == "sdpa":
        from precompute.kernels.sdpa import AblationProbe

        return AblationProbe(lm)
    return _EagerAblation(lm)


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def _qk_edits(lm, edits, n: int):
    """The QK edits of a forward's :class:`~precompute.conditions.forward.Edits` for rows = pairs x conditions
    (condition-major, ``n`` pairs per condition)."""
    import torch

    from precompute.analyses.subspace import aligned_components, head_factors, qk_edit

    out, factors = [], {}
    for t in edits.qk:
        if (t.layer, t.head) not in factors:
            factors[(t.layer, t.head)] = head_factors(lm, t.layer, t.head)
        rows = torch.zeros(edits.n_conditions * n, dtype=torch.bool)
        rows[t.row * n : (t.row + 1) * n] = True
        f = factors[(t.layer, t.head)]
        out.append(qk_edit(f, t.layer, t.head, t.k, t.factor, rows, lm.device,
                           aligned_components(f, t.k) if t.aligned else None))
    return tuple(out)


def score_conditions(lm, pairs: Sequence, conditions: Sequence[Condition], *, batch_size: int, max_length: int,
                     batch_tokens: int | None = None, kernel: str = "auto", means=None, head_metrics: dict | None = None,
                     on_batch: Callable[[int], None] | None = None) -> dict:
    """Score ``pairs`` under every condition, all conditions sharing each forward pass.

    Returns condition_id -> float32 scores aligned with ``pairs``. Rows of a forward are the batch's pairs
    repeated per condition (condition-major); a batch holds ``batch_size // len(conditions)`` pairs (and, with
    ``batch_tokens``, at most ``batch_tokens // len(conditions)`` padded tokens of pairs).
    ``means`` [layers, 2, 5, hidden]: the run's component means (mean-mode component conditions).
    ``head_metrics``: when a dict, the summary kernel scores and fills it with condition_id -> [pairs, metrics] of
    the own head of each condition whose kind measures it (subspace: what the intervention did to that head).
    """
    import contextlib

    import numpy as np

    from precompute.kernels.block_hooks import ComponentHooks
    from precompute.metrics import METRICS
    from precompute.kernels.state import Intervention
    from precompute.analyses.batching import length_batches

    if not conditions or not pairs:
        return {c.condition_id: np.zeros(0, np.float32) for c in conditions}
    summarise = head_metrics is not None
    kernel = "eager" if summarise else resolve_kernel(lm, kernel)
    k = len(conditions)
    direction_mode, component_mode = forward_mode(conditions)
    edits = forward_edits(conditions, *lm.shape)
    on = lambda t: None if t is None else t.to(lm.device)  # noqa: E731
    dirs, heads, comps, means = on(edits.directions), on(edits.heads), on(edits.components), on(means)
    position = {p.pair_id: i for i, p in enumerate(pairs)}
    out = np.full((k, len(pairs)), np.nan, dtype=np.float32)
    own = [(i, c) for i, c in enumerate(conditions) if c.spec.measures_head]
    metrics_out = ({c.condition_id: np.full((len(pairs), len(METRICS)), np.nan, np.float32) for _, c in own}
                   if summarise else {})
    hooks = ComponentHooks(lm) if comps is not None else contextlib.nullcontext()
    with probe(lm, kernel) as pr, hooks:
        tokens = None if batch_tokens is None else batch_tokens // k
        for batch in length_batches(lm, pairs, max(1, batch_size // k), max_length, tokens):
            enc = lm.encode([p.query for p in batch], [p.doc for p in batch], max_length).to(lm.device)
            n = len(batch)
            rep = lambda t: None if t is None else t.repeat_interleave(n, 0)  # noqa: E731
            iv = Intervention(direction_mode, rep(dirs), rep(heads), rep(comps), component_mode,
                              means if component_mode == "mean" else None, _qk_edits(lm, edits, n))
            result = pr.run(enc.repeat(k), intervention=iv, summarise=True) if summarise else \
                pr.run(enc.repeat(k), intervention=iv)
            scores = result[0] if summarise else result
            cols = [position[p.pair_id] for p in batch]
            out[:, cols] = scores.view(k, n).cpu().numpy()
            for i, c in own if summarise else ():
                metrics_out[c.condition_id][cols] = result[1][i * n : (i + 1) * n, c.layer, c.head].cpu().numpy()
            if on_batch:
                on_batch(n * k)
    if np.isnan(out).any():
        raise RuntimeError("ablation pass produced NaN scores")
    if summarise:
        head_metrics.update(metrics_out)
    return {c.condition_id: out[i] for i, c in enumerate(conditions)}


# The estimate's timing probe scores a throw-away batch; it calls this name, not score_conditions, so
# what the pass itself scores stays observable (the tests count score_conditions calls).
_timing_scorer = score_conditions


def seconds_per_scoring(lm, pairs: Sequence, condition: Condition, *, batch_size: int, max_length: int,
                        kernel: str, means=None, batch_tokens: int | None = None) -> float:
    """Seconds per (pair, condition) scoring, from one timed batch of typical length after a warm-up (discarded).
    A subspace condition is timed as the pass runs it: with the summary kernel, which also measures its head."""
    import time

    from precompute.analyses.batching import typical_batch

    sample = typical_batch(pairs, batch_size)
    kw = dict(batch_size=batch_size, max_length=max_length, batch_tokens=batch_tokens, kernel=kernel, means=means,
              head_metrics={} if condition.spec.measures_head else None)
    _timing_scorer(lm, sample, [condition], **kw)  # warm-up
    t0 = time.perf_counter()
    _timing_scorer(lm, sample, [condition], **kw)
    return (time.perf_counter() - t0) / len(sample)
