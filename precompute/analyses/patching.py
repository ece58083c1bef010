"""Activation patching over a run's pairs, batched: how much of the score difference between a clean and a corrupted
input one component recovers.

For a (clean, corrupted) pair of inputs, the corrupted input is run with one activation replaced by the clean run's,
and ``effect = (patched - corrupted) / (clean - corrupted)`` (1 = the component carries the whole difference, 0 =
nothing). Where ``|clean - corrupted| < EPSILON`` the effect is NULL (counted, never dropped silently).

Experiments (``--patching tfc1,cls``):

* ``tfc1``, the term-frequency diagnostic of Chen et al. (SIGIR 2024) and MechIR: for each pair of the run, the
  clean passage is the passage with one query term inserted at its start, the corrupted one has a filler word of
  the same token count there instead, so every position aligns. The term is the query's first word that is not a
  stop word; the filler is the first word of :data:`FILLERS` with as many tokens that is not in the query. A pair
  where no such term and filler align (token counts, segments) is skipped and counted.
* ``cls``: a relevant passage (clean) against a hard negative (corrupted) of the same query, patched at the
  position the model's score is read at only (its family's pooling position: [CLS] for encoders, where
  transformers pools for decoder classifiers, the answer position of yes/no rerankers; MonoT5 has none and is
  refused), so the passages need not align. Up to ``--patching-pairs K`` (relevant, hard) combinations
  per query, drawn with the run's seed.

Granularities: per layer x component (``resid`` = the layer's output, ``attn``, ``mlp`` = the blocks' output
projections) x segment (every token, or one segment's; ``cls`` patches only the pooling position), and per layer x
head (a head's output before the output projection, at every position for ``tfc1`` and at the pooling position for
``cls``). Patch pairs are batched by token length; all variants of one layer are rows of one forward pass; layers
below the patched one are not recomputed (their activations are the corrupted run's, resumed from its captured
outputs). bench/patching.py measures the gain against one full forward per (pair, head).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from precompute.analyses import batching
from precompute.kernels.block_hooks import PATCH_COMPONENTS, PatchOp, hidden_of, repeat_rows
from precompute.names import PATCHING_EPSILON, SEGMENTS

EPSILON = PATCHING_EPSILON  # |clean - corrupted| below EPSILON: the effect is NULL
ALL = "all"  # segment of a patch at every token
STOP_WORDS = frozenset("a an and are as at be by do does for from how in is it of on or that the to was what when "
                       "where which who why with".split())
FILLERS: tuple[str, ...] = ("the", "and", "of", "to", "in", "was", "for", "on", "with", "as", "by", "at", "from",
                            "this", "that", "which", "also", "then", "there", "their", "these", "those", "about",
                            "after", "before", "between", "during", "however", "although", "because", "through")


class PatchingError(ValueError):
    """A patching request this model or run cannot have (one line, for the CLI)."""


@dataclass(frozen=True)
class PatchPair:
    """One (clean, corrupted) input of an experiment."""

    experiment: str
    patch_id: int
    pair_id: int  # the run's pair the corrupted input is (tfc1: the pair itself; cls: the hard negative)
    clean_pair_id: int | None  # cls: the relevant pair; tfc1: None (the clean input is the pair with the term)
    query: str
    clean_doc: str
    corrupted_doc: str
    term: str | None = None
    filler: str | None = None

    def row(self) -> dict:
        return {"experiment": self.experiment, "patch_id": self.patch_id, "pair_id": self.pair_id,
                "clean_pair_id": self.clean_pair_id, "term": self.term, "filler": self.filler}


# -- building the inputs ---------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]+", text.lower())


def _aligned(lm, query: str, clean: str, corrupted: str, max_length: int) -> bool:
    """Do the two inputs have the same length and the same segment at every position?"""
    batch = lm.encode([query, query], [clean, corrupted], max_length)
    lengths = batch.inputs["attention_mask"].sum(1).tolist()
    return lengths[0] == lengths[1] and bool(torch.equal(batch.segments[0], batch.segments[1]))


def tfc1_pairs(lm, pairs: Sequence, max_length: int) -> tuple[list[PatchPair], int]:
    """(the tfc1 inputs of ``pairs``, how many pairs had no aligned term and filler)."""
    out, skipped = [], 0
    for p in pairs:
        query_words = set(_words(p.query))
        found = None
        for term in (w for w in _words(p.query) if w not in STOP_WORDS):
            n = len(lm.tokenizer.tokenize(term))
            for filler in FILLERS:
                if filler in query_words or len(lm.tokenizer.tokenize(filler)) != n:
                    continue
                clean, corrupted = f"{term} {p.doc}", f"{filler} {p.doc}"
                if _aligned(lm, p.query, clean, corrupted, max_length):
                    found = (term, filler, clean, corrupted)
                    break
            if found:
                break
        if found is None:
            skipped += 1
            continue
        term, filler, clean, corrupted = found
        out.append(PatchPair("tfc1", len(out), p.pair_id, None, p.query, clean, corrupted, term, filler))
    return out, skipped


def cls_pairs(pairs: Sequence, per_query: int, seed: int) -> list[PatchPair]:
    """Up to ``per_query`` (relevant, hard negative) combinations per query, drawn with ``seed`` (per query)."""
    by_query: dict[str, tuple[list, list]] = {}
    for p in pairs:
        rel, hard = by_query.setdefault(p.qid, ([], []))
        (rel if p.neg_type == "relevant" else hard if p.neg_type == "hard" else []).append(p)
    out = []
    for qid, (rel, hard) in by_query.items():
        combos = [(r, h) for r in rel for h in hard]
        picked = random.Random(f"{seed}:{qid}:cls").sample(combos, min(per_query, len(combos)))
        for r, h in sorted(picked, key=lambda rh: (rh[0].pair_id, rh[1].pair_id)):
            out.append(PatchPair("cls", len(out), h.pair_id, r.pair_id, h.query, r.doc, h.doc))
    return out


# -- the sweep ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One patched activation: component ('resid', 'attn', 'mlp' or 'head'), segment ('all', a segment), head."""

    component: str
    segment: str
    head: int | None = None


