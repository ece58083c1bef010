"""Attribution patching (Nanda 2023; Kramár et al. 2024, "AtP*", arXiv 2403.00745): the first-order estimate of every
site's exact patching effect (:mod:`precompute.analyses.patching`) from one clean forward pass, one corrupted forward
pass and one backward pass, batched over patch pairs.

Patching a site's clean activation ``a_c`` into the corrupted run changes the score, to first order, by
``(a_c - a_k) . d score / d a`` with the gradient taken on the corrupted run (``a_k``: the corrupted activation),
summed over the positions the site patches. A site is stored with ``patched = corrupted + estimate``, so its effect
is computed as an exact one's is. Where the score is linear in the patched activation the estimate is exact
(tests/precompute/analyses/test_attribution.py builds such models of three families).

AtP*'s two fixes, and what they apply to here:

* **QK fix** (attention saturation: a softmax linearised around a saturated pattern misses large effects). AtP*
  recomputes the softmax exactly for nodes that are an attention's queries or keys. A *head* site patches the head's
  output, after its softmax: its change ``a_c - a_k`` comes from two exact forward passes, so its own softmax is never
  linearised and nothing is to fix there (as for AtP*'s attention-output nodes). Block outputs (``attn``, ``mlp``) and
  ``resid_post`` feed no softmax of their layer. The residual stream entering a layer (``resid``) is that layer's
  queries' and keys' input: there the fix is applied. The layer's attention weights are recomputed exactly with the
  patched stream (a partial forward pass per layer that stops after its attention), and their change enters through
  the gradient with respect to the weights, in place of its linearisation:
  ``estimate = (a_c - a_k) . (g - g_A) + <dL/dA, A_patched - A>``, where ``g_A`` is the part of the gradient that flows
  through the layer's attention weights (``A`` the corrupted weights, ``dL/dA`` their gradient). Later layers' softmaxes
  stay linearised, as in AtP*.
* **GradDrop** (cancellation: a site's direct and indirect effects cancel to first order while each is large).
  With the gradient through one layer's block outputs dropped at a time (``kernels.block_hooks.GradGates``), one
  backward pass per layer gives estimates ``c_l``; a site's GradDrop score is ``sum_l |c_l| / (L - 1)`` (stored in
  ``patching_effects.graddrop``): large where the plain estimate may hide cancelling paths. It costs a backward pass
  per layer, so it is optional (``--patching-graddrop``). It is computed on the linear estimate (without the QK fix's
  exact term).

Gradients are computed in the model's dtype (bfloat16 runs are attributed in bfloat16) and the products summed in
float32. The model's parameters never need gradients: the first layer's input is the graph's leaf.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from precompute.analyses.patching import Patcher, Site, on_corrupted, site_masks
from precompute.kernels.block_hooks import OUTPUT, GradGates, PatchOp, Stopped, repeat_rows


@contextlib.contextmanager
def _frozen(model):
    """The model's parameters do not require grad inside the block (no parameter gradients are built)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _keys(sites: Sequence[Site]) -> list[tuple[str, int]]:
    """The captured activations (kind, layer) the sites need, in a fixed order."""
    return sorted({("head" if v.component == "head" else v.component, layer) for layer, v in sites})


