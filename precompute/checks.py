"""Checks of the job's flags and inputs against the loaded model and the pairs, run before any pass.

Why here and not where the flags are used: the ablation stage parses --ablation-layers and --ablation-heads
after the summary pass (hours on MonoBERT-large), a --max-length the model cannot take fails inside the
first forward pass with a traceback, and NaN scores would only show as a NaN nDCG at the end.
:func:`precompute.job.run` calls :func:`check_out_folder` before anything is written, :func:`check_model_settings`
right after loading the model, and :func:`check_pairs_fit` and :func:`check_probe_scores` right after building the
pairs; each raises one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from precompute.conditions import AblationRequest
from precompute.families.loading import ModelError, learned_positions
from precompute.store.writer import StoreError


def check_ablation_flags(cfg, lm) -> None:
    """Layer, head and k numbers exist in the model, ranges run low to high, and the model can have the QK-subspace
    interventions asked for (AblationSpecError or SubspaceError naming the flag). Listed --subspace-heads are checked
    here; ``top:N`` is resolved by the ablation stage among the heads the model has."""
    if not cfg.ablations:
        return
    request = AblationRequest.from_config(cfg)
    listed = request.subspace_targets() if "subspace" in cfg.ablations else []
    request.conditions(*lm.shape, subspace_heads=listed if isinstance(listed, list) else [], head_dim=lm.head_dim)
    if "subspace" in cfg.ablations:
        from precompute.analyses.subspace import check_model

        check_model(lm)


def check_max_length(cfg, lm) -> None:
    """--max-length within the positions the model learned (absolute position embeddings only)."""
    limit = learned_positions(lm.model)
    if limit is not None and cfg.max_length > limit:
        raise ModelError(f"--max-length {cfg.max_length} is more than the {limit} positions model {lm.spec!r} learned; "
                         f"pass --max-length {limit} or less")


def check_patching(cfg, lm) -> None:
    """The patching experiments asked for exist for the model: cls patches the pooling position, which an
    encoder-decoder has not (it was refused only after the ablation pass)."""
    if "cls" not in cfg.patching:
        return
    from precompute.families import FamilyError

    try:
        lm.family.check_pooling(lm.model)
    except FamilyError as err:
        raise ModelError(f"--patching cls: the cls experiment patches the pooling position; {err}") from err


def check_model_settings(cfg, lm) -> None:
    check_max_length(cfg, lm)
    check_ablation_flags(cfg, lm)
    check_patching(cfg, lm)


def check_pairs_fit(cfg, lm, pair_set) -> None:
    """--max-length holds the longest query, the special tokens and at least one document token (only the
    document is truncated: a query that does not fit cannot be scored)."""
    queries = {p.query: p for p in pair_set.pairs}
    lengths = lm.tokenizer(list(queries), add_special_tokens=False, return_length=True,
                           return_attention_mask=False, return_token_type_ids=False)["length"]
    pair = queries[max(zip(lengths, queries), key=lambda lq: lq[0])[1]]
    if _fits(lm, pair, cfg.max_length):
        return
    longest = max(lengths)
    need = next((n for n in range(cfg.max_length + 1, longest + 256) if _fits(lm, pair, n)), None)
    advice = f"pass --max-length {need} or more" if need else "pass a larger --max-length"
    raise ModelError(f"--max-length {cfg.max_length} cannot hold the longest query (qid {pair.qid}, {longest} tokens) "
                     f"with its special tokens and one document token; {advice}")


def _fits(lm, pair, max_length: int) -> bool:
    try:
        batch = lm.encode([pair.query], [pair.doc], max_length)
    except Exception:  # the tokenizers library raises a bare Exception when the query alone overflows
        return False
    return batch.d_tokens[0] >= 1


@dataclass(frozen=True)
class _Pair:
    query: str
    doc: str


_PROBE_PAIR = _Pair("what is a query", "a short document about a query")
_UNTRUNCATED = 1 << 16  # a length no probe pair reaches: the pair as it is


def check_kernels(lm, max_length: int) -> None:
    """One tiny pair through the summary kernel (and the SDPA ablation kernel where the run would use it), so an
    architecture that passes an attention argument the kernels do not implement, or that calls attention other
    than once per layer, is refused in one line before any pass, not hours into it. The pair is encoded at the run's
    own ``max_length`` (--max-length): a long template (Qwen3-Reranker's default, a 66-token MonoT5 prompt) fits
    wherever the run's pairs would. Where even this pair does not fit, it is probed at its own length: whether the
    run's pairs fit is :func:`check_pairs_fit`'s to say, naming the query."""
    from precompute.kernels.sdpa import AblationProbe
    from precompute.kernels.state import KernelError
    from precompute.kernels.eager import SummaryProbe

    pair = _PROBE_PAIR
    length = max_length if _fits(lm, pair, max_length) else _UNTRUNCATED
    batch = lm.encode([pair.query], [pair.doc], length).to(lm.device)
    try:
        with SummaryProbe(lm) as probe:
            probe.run(batch, summarise=True)
        if lm.family.sdpa_ablation(lm.model):
            with AblationProbe(lm) as probe:
                probe.run(batch)
    except KernelError as err:
        raise ModelError(f"model {lm.spec!r} ({lm.family.name} family) cannot be probed faithfully: {err}") from err


def check_probe_scores(cfg, lm, pair_set, size: int = 8) -> None:
    """The first pairs scored through the summary kernel, as the pass will score them: a model whose scores are NaN
    or infinite (weights that overflow in --dtype, a model that is numerically broken) is refused in one line before
    the pass, instead of a store of NaN scores and an nDCG computed from them."""
    import torch

    from precompute.kernels.eager import SummaryProbe

    probe_pairs = pair_set.pairs[:size]
    batch = lm.encode([p.query for p in probe_pairs], [p.doc for p in probe_pairs], cfg.max_length).to(lm.device)
    with SummaryProbe(lm) as probe:
        scores, _, _ = probe.run(batch, summarise=True)
    bad = [p for p, finite in zip(probe_pairs, torch.isfinite(scores).tolist()) if not finite]
    if bad:
        raise ModelError(f"model {lm.spec!r} scores {len(bad)} of the first {len(probe_pairs)} pairs as NaN or infinite "
                         f"(pair {bad[0].pair_id}: query {bad[0].qid}, passage {bad[0].docid}) in {lm.dtype}; "
                         + ("try --dtype float32, or " if lm.dtype != "float32" else "") + "use another checkpoint")


def check_out_folder(root: Path, ds, model_spec: str) -> None:
    """The job never writes into its inputs: --out (or --store) must not lie inside the dataset folder or the model
    folder, whose files it would mix with tables, a manifest, a lock and a catalog."""
    out = Path(root).expanduser().resolve()
    inputs = [("dataset", ds.source)] if ds.doc_store_path is not None else []
    inputs.append(("model", model_spec))
    for what, folder in inputs:
        folder = Path(folder).expanduser()
        if folder.is_dir() and out.is_relative_to(folder.resolve()):
            raise StoreError(f"the run folder {root} lies inside the {what} folder {folder}; the job never writes into "
                             "its inputs: pass an --out (or --store) outside it")
