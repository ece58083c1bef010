"""Activation-patching results: the experiments, the effects by layer x head and by layer x component x segment,
the patch pairs with the largest effect on one head or component, and the robust summary (docs/patching.md) that the
Patching page and the report show.

``patching_effects`` holds one row per experiment x method x patch pair x layer x patched activation (``component``
'head' with its ``head``, or 'resid' / 'attn' / 'mlp' / 'resid_post' with a ``segment``); every query here reads one
method (exact or attribution). ``effect`` is NULL where |clean - corrupted| is below the job's epsilon. Means and
standard deviations are over the non-NULL effects only (``count(effect)``); the NULL ones are counted (``n_null``),
never averaged as 0. Those plain moments (with mean +- 1.96 sd / sqrt(n) over pairs) are descriptive only: one pair
whose corruption barely moved the score can dominate them. What the page concludes from is the robust summary
(docs/patching.md): per activation of the slice, the ratio of sums and the thresholded mean, each with its
bootstrap interval over the slice's queries (``n_queries``), stored for the whole run (``patching_summary``) and
computed from per-query sums for a slice of its pairs. Patching effects are not tested for significance (no Holm
family).

The slice: its layers (and heads, for the head map) filter the patched activation; its queries, negative types and
grades filter the patch pairs: a patch pair is in the slice when its query is, and its corrupted input's run pair
(``patching_pairs.pair_id``) or, for ``cls``, its clean input's (``clean_pair_id``: the relevant passage) has one of
the slice's negative types and grades. The filter is a semi-join on the (small) set of patch ids, so the big table
is read with literal ``experiment``/``component`` filters only.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from matching_atlas import sqltext as sq
from matching_atlas.reading import ALL, Reader
from matching_atlas.slice import Slice
from precompute.names import FINAL_COMPONENT, PATCH_COMPONENTS, SEGMENTS

Z95 = 1.96
SEGMENT_ORDER = ("all", *SEGMENTS)
COMPONENT_ORDER = (*PATCH_COMPONENTS, FINAL_COMPONENT)
SITE = ["layer", "head", "component", "segment"]  # one patched activation
MOMENTS = ["n", "n_null", "mean", "sd"]  # plain, over the pairs with an effect: descriptive
ROBUST = ["n_queries", "ratio", "ratio_low", "ratio_high", "tmean", "tmean_low", "tmean_high"]


def _inputs(sl: Slice, experiment: str) -> str:
    """SQL of the experiment's patch pairs in the slice (its queries, negative types and grades) with their query:
    (patch_id, qid)."""
    q = f"{sq.is_in('p.qid', sl.qids)}" if sl.qids else "TRUE"
    on_p = sq.where(sl.with_(qids=()), alias="p", layer_head=False)
    on_c = sq.where(sl.with_(qids=()), alias="c", layer_head=False)
    return f"""
        SELECT pp.patch_id, p.qid FROM patching_pairs pp JOIN pairs p ON p.pair_id = pp.pair_id
        LEFT JOIN pairs c ON c.pair_id = pp.clean_pair_id
        WHERE pp.experiment = {sq.lit(experiment)} AND {q} AND (({on_p}) OR (c.pair_id IS NOT NULL AND ({on_c})))"""


def _pair_filter(sl: Slice, experiment: str) -> str:
    """`` AND patch_id IN (...)`` for the slice's queries, negative types and grades; empty without such filters."""
    if not (sl.qids or sl.neg_types or sl.grades):
        return ""
    return f" AND patch_id IN (SELECT patch_id FROM ({_inputs(sl, experiment)}))"


def _with_ci(df: pd.DataFrame) -> pd.DataFrame:
    half = [Z95 * s / math.sqrt(n) if n and n > 1 and pd.notna(s) else float("nan") for s, n in zip(df["sd"], df["n"])]
    df["ci_half"] = half
    df["ci_lo"] = df["mean"] - df["ci_half"]
    df["ci_hi"] = df["mean"] + df["ci_half"]
    return df


def _position(order: tuple[str, ...]) -> dict[str, int]:
    """Sort positions of ``order``'s names (names outside it after them)."""
    return {name: i for i, name in enumerate(order)}


