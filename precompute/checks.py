"""Checks of the job's flags against the loaded model and the pairs, run before any pass.

Why here and not where the flags are used: the ablation stage parses --ablation-layers and --ablation-heads
after the summary pass (hours on MonoBERT-large), and a --max-length the model cannot take fails inside the
first forward pass with a traceback. :func:`precompute.job.run` calls :func:`check_model_settings` right after
loading the model and :func:`check_pairs_fit` right after building the pairs; each raises one line.
"""

from __future__ import annotations

from precompute.conditions import AblationRequest
from precompute.families.loading import ModelError, learned_positions


def check_ablation_flags(cfg, lm) -> None:
    """Layer and head numbers exist in the model and ranges run low to high (AblationSpecError naming the flag)."""
    if cfg.ablations:
        AblationRequest.from_config(cfg).conditions(*lm.shape)


def check_max_length(cfg, lm) -> None:
    """--max-length within the positions the model learned (absolute position embeddings only)."""
    limit = learned_positions(lm.model)
    if limit is not None and cfg.max_length > limit:
        raise ModelError(f"--max-length {cfg.max_length} is more than the {limit} positions model {lm.spec!r} learned; "
                         f"pass --max-length {limit} or less")


def check_model_settings(cfg, lm) -> None:
    check_max_length(cfg, lm)
    check_ablation_flags(cfg, lm)


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


def check_kernels(lm) -> None:
    """One tiny pair through the summary kernel (and the SDPA ablation kernel where the run would use it), so an
    architecture that passes an attention argument the kernels do not implement, or that calls attention other
    than once per layer, is refused in one line before any pass, not hours into it."""
    from precompute.kernels.sdpa import AblationProbe
    from precompute.kernels.state import KernelError
    from precompute.kernels.eager import SummaryProbe

    batch = lm.encode(["what is a query"], ["a short document about a query"], 64).to(lm.device)
    try:
        with SummaryProbe(lm) as probe:
            probe.run(batch, summarise=True)
        if lm.family.sdpa_ablation(lm.model):
            with AblationProbe(lm) as probe:
                probe.run(batch)
    except KernelError as err:
        raise ModelError(f"model {lm.spec!r} ({lm.family.name} family) cannot be probed faithfully: {err}") from err
