"""The query-level statistics of issue 18 that are computed from stored tables (nothing is written): Table 1's
ranking effects, direct paired contrasts of two conditions, lexical vs semantic matching by layer and alignment vs
behaviour. Each is one computation of :mod:`precompute.analyses` (ranking_effects, lexical_layers,
alignment_behaviour) returned as a DataFrame; the report prints these frames and the app shows them. Every bootstrap
and permutation is seeded with the run's seed unless ``seed`` is given, so the app, the report and a notebook get the
same intervals byte for byte.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from matching_atlas import sqltext as sq
from matching_atlas.reading import Reader
from precompute.analyses import ranking_effects as R
from precompute.conditions import contrasts as C

MEASURE, SCOPE = "nDCG@10", "pairs"


def _cutoff(measure: str) -> int:
    """The k of nDCG@k (10 for any other measure: the tie-expected nDCG is reported at 10 then)."""
    found = re.fullmatch(r"(?i)ndcg@(\d+)", measure)
    return int(found.group(1)) if found else 10


def _spread(name: str, value: tuple[float, float, float]) -> dict:
    e, lo, hi = value
    return {name: float(e), f"{name}_low": float(lo), f"{name}_high": float(hi)}


class EffectTables(Reader):
    """Methods of :class:`matching_atlas.Run` for the query-level analyses computed from stored tables."""

    def _seed(self, seed: int | None) -> int:
        if seed is not None:
            return int(seed)
        manifest = self.info.manifest
        return int((manifest.identity.seed if manifest else 0) or 0)

    def _ranking_effects(self, scope: str, measure: str) -> R.RankingEffects:
        return R.per_query(self.connection.cursor(), scope, k=_cutoff(measure))

    def ranking_effects(self, measure: str = MEASURE, scope: str = SCOPE, seed: int | None = None) -> pd.DataFrame:
        """Table 1 at query level, one row per condition (the baseline ``none`` included): ``n_queries`` and, for each
        statistic of :data:`precompute.analyses.ranking_effects.STATISTICS` (score_change, pairwise, pairwise_hard,
        pairwise_easy, ndcg_ties), its mean over queries under the condition and ``delta_<statistic>`` its mean
        per-query change from the baseline, each with ``_low`` / ``_high`` (95% percentile bootstrap over queries,
        seeded). ``ndcg_ties`` is nDCG@k of ``measure`` with ties broken at random, in expectation; NaN for a run built
        from a run file (its pairs lack the judged passages below the depth, so the ideal ranking would differ from
        the stored nDCG's). Empty without ablation_scores."""
        columns = ["condition_id", "n_queries"]
        if not self.has("ablation_scores"):
            return pd.DataFrame(columns=columns)
        summary = R.summarise(self._ranking_effects(scope, measure), seed=self._seed(seed))
        rows = []
        for cid, s in summary.items():
            row = {"condition_id": cid, "n_queries": s["n_queries"]}
            for name in (*R.STATISTICS, *(f"delta_{x}" for x in R.STATISTICS)):
                row.update(_spread(name, s[name]))
            rows.append(row)
        df = pd.DataFrame(rows)
        if not self._judged_complete():
            df[[c for c in df.columns if "ndcg_ties" in c]] = float("nan")
        return sq.ints(df, "n_queries")

    def _judged_complete(self) -> bool:
        """Whether the pairs hold every judged passage of their queries (no pair comes from a run file)."""
        return bool(self._frame("SELECT count(run_rank) = 0 AS complete FROM pairs")["complete"].iloc[0])

    def declared_contrasts(self) -> list[tuple[str, str]]:
        """The comparisons the run's job declared (``--contrasts``), ``Q->D vs D->Q`` first: what the report and the
        Ablations page compare unless told otherwise."""
        declared = self.info.manifest.job_settings().get("contrasts") or ()
        return C.with_default(",".join(declared))

    def condition_contrasts(self, contrasts: str | list[tuple[str, str]] | None = None,
                            measure: str = MEASURE, scope: str = SCOPE, seed: int | None = None) -> pd.DataFrame:
        """Direct paired comparisons a - b of two conditions (``'q_d:d_q,cross:all'`` as parsed by
        :func:`precompute.conditions.contrasts.parse_contrasts`, or a list of pairs; None: the run's
        :meth:`declared_contrasts`), one row per contrast and mode:
        ``title`` (``Q->D vs D->Q`` for the paper's contrast), ``a``, ``b``, ``missing`` (the side naming no condition of
        the run, else None), ``n_queries``, ``measure_diff`` (mean per-query difference of ``measure``), the paired
        t-test's ``t``, ``p`` and ``p_holm`` (Holm across the rows), and each ranking statistic's mean per-query
        difference with its bootstrap interval over queries. ValueError (one line) for a malformed ``contrasts``."""
        if contrasts is None:
            pairs = self.declared_contrasts()
        else:
            pairs = C.parse_contrasts(contrasts) if isinstance(contrasts, str) else list(contrasts)
        stats = [f"{s}{suffix}" for s in R.STATISTICS for suffix in ("", "_low", "_high")]
        columns = ["title", "a", "b", "missing", "n_queries", "measure_diff", "t", "p", "p_holm", *stats]
        if not self.has("ablation_scores") or not pairs:
            return pd.DataFrame(columns=columns)
        effects = self._ranking_effects(scope, measure)
        values: dict[str, dict[str, float]] = {}
        for r in self._frame("SELECT condition_id, qid, value FROM ablation_metrics WHERE scope = ? AND measure = ?",
                             [scope, measure]).itertuples():
            values.setdefault(r.condition_id, {})[r.qid] = r.value
        conditions = self._frame("SELECT condition_id, condition, mode, layers, directions FROM ablation_conditions")
        compared = R.compare_conditions(pairs, conditions.to_dict("records"), values, effects, seed=self._seed(seed))
        rows = []
        for c in compared:
            row = {k: c.get(k) for k in ("title", "a", "b", "missing", "n_queries", "measure_diff", "t", "p", "p_holm")}
            for s in R.STATISTICS:
                row.update(_spread(s, c[s]) if s in c else {s: math.nan, f"{s}_low": math.nan, f"{s}_high": math.nan})
            rows.append(row)
        df = pd.DataFrame(rows, columns=columns)
        df["n_queries"] = pd.array(df["n_queries"], dtype="Int64")
        for col in ("measure_diff", "t", "p", "p_holm"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
        return df

    def lexical_by_layer(self, seed: int | None = None) -> pd.DataFrame:
        """Lexical vs semantic matching by layer (:func:`precompute.analyses.lexical_layers.by_layer`): one row per
        metric (q_d_exact, q_d_other, q2d_max, d2q_max) x layer with the mean for relevant, hard and easy pairs (each
        with ``_low`` / ``_high`` and ``n_queries_<kind>``) and
        ``relevant_minus_hard`` / ``relevant_minus_easy`` (means over queries of per-query differences, ``_low`` /
        ``_high`` bootstrap interval over queries, ``n_queries_relevant_minus_hard`` / ``_easy``). Empty without
        head_attention."""
        from precompute.analyses.lexical_layers import by_layer

        if not self._defined("head_attention_agg"):
            return pd.DataFrame(columns=["metric", "layer"])
        return sq.ints(pd.DataFrame(by_layer(self.connection.cursor(), self._seed(seed))), "layer")

    def noop_targets(self, seed: int | None = None) -> pd.DataFrame:
        """The no-op check (:func:`precompute.analyses.value_weighted.noop_by_layer`): one row per source (``q``, ``d``)
        x target (``cls``; ``sep`` = both separators) x layer with the relevant pairs' attention ``mass`` and
        value-weighted ``share`` (each with ``_low`` / ``_high``, a bootstrap interval over the ``n_queries`` queries),
        and ``ratio`` = share / mass; shares NaN for runs without them (schema 6 and older)."""
        from precompute.analyses.value_weighted import noop_by_layer

        columns = ["source", "target", "layer", "mass", "mass_low", "mass_high", "share", "share_low", "share_high",
                   "ratio", "n_queries"]
        if not self._defined("head_attention_agg"):
            return pd.DataFrame(columns=columns)
        return sq.ints(pd.DataFrame(noop_by_layer(self.connection.cursor(), self._seed(seed)), columns=columns),
                       "layer")

    def has_value_weighted(self) -> bool:
        """Whether the run holds the value-weighted shares ``vw_*`` (schema 7 and later)."""
        from precompute.analyses.value_weighted import stored

        return self._defined("head_attention_agg") and stored(self.connection.cursor())

    def alignment_behaviour(self, metric: str = "q_d", seed: int | None = None) -> pd.DataFrame:
        """Alignment vs behaviour (:func:`precompute.analyses.alignment_behaviour.correlations`): per head contrast,
        Spearman's rho across heads between the QK alignment score and the query-level effect d_z of q_d, its two-sided
        permutation ``p``, its bootstrap interval over heads (``low``, ``high``), the number of ``heads`` and the
        ``n_queries`` the effects rest on. Empty without head_alignment (spectra) or query-level head_contrasts."""
        from precompute.analyses.alignment_behaviour import correlations

        columns = ["contrast", "label", "metric", "heads", "n_queries", "rho", "p", "low", "high"]
        if not (self._defined("head_alignment") and self._defined("head_contrasts")):
            return pd.DataFrame(columns=columns)
        return pd.DataFrame(correlations(self.connection.cursor(), self._seed(seed), sq.metric(metric)), columns=columns)