class PatchingTables(Reader):
    """Methods of :class:`matching_atlas.Run` on patching_pairs and patching_effects."""

    def patching_experiments(self) -> pd.DataFrame:
        """Experiments of the run: their patch pairs (patching_pairs) and how many of those have a NULL effect
        somewhere (|clean - corrupted| below epsilon: a property of the pair, so every activation of a method counts the
        same pairs). Read from patching_summary's ``n_null`` (the largest over the experiment's methods) where the
        job stored it (schema 8); counted over patching_effects otherwise, the NULL effects filtered before the
        distinct count (bench/app.py at 3e7, 10.8 M effects: 0.76 -> 0.36 s; from the summary: a few ms)."""
        nulls = ("SELECT experiment, max(n_null) AS null_pairs FROM patching_summary GROUP BY experiment"
                 if self._moments_stored() else
                 "SELECT experiment, count(DISTINCT patch_id) AS null_pairs FROM patching_effects WHERE effect IS NULL "
                 "GROUP BY experiment")
        df = self._frame(f"""
            WITH p AS (SELECT experiment, count(*) AS patch_pairs FROM patching_pairs GROUP BY experiment),
            e AS ({nulls})
            SELECT p.experiment, p.patch_pairs, coalesce(e.null_pairs, 0) AS null_pairs
            FROM p LEFT JOIN e USING (experiment) ORDER BY p.experiment
        """)
        return sq.ints(df, "patch_pairs", "null_pairs")

    def _moments_stored(self, experiment: str | None = None, method: str | None = None) -> bool:
        """Whether patching_summary holds the pair-level moments (n_null, sd: schema 8) of every activation of the
        experiment and method (of all when None): then the whole run's means need not scan patching_effects."""
        if not self.has("patching_summary"):
            return False
        chosen = {"experiment": experiment, "method": method}
        where = " AND ".join(f"{column} = {sq.lit(value)}" for column, value in chosen.items() if value is not None)
        rows, known = self._frame("SELECT count(*) AS n, count(n_null) AS k FROM patching_summary "
                                  f"WHERE {where or 'TRUE'}").iloc[0]
        return bool(rows) and rows == known

    def patching_methods(self, experiment: str) -> pd.DataFrame:
        """The methods an experiment was computed with and how many heads each patched (attribution first: it covers
        every activation; under --patching-method both, exact patching covers the top heads)."""
        return sq.ints(self._frame(f"""
            SELECT method, count(DISTINCT CASE WHEN component = 'head' THEN (layer, head) END) AS heads
            FROM patching_effects WHERE experiment = {sq.lit(experiment)} GROUP BY method
            ORDER BY method <> 'attribution', method"""), "heads")

    def patching_summary(self, experiment: str | None = None, method: str | None = None) -> pd.DataFrame:
        """The robust summary (median, ratio of sums and thresholded mean per activation with their bootstrap
        intervals over queries, the excluded and raised pairs, the heads' rank): the stored patching_summary,
        computed from the effects with the run's recorded settings for stores of schema version 3 and older; of one
        experiment and method, or of all."""
        from precompute.analyses.patching_ranking import read_summary

        manifest = self.info.manifest
        cur = self.connection.cursor()
        try:
            frame = read_summary(cur, manifest.patching if manifest is not None else None)
        finally:
            cur.close()
        if experiment is not None and not frame.empty:
            frame = frame[frame["experiment"] == experiment]
        if method is not None and not frame.empty:
            frame = frame[frame["method"] == method]
        return frame.reset_index(drop=True)

    def patching(self, experiment: str | None = None) -> pd.DataFrame:
        """The effects themselves (table patching_effects: one row per experiment x patch pair x layer x patched
        activation), of one experiment or of all; the summaries are :meth:`patching_heads` and
        :meth:`patching_components`."""
        where, params = ("WHERE experiment = ?", [experiment]) if experiment is not None else ("", [])
        return self._frame(f"SELECT * FROM patching_effects {where} "
                           "ORDER BY experiment, patch_id, layer, component, segment, head", params)

    def patching_heads(self, experiment: str, where: Slice | None = None, method: str = "exact") -> pd.DataFrame:
        """Per layer x head (of the slice): the robust summary over the slice's queries (``n_queries``, ``ratio`` and
        ``tmean`` with their 95% bootstrap intervals) and the plain moments over pairs, descriptive (n: non-NULL
        effects, n_null, mean, sd and mean +- 1.96 sd / sqrt(n): ci_half, ci_lo, ci_hi); see :meth:`_activations`."""
        sl = where or ALL
        frame = self._activations(experiment, method, sl, f"component = 'head' AND {sq.where(sl, pair_filters=False)}")
        frame = sq.ints(frame.drop(columns=["component", "segment"]), "head").sort_values(["layer", "head"])
        return _with_ci(frame.reset_index(drop=True))[["layer", "head", *MOMENTS, "ci_half", "ci_lo", "ci_hi", *ROBUST]]

    def patching_components(self, experiment: str, where: Slice | None = None,
                            method: str = "exact") -> pd.DataFrame:
        """Per layer x component (resid, attn, mlp, resid_post) x segment of the slice's layers: the same columns."""
        sl = where or ALL
        frame = self._activations(experiment, method, sl,
                                  f"component <> 'head' AND {sq.where(sl.with_(heads=()), pair_filters=False)}")
        frame = frame.drop(columns=["head"]).sort_values(
            ["component", "segment", "layer"],
            key=lambda c: c.map(_position(COMPONENT_ORDER)) if c.name == "component" else
            c.map(_position(SEGMENT_ORDER)) if c.name == "segment" else c)
        return _with_ci(frame.reset_index(drop=True))[["layer", "component", "segment", *MOMENTS, "ci_half", "ci_lo",
                                                       "ci_hi", *ROBUST]]

    def _activations(self, experiment: str, method: str, sl: Slice, target: str) -> pd.DataFrame:
        """Per patched activation that ``target`` (SQL on patching_effects' columns) selects, over the slice's patch
        pairs: the plain moments (n, n_null, mean, sd) and the robust columns (``n_queries``; the ratio of sums and
        the thresholded mean, each with its bootstrap interval over the queries).

        The whole run's are stored in patching_summary by the job (schema 8): a few hundred rows. A slice of queries,
        negative types or grades (or an older store) reads patching_effects once: per activation and query the sums
        both need (SQL), then the moments from them and the intervals by resampling the queries
        (:func:`precompute.analyses.patching_ranking.ratio_and_tmean`, the job's function, with the run's recorded
        settings): the summary's numbers when the slice holds every pair."""
        from precompute.analyses.patching_ranking import ratio_and_tmean, settings_of

        keep = f"experiment = {sq.lit(experiment)} AND method = {sq.lit(method)} AND {target}"
        if not _pair_filter(sl, experiment) and self._moments_stored(experiment, method):
            return sq.ints(self._frame(f"SELECT {', '.join(SITE)}, n_pairs - n_null AS n, n_null, mean, sd, "
                                       f"{', '.join(ROBUST)} FROM patching_summary WHERE {keep}"),
                           "layer", "n", "n_null", "n_queries")
        settings = settings_of(self.info.manifest.patching if self.info.manifest is not None else None)
        diff, recovered = "(CAST(e.clean AS DOUBLE) - e.corrupted)", "(CAST(e.patched AS DOUBLE) - e.corrupted)"
        kept = f"abs({diff}) >= {float(settings.min_delta)!r}"
        sums = self._frame(f"""
            SELECT e.layer, e.head, e.component, e.segment, i.qid, count(e.effect) AS n,
                   count(*) - count(e.effect) AS n_null, coalesce(sum(CAST(e.effect AS DOUBLE)), 0) AS s1,
                   coalesce(sum(CAST(e.effect AS DOUBLE) ^ 2), 0) AS s2, sum({diff}) AS diff,
                   sum({recovered}) AS recovered, count(*) FILTER (WHERE {kept}) AS kept,
                   coalesce(sum({recovered} / {diff}) FILTER (WHERE {kept}), 0) AS kept_effect
            FROM patching_effects e JOIN ({_inputs(sl, experiment)}) i ON i.patch_id = e.patch_id
            WHERE {keep}
            GROUP BY ALL ORDER BY e.layer, e.head NULLS FIRST, e.component, e.segment, i.qid""")
        if sums.empty:
            return pd.DataFrame({c: pd.Series(dtype="float64") for c in SITE + MOMENTS + ROBUST})
        site_codes = sums.groupby(SITE, sort=False, dropna=False).ngroup().to_numpy()  # in the frame's (sorted) order
        query_codes, queries = pd.factorize(sums["qid"], sort=True)  # the summary's query order: its resamples
        matrix = {column: np.zeros((len(queries), site_codes.max() + 1)) for column in ("diff", "recovered", "kept",
                                                                                        "kept_effect")}
        for column, values in matrix.items():
            values[query_codes, site_codes] = sums[column].to_numpy(dtype=np.float64)
        out = sums.drop_duplicates(subset=SITE)[SITE].reset_index(drop=True)
        totals = sums.groupby(site_codes)[["n", "n_null", "s1", "s2"]].sum()
        n, s1, s2 = (totals[c].to_numpy(dtype=np.float64) for c in ("n", "s1", "s2"))
        with np.errstate(divide="ignore", invalid="ignore"):
            out["n"], out["n_null"] = totals["n"].to_numpy(), totals["n_null"].to_numpy()
            out["mean"] = np.where(n > 0, s1 / n, np.nan)
            out["sd"] = np.where(n > 1, np.sqrt(np.maximum(s2 - s1 * s1 / n, 0) / (n - 1)), np.nan)
        out["n_queries"] = sums.groupby(site_codes)["qid"].nunique().to_numpy()
        stats = ratio_and_tmean(matrix["diff"], matrix["kept"], matrix["recovered"], matrix["kept_effect"], settings)
        for name, (estimate, low, high) in stats.items():
            out[name], out[f"{name}_low"], out[f"{name}_high"] = estimate, low, high
        return sq.ints(out, "layer", "n", "n_null", "n_queries")

    def patching_top_pairs(self, experiment: str, layer: int, component: str, segment: str | None = None,
                           head: int | None = None, limit: int = 20, descending: bool = True,
                           where: Slice | None = None, method: str = "exact") -> pd.DataFrame:
        """The (slice's) patch pairs with the largest (or smallest) non-NULL effect of one head (component 'head') or
        one component x segment at one layer: query, passages, term, filler and the rule that chose them, the three
        scores and the effect."""
        sl = where or ALL
        target = (f"component = 'head' AND head = {int(head)}" if component == "head"
                  else f"component = {sq.lit(component)} AND segment = {sq.lit(segment)}")
        order = "DESC" if descending else "ASC"
        sql = f"""
            WITH top AS (
                SELECT patch_id, pair_id, clean, corrupted, patched, effect FROM patching_effects
                WHERE experiment = {sq.lit(experiment)} AND method = {sq.lit(method)} AND layer = {int(layer)}
                      AND {target} AND effect IS NOT NULL {_pair_filter(sl, experiment)}
                ORDER BY effect {order}, patch_id LIMIT {int(limit)}
            )
            SELECT top.patch_id, p.qid, p.query, pp.term, pp.filler, pp.clean_insert, pp.rule, top.clean, top.corrupted, top.patched,
                   top.effect, p.neg_type, p.grade, p.docid, left(p.doc, 240) AS passage, c.docid AS clean_docid,
                   left(c.doc, 240) AS clean_passage, c.grade AS clean_grade, top.pair_id, pp.clean_pair_id
            FROM top JOIN patching_pairs pp ON pp.experiment = {sq.lit(experiment)} AND pp.patch_id = top.patch_id
            JOIN pairs p ON p.pair_id = top.pair_id LEFT JOIN pairs c ON c.pair_id = pp.clean_pair_id
            ORDER BY top.effect {order}, top.patch_id
        """
        df = sq.ints(self._frame(sql), "patch_id", "grade", "pair_id")
        for col in ("clean_grade", "clean_pair_id"):
            df[col] = pd.array(df[col], dtype="Int64")
        return df