def _dots(delta: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    """Per-position (per-head) products summed over the feature axis, float32: [n, seq] (or [n, head, seq])."""
    if grad is None:
        return torch.zeros(delta.shape[:-1], dtype=torch.float32, device=delta.device)
    return (delta.float() * grad.float()).sum(-1)


def _estimates(sites, dots: dict, masks: dict) -> dict[Site, torch.Tensor]:
    """Each site's estimate [n]: its activation's per-position products summed over where it patches."""
    out = {}
    for layer, v in sites:
        where = masks[v.segment].float()
        if v.component == "head":
            out[(layer, v)] = (dots[("head", layer)][:, v.head] * where).sum(-1)
        else:
            out[(layer, v)] = (dots[(v.component, layer)] * where).sum(-1)
    return out


def _patched_weights(patcher: Patcher, experiment: str, corrupted, outputs: dict, layer: int, segments, deltas,
                     scale: str) -> torch.Tensor:
    """[len(segments) * n, head, q, k]: the attention weights of ``layer`` with the residual stream entering it
    patched at each segment's positions (one block of rows per segment), computed by a pass that stops there."""
    n = corrupted.segments.shape[0]
    k = len(segments)
    masks = site_masks(patcher.lm, experiment, corrupted)
    source = deltas  # the clean stream laid out on the corrupted positions
    ops = tuple(PatchOp("resid", layer, slice(i * n, (i + 1) * n), masks[s], source) for i, s in enumerate(segments))
    options = dict(scale=scale, patches=ops, capture=frozenset({"weights"}), stop_after=layer)
    try:
        if layer > 0:
            with patcher.hooks.resume_above(layer, repeat_rows(outputs[layer - 1], k, n)):
                patcher.run(corrupted.repeat(k), skipped=frozenset(range(layer)), **options)
        else:
            patcher.run(corrupted.repeat(k), **options)
    except Stopped as stop:
        return stop.state.captured[("weights", layer)]
    raise RuntimeError(f"the pass did not stop after the attention of layer {layer}")


def attribute_batch(patcher: Patcher, experiment: str, clean, corrupted, sites: Sequence[Site], *,
                    scale: str = "logit", graddrop: bool = False, qk_fix: bool = True):
    """First-order effects of ``sites`` for one batch of patch pairs: (clean [n], corrupted [n], patched {site: [n]}
    = corrupted + estimate, GradDrop scores {site: [n]} or None). ``patcher`` must hold the eager kernel."""
    lm = patcher.lm
    keys = _keys(sites)
    kinds = frozenset(kind for kind, _ in keys)
    resid_layers = sorted({layer for layer, v in sites if v.component == "resid"}) if qk_fix else []
    with torch.inference_mode():
        clean_scores, state = patcher.run(clean, scale=scale, capture=kinds)
    clean_acts = state.captured
    gates = GradGates()
    with _frozen(lm.model):
        capture = kinds | ({"weights", "resid", OUTPUT} if resid_layers else set())
        corrupted_scores, state = patcher.run(corrupted, scale=scale, capture=frozenset(capture), gates=gates)
        acts = state.captured
        tensors = [acts[key] for key in keys]
        weights = [acts[("weights", layer)] for layer in resid_layers]
        total = corrupted_scores.sum()
        grads = torch.autograd.grad(total, tensors + weights, retain_graph=bool(resid_layers) or graddrop,
                                    allow_unused=True)
        deltas = {key: _delta(lm, experiment, key, clean_acts, acts, clean, corrupted) for key in keys}
        masks = site_masks(lm, experiment, corrupted)
        dots = {key: _dots(deltas[key], g) for key, g in zip(keys, grads)}
        fixes = {}
        for layer, d_weights in zip(resid_layers, grads[len(tensors):]):
            fixes[layer] = _qk_fix(patcher, experiment, corrupted, acts, layer, d_weights, deltas, masks, scale,
                                   retain=graddrop or layer != resid_layers[-1])
        estimates = _estimates(sites, dots, masks)
        for (layer, v), value in list(estimates.items()):
            if v.component == "resid" and layer in fixes:
                estimates[(layer, v)] = value + fixes[layer][v.segment]
        dropped = _graddrop(gates, total, tensors, keys, deltas, sites, masks, len(lm.family.layers(lm.model))) \
            if graddrop else None
    corrupted_scores = corrupted_scores.detach()
    patched = {site: corrupted_scores.float() + estimate for site, estimate in estimates.items()}
    return clean_scores, corrupted_scores, patched, dropped


def _delta(lm, experiment: str, key: tuple[str, int], clean_acts: dict, acts: dict, clean, corrupted) -> torch.Tensor:
    """Clean minus corrupted activation of ``key`` on the corrupted input's positions (heads: [n, head, seq, dh])."""
    clean_act, corrupted_act = clean_acts[key], acts[key].detach()
    if key[0] == "head":  # positions second, as on_corrupted lays them out
        moved = on_corrupted(lm, experiment, clean_act.transpose(1, 2), clean, corrupted).transpose(1, 2)
        return moved - corrupted_act
    return on_corrupted(lm, experiment, clean_act, clean, corrupted) - corrupted_act


def _qk_fix(patcher, experiment, corrupted, acts, layer, d_weights, deltas, masks, scale, *, retain: bool):
    """segment -> [n]: for the sites patching the stream entering ``layer``, the exact change of the layer's attention
    weights times their gradient, minus the linearised change the plain estimate holds (module docstring)."""
    n = corrupted.segments.shape[0]
    x, weights = acts[("resid", layer)], acts[("weights", layer)]
    if d_weights is None:
        return {s: torch.zeros(n, device=x.device) for s in masks}
    (g_pattern,) = torch.autograd.grad(weights, x, grad_outputs=d_weights, retain_graph=retain, allow_unused=True)
    linear = _dots(deltas[("resid", layer)], g_pattern)  # [n, seq]
    segments = list(masks)
    outputs = {i: acts[(OUTPUT, i)] for i in range(layer)}
    source = acts[("resid", layer)].detach() + deltas[("resid", layer)]
    with torch.no_grad():
        patched = _patched_weights(patcher, experiment, corrupted, {i: _detached(o) for i, o in outputs.items()},
                                   layer, segments, source, scale)
        # <dL/dA, A_patched - A> per segment and pair as two contractions: no [segments, n, head, q, k] difference or
        # product is materialised (MiniLM, 8 pairs x 145 tokens: 19 instead of 70 ms of CPU per layer)
        flat = d_weights.float().flatten(1)  # [n, head * q * k]
        before = torch.einsum("nx,nx->n", weights.detach().float().flatten(1), flat)
        exact = torch.einsum("snx,nx->sn", patched.float().view(len(segments), n, -1), flat) - before[None]
    return {s: exact[i] - (linear * masks[s].float()).sum(-1) for i, s in enumerate(segments)}


def _detached(output):
    if isinstance(output, tuple):
        return tuple(_detached(x) for x in output)
    return output.detach() if isinstance(output, torch.Tensor) else output


def _graddrop(gates: GradGates, total, tensors, keys, deltas, sites, masks, layers: int) -> dict[Site, torch.Tensor]:
    """Each site's GradDrop score [n]: sum over layers l of |estimate with layer l's block gradients dropped|, / (L-1)."""
    summed: dict[Site, torch.Tensor] = {}
    for layer in range(layers):
        gates.dropped = layer
        grads = torch.autograd.grad(total, tensors, retain_graph=layer < layers - 1, allow_unused=True)
        estimates = _estimates(sites, {key: _dots(deltas[key], g) for key, g in zip(keys, grads)}, masks)
        for site, value in estimates.items():
            summed[site] = summed.get(site, 0) + value.abs()
    gates.dropped = None
    return {site: value / max(1, layers - 1) for site, value in summed.items()}