def variants(experiment: str, heads: int) -> list[Variant]:
    segments = (ALL, *SEGMENTS) if experiment == "tfc1" else ("cls",)
    head_segment = ALL if experiment == "tfc1" else "cls"
    return ([Variant(c, s) for c in PATCH_COMPONENTS for s in segments]
            + [Variant("head", head_segment, h) for h in range(heads)])


def check_pooling(lm) -> None:
    """Refuse the cls experiment for a model whose score is read at no single encoder position (PatchingError)."""
    from precompute.families import FamilyError

    try:
        lm.family.check_pooling(lm.model)
    except FamilyError as err:
        raise PatchingError(f"the cls experiment patches the position the score is read at, and {err}; use tfc1") from err


def pooling_positions(lm, batch) -> torch.Tensor:
    """[batch] position each row's score is read at, as the model's family pools it."""
    return lm.family.pooling_positions(lm.model, batch.inputs)


def _positions(lm, experiment: str, variant: Variant, batch) -> torch.Tensor:
    """[batch, seq] bool: where a variant patches."""
    seg = batch.segments.long()
    if experiment == "cls":
        where = torch.zeros_like(seg, dtype=torch.bool)
        where[torch.arange(len(seg)), pooling_positions(lm, batch)] = True
        return where
    return (seg >= 0) if variant.segment == ALL else (seg == SEGMENTS.index(variant.segment))


def _source(clean: torch.Tensor, clean_batch, corrupted_batch, lm, experiment: str) -> torch.Tensor:
    """The clean activation laid out on the corrupted input's positions (cls: its pooling position only)."""
    if experiment == "tfc1":
        return clean
    out = torch.zeros((*corrupted_batch.segments.shape, *clean.shape[2:]), dtype=clean.dtype, device=clean.device)
    rows = torch.arange(len(out))
    out[rows, pooling_positions(lm, corrupted_batch)] = clean[rows, pooling_positions(lm, clean_batch)]
    return out


class Patcher:
    """A probe (the SDPA kernel where it computes the family's attention exactly, else the summary kernel's eager
    path) and the component hooks of a model, installed together for a sweep."""

    def __init__(self, lm):
        from precompute.kernels.sdpa import AblationProbe
        from precompute.kernels.block_hooks import ComponentHooks
        from precompute.kernels.eager import SummaryProbe

        self.lm = lm
        self.probe = AblationProbe(lm) if lm.family.sdpa_ablation(lm.model) else SummaryProbe(lm)
        self.hooks = ComponentHooks(lm)

    def __enter__(self):
        self.probe.__enter__()
        try:
            self.hooks.__enter__()
        except BaseException:
            self.probe.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)
        self.probe.__exit__(*exc)

    def run(self, batch, **state):
        """(scores, batch state) of one forward pass with the given state options (capture, patches, skipped)."""
        return self.probe.forward(batch, **state)


