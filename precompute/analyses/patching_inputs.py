"""The (clean, corrupted) inputs of the activation-patching experiments: axiomatic diagnostics of IR (Fang, Tao and
Zhai 2004; Fang and Zhai 2006) as patching experiments (Chen et al., SIGIR 2024, "Axiomatic Causal Interventions for
Reverse Engineering Relevance Computation in Neural Retrieval Models"; Lu, Chen and Eickhoff 2025, arXiv 2502.04645),
plus a relevant-vs-hard-negative contrast. docs/patching.md defines each with an example.

Every experiment but ``cls`` inserts words at the start of a run pair's passage (so truncation never cuts them), one
version in the clean input and one of as many tokens in the corrupted input, so every position aligns:

* ``tfc1`` (one more occurrence of a query term): clean ``<term> passage``, corrupted ``<filler> passage``;
* ``tfc2`` (more occurrences: term saturation): clean ``<term> <term> passage``, corrupted ``<term> <filler> passage``:
  what a second added occurrence adds on top of a first;
* ``stmc1`` (semantic term matching): clean ``<related> passage``, corrupted ``<filler> passage``, where ``related`` is
  a word close in meaning to the query term and not a query word: what a semantic match adds over none.

The term is the query's first content word (not a stop word). When no filler of its token count aligns (or, for
stmc1, it has no related word), the next content word is taken and the input's ``rule`` says which word was skipped
and why; nothing moves silently. The filler is the first word of :data:`FILLERS` with as many tokens that is not in
the query. stmc1's related word is the nearest neighbour of the term in the model's own input embeddings (cosine; the
term's tokens averaged) among whole-word vocabulary tokens (one token when encoded on their own, letters only, at
least three) that are not a query word, a stop word or filler, nor share their first four letters with the term or
contain it (morphological variants are the same term, not a semantic match). No network, no thesaurus: it is what
the model itself places nearest, recorded with its cosine.

Up to ``per_query`` run pairs per query take part, the same pairs for the three experiments: the query's pairs in an
order shuffled with the run's seed, taken until ``per_query`` have aligned inputs (pairs without are counted).

``cls``: a relevant passage (clean) against a hard negative (corrupted) of the same query, up to ``per_query``
(relevant, hard) combinations per query drawn with the seed; patched at the pooling position only, so the passages
need not align.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

STOP_WORDS = frozenset("a an and are as at be by do does for from how in is it of on or that the to was what when "
                       "where which who why with".split())
FILLERS: tuple[str, ...] = ("the", "and", "of", "to", "in", "was", "for", "on", "with", "as", "by", "at", "from",
                            "this", "that", "which", "also", "then", "there", "their", "these", "those", "about",
                            "after", "before", "between", "during", "however", "although", "because", "through")
INSERTING = ("tfc1", "tfc2", "stmc1")  # experiments that insert words at the passage's start (positions align)
NEIGHBOURS_TRIED = 200  # nearest vocabulary tokens tried for stmc1's related word


@dataclass(frozen=True)
class PatchPair:
    """One (clean, corrupted) input of an experiment, with how it was built."""

    experiment: str
    patch_id: int
    pair_id: int  # the run's pair the corrupted input is (inserting experiments: the pair itself; cls: the hard one)
    clean_pair_id: int | None  # cls: the relevant pair; None otherwise (the clean input is the pair, words inserted)
    qid: str
    query: str
    clean_doc: str
    corrupted_doc: str
    term: str | None = None
    filler: str | None = None
    clean_insert: str | None = None
    corrupted_insert: str | None = None
    rule: str | None = None
    similarity: float | None = None

    def row(self) -> dict:
        return {"experiment": self.experiment, "patch_id": self.patch_id, "pair_id": self.pair_id,
                "clean_pair_id": self.clean_pair_id, "term": self.term, "filler": self.filler,
                "clean_insert": self.clean_insert, "corrupted_insert": self.corrupted_insert, "rule": self.rule,
                "similarity": self.similarity}


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]+", text.lower())


def _token_count(lm, text: str) -> int:
    return len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def _aligned(lm, query: str, clean: str, corrupted: str, max_length: int) -> bool:
    """Do the two inputs have the same length and the same segment at every position?"""
    batch = lm.encode([query, query], [clean, corrupted], max_length)
    lengths = batch.inputs["attention_mask"].sum(1).tolist()
    return lengths[0] == lengths[1] and bool(torch.equal(batch.segments[0], batch.segments[1]))


@dataclass
class RelatedWords:
    """stmc1's related word of a term, from the model's input embeddings (module docstring); cached per term."""

    lm: object
    _cache: dict = field(default_factory=dict)

    def __call__(self, term: str, query_words: set[str]) -> tuple[str, float] | None:
        key = (term, frozenset(query_words))
        if key not in self._cache:
            self._cache[key] = self._nearest(term, query_words)
        return self._cache[key]

    def _nearest(self, term: str, query_words: set[str]) -> tuple[str, float] | None:
        tokenizer = self.lm.tokenizer
        table = self.lm.model.get_input_embeddings().weight.detach().float()
        ids = tokenizer(term, add_special_tokens=False)["input_ids"]
        if not ids:
            return None
        target = table[ids].mean(0)
        cosine = torch.nn.functional.cosine_similarity(table, target[None], dim=-1)
        cosine[ids] = -2.0
        for index in torch.argsort(cosine, descending=True)[:NEIGHBOURS_TRIED].tolist():
            word = tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(index)]).strip().lower()
            if (len(word) < 3 or not word.isalpha() or word in query_words or word in STOP_WORDS or word in FILLERS
                    or word[:4] == term[:4] or term in word or word in term):
                continue
            if tokenizer(word, add_special_tokens=False)["input_ids"] != [index]:
                continue  # a piece of a word (##ing, a SentencePiece continuation), not a word of its own
            return word, float(cosine[index])
        return None


def _inserts(experiment: str, term: str, subject: str, filler: str) -> tuple[str, str]:
    """(clean insert, corrupted insert) of an inserting experiment."""
    if experiment == "tfc2":
        return f"{term} {term}", f"{term} {filler}"
    return subject, filler


def _content_words(query: str) -> list[str]:
    return list(dict.fromkeys(w for w in words(query) if w not in STOP_WORDS))


def _with_term(experiment: str, lm, pair, term: str, query_words: set[str], max_length: int,
               related: RelatedWords | None):
    """(clean insert, corrupted insert, filler, similarity) for one term of ``pair``, or (None, why not)."""
    subject, similarity = term, None
    if experiment == "stmc1":
        found = related(term, query_words)
        if found is None:
            return None, "no related word among its input-embedding neighbours"
        subject, similarity = found
    n = _token_count(lm, subject)
    fillers = [f for f in FILLERS if f not in query_words and _token_count(lm, f) == n]
    if not fillers:
        return None, f"no filler of {n} tokens"
    for filler in fillers:
        clean, corrupted = _inserts(experiment, term, subject, filler)
        if _aligned(lm, pair.query, f"{clean} {pair.doc}", f"{corrupted} {pair.doc}", max_length):
            return clean, corrupted, filler, similarity
    return None, f"no filler of {n} tokens tokenizes like '{subject}' in the input"


def _build(experiment: str, lm, pair, max_length: int, related: RelatedWords | None):
    """(clean insert, corrupted insert, term, filler, rule, similarity) of one run pair, or (None, why not)."""
    query_words = set(words(pair.query))
    skipped = []
    for position, term in enumerate(_content_words(pair.query)):
        made = _with_term(experiment, lm, pair, term, query_words, max_length, related)
        if made[0] is None:
            skipped.append(f"'{term}' skipped: {made[1]}")
            continue
        clean, corrupted, filler, similarity = made
        rule = "the query's first content word" if position == 0 else \
            f"the query's content word {position + 1} ({'; '.join(skipped)})"
        if experiment == "stmc1":
            rule += f"; related word '{clean}': nearest input-embedding neighbour of '{term}' (cosine {similarity:.3f})"
        return clean, corrupted, term, filler, rule, similarity
    return None, "; ".join(skipped) or "no content word in the query"


def _by_query(pairs: Sequence) -> dict[str, list]:
    out: dict[str, list] = {}
    for p in pairs:
        out.setdefault(p.qid, []).append(p)
    return out


def inserted_pairs(experiment: str, lm, pairs: Sequence, max_length: int, *, per_query: int,
                   seed: int) -> tuple[list[PatchPair], int]:
    """(the inputs of an inserting experiment, the drawn run pairs left out for want of aligned inputs)."""
    related = RelatedWords(lm) if experiment == "stmc1" else None
    out, skipped = [], 0
    for qid, group in _by_query(pairs).items():
        order = sorted(group, key=lambda p: p.pair_id)
        random.Random(f"{seed}:{qid}:patching-inputs").shuffle(order)
        built = []
        for pair in order:
            if len(built) == per_query:
                break
            made = _build(experiment, lm, pair, max_length, related)
            if made[0] is None:
                skipped += 1
                continue
            built.append((pair, made))
        for pair, (clean, corrupted, term, filler, rule, similarity) in sorted(built, key=lambda b: b[0].pair_id):
            out.append(PatchPair(experiment, len(out), pair.pair_id, None, pair.qid, pair.query,
                                 f"{clean} {pair.doc}", f"{corrupted} {pair.doc}", term, filler, clean, corrupted,
                                 rule, similarity))
    return out, skipped


def cls_pairs(pairs: Sequence, per_query: int, seed: int) -> list[PatchPair]:
    """Up to ``per_query`` (relevant, hard negative) combinations per query, drawn with ``seed`` (per query)."""
    out = []
    for qid, group in _by_query(pairs).items():
        rel = [p for p in group if p.neg_type == "relevant"]
        hard = [p for p in group if p.neg_type == "hard"]
        combos = [(r, h) for r in rel for h in hard]
        picked = random.Random(f"{seed}:{qid}:cls").sample(combos, min(per_query, len(combos)))
        for r, h in sorted(picked, key=lambda rh: (rh[0].pair_id, rh[1].pair_id)):
            out.append(PatchPair("cls", len(out), h.pair_id, r.pair_id, qid, h.query, r.doc, h.doc,
                                 rule="a relevant passage (clean) and a hard negative (corrupted) of the query"))
    return out


def experiment_inputs(experiment: str, lm, pairs: Sequence, max_length: int, *, per_query: int,
                      seed: int) -> tuple[list[PatchPair], int]:
    """(an experiment's inputs, run pairs drawn but left out) for the run's ``pairs``."""
    if experiment == "cls":
        return cls_pairs(pairs, per_query, seed), 0
    return inserted_pairs(experiment, lm, pairs, max_length, per_query=per_query, seed=seed)
