"""Effectiveness of a set of scores with ir_measures (nDCG@10 and friends).

The pairs of a run are re-ranked by a score column; a pair's relevance is its judged grade, and
pairs never judged for their query (easy negatives, unjudged run candidates) count as
non-relevant (grade 0), as trec_eval does for unjudged documents.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

DEFAULT_MEASURES = ("nDCG@10",)


def parse_measures(names: Iterable[str]) -> list:
    """ir_measures objects from names like 'nDCG@10', 'RR@10', each checked the way ir_measures checks it before an
    evaluation (parameter types and choices, an installed provider that computes it) plus a cutoff of at least 1
    (trec_eval aborts the process on ``@0``); one-line ValueError naming the measure."""
    import ir_measures

    from precompute.console import one_line

    out = []
    for name in names:
        try:
            measure = ir_measures.parse_measure(name)
        except (ValueError, NameError, SyntaxError) as err:
            raise ValueError(f"unknown measure {name!r}: expected an ir_measures name such as nDCG@10, RR@10, P@10") from err
        cutoff = measure.params.get("cutoff")
        if cutoff is not None and (not isinstance(cutoff, int) or cutoff < 1):
            raise ValueError(f"measure {name!r}: the cutoff after @ must be a whole number of at least 1, such as "
                             f"nDCG@10; got {cutoff!r}")
        try:
            measure.validate_params()
            ir_measures.evaluator([measure], [])
        except (AssertionError, ValueError) as err:
            raise ValueError(f"measure {name!r} cannot be computed: {one_line(err)}") from err
        out.append(measure)
    return out



def qrels_for(qrels: dict[str, dict[str, int]], qids: Iterable[str]) -> list:
    """ir_measures Qrel records of the given queries (all their judgments, not only the scored pairs)."""
    import ir_measures

    return [ir_measures.Qrel(qid, docid, int(grade)) for qid in qids for docid, grade in qrels.get(qid, {}).items()]


def run_records(qids: Sequence[str], docids: Sequence[str], scores: Sequence[float]) -> list:
    import ir_measures

    return [ir_measures.ScoredDoc(q, d, float(s)) for q, d, s in zip(qids, docids, scores)]


def per_query(measures: Sequence, qrels: list, run: list) -> dict[str, dict[str, float]]:
    """measure name -> qid -> value, for every query that has judgments and scored pairs."""
    import ir_measures

    out: dict[str, dict[str, float]] = {str(m): {} for m in measures}
    for metric in ir_measures.iter_calc(list(measures), qrels, run):
        out[str(metric.measure)][metric.query_id] = float(metric.value)
    return out


def aggregate(measures: Sequence, qrels: list, run: list) -> dict[str, float]:
    import ir_measures

    return {str(m): float(v) for m, v in ir_measures.calc_aggregate(list(measures), qrels, run).items()}


def evaluator(measures: Sequence, qrels: list):
    """An ir_measures evaluator bound to ``qrels``: ``.iter_calc(run)`` for many runs without re-reading the qrels."""
    import ir_measures

    return ir_measures.evaluator(list(measures), qrels)