def _capture(patcher: Patcher, batch):
    scores, state = patcher.run(batch, capture=frozenset({*PATCH_COMPONENTS, "head"}))
    return scores, state.captured


def patch_batch(patcher: Patcher, experiment: str, clean, corrupted, *, rows_per_forward: int, resume: bool = True,
                only: str | None = None):
    """Effects of every variant at every layer for one batch of patch pairs: (clean [n], corrupted [n],
    patched {(layer, Variant): [n]}). ``resume`` False recomputes the layers below each patched one; ``only`` keeps
    the variants of one component ('head': the head sweep)."""
    lm = patcher.lm
    n = corrupted.segments.shape[0]
    clean_scores, clean_acts = _capture(patcher, clean)
    corrupted_scores, corrupted_acts = _capture(patcher, corrupted)
    layers, heads = lm.shape
    todo = [v for v in variants(experiment, heads) if only is None or v.component == only]
    per_forward = max(1, rows_per_forward // n)
    patched: dict[tuple[int, Variant], torch.Tensor] = {}
    for layer in range(layers):
        for start in range(0, len(todo), per_forward):
            group = todo[start : start + per_forward]
            k = len(group)
            ops = []
            for i, v in enumerate(group):
                where = _positions(lm, experiment, v, corrupted)
                src = clean_acts[("head", layer)][:, v.head] if v.component == "head" else \
                    hidden_of(clean_acts[(v.component, layer)])  # [n, seq, head_dim | hidden]
                ops.append(PatchOp(v.component, layer, slice(i * n, (i + 1) * n), where,
                                   _source(src, clean, corrupted, lm, experiment), v.head))
            batch = corrupted.repeat(k)
            if resume and layer > 0:
                outputs = {i: repeat_rows(corrupted_acts[("resid", i)], k, n) for i in range(layer)}
                with patcher.hooks.resume_above(layer, outputs):
                    scores, _ = patcher.run(batch, patches=tuple(ops), skipped=frozenset(range(layer)))
            else:
                scores, _ = patcher.run(batch, patches=tuple(ops))
            for i, v in enumerate(group):
                patched[(layer, v)] = scores[i * n : (i + 1) * n]
    return clean_scores, corrupted_scores, patched


def effect(clean: np.ndarray, corrupted: np.ndarray, patched: np.ndarray) -> np.ndarray:
    """(patched - corrupted) / (clean - corrupted), NaN (stored NULL) where |clean - corrupted| < EPSILON."""
    diff = clean - corrupted
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(diff) < EPSILON, np.nan, (patched - corrupted) / diff)


def effect_rows(experiment: str, items: Sequence[PatchPair], clean, corrupted, patched) -> dict[str, list]:
    """``patching_effects`` columns of one batch."""
    clean, corrupted = clean.float().cpu().numpy(), corrupted.float().cpu().numpy()
    cols: dict[str, list] = {k: [] for k in ("experiment", "patch_id", "pair_id", "layer", "head", "component",
                                             "segment", "clean", "corrupted", "patched", "effect")}
    for (layer, v), scores in patched.items():
        p = scores.float().cpu().numpy()
        e = effect(clean, corrupted, p)
        for j, item in enumerate(items):
            for key, value in (("experiment", experiment), ("patch_id", item.patch_id), ("pair_id", item.pair_id),
                               ("layer", layer), ("head", v.head), ("component", v.component),
                               ("segment", v.segment), ("clean", clean[j]), ("corrupted", corrupted[j]),
                               ("patched", p[j]), ("effect", None if np.isnan(e[j]) else float(e[j]))):
                cols[key].append(value)
    return cols


def run_experiment(lm, experiment: str, items: Sequence[PatchPair], *, batch_size: int, max_length: int,
                   batch_tokens: int | None = None, on_batch: Callable[[int], None] | None = None) -> dict[str, list]:
    """``patching_effects`` columns of ``items`` (batches of pairs as :func:`~precompute.analyses.batching.patch_batches` forms them, every layer
    and variant each; rows in batch order: the stage's merge sorts them)."""
    cols: dict[str, list] = {}
    with Patcher(lm) as patcher:
        for chunk, clean, corrupted, rows in batching.patch_batches(lm, items, batch_size=batch_size, max_length=max_length,
                                                           batch_tokens=batch_tokens):
            clean_s, corrupted_s, patched = patch_batch(patcher, experiment, clean, corrupted, rows_per_forward=rows)
            for key, values in effect_rows(experiment, chunk, clean_s, corrupted_s, patched).items():
                cols.setdefault(key, []).extend(values)
            if on_batch:
                on_batch(len(chunk))
    return cols
