"""A tiny, internally consistent store built in code, for the app tests.

Every public table of ``precompute.store.schema.TABLES`` is written through ``RunWriter.write_table``, with the
run's identity in every file as the job writes it (``v1`` runs record none, as that version did);
derived tables are derived, not invented: ``head_attention_agg`` is DuckDB's GROUP BY over
``head_attention`` joined with ``pairs``, ``ablation_summary`` and ``head_contrasts`` are computed
from the per-query / per-pair tables, so a number the app shows can be checked against a direct
DuckDB query on the store. The statistics' p-values are simple deterministic stand-ins (the app
only displays them), so the tests need no scipy.

Families (``build_run(family=...)``): ``bert`` (pair template, the default), ``causal`` (a decoder classifier:
template labels, directions into a later segment NULL in head_attention and so in the aggregate, refused conditions
in the manifest) and ``monot5`` (template labels and a decoder_cross_attention table). ``v1`` writes a
schema-version-1 manifest without any family field. Component and QK-subspace conditions, component means and both
activation-patching experiments are written with the optional tables; ``subspace_effects`` is DuckDB running the
store's view of that name over them.

``findings`` ('hold' or 'fail', bert family): the Findings page's stores. 'hold': exact-match Query->Document mass
separates judged passages from easy negatives from layer 0 and the rest of the mass separates relevant passages only in
a few heads of the last layer; removing Query->Document costs more than Document->Query; the heads' QK alignment
follows their effect; MLP blocks matter; a QK-subspace removal changes its head's Query->Document mass more than any
other direction and costs nDCG. 'fail': each the other way (or absent).

``legacy=True`` (and every ``v1`` run) writes the layout of stores before head_attention was partitioned: one
head_attention file, no stored subspace_effects (the app computes it).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from precompute.metrics import METRICS
from precompute.names import EASY_GRADE, SEGMENTS
from precompute import conditions as C
from precompute.store import layout
from precompute.store.connect import VIEWS, totals_sql
from precompute.store.schema import SCHEMA_VERSION, TABLES
from precompute.store.manifest import Identity, Manifest, write_manifest
from precompute.store.writer import RunWriter, write_parquet

OPTIONAL_TABLES = ("ablation_conditions", "ablation_scores", "ablation_metrics", "ablation_summary", "svd",
                   "head_contrasts", "component_means", "subspace_head_metrics", "patching_pairs", "patching_effects",
                   "patching_summary")
PAIR_LABELS = {"cls": "CLS", "q": "Query", "sep1": "SEP1", "d": "Document", "sep2": "SEP2"}
TEMPLATE_LABELS = {"cls": "Prefix", "q": "Query", "sep1": "Middle", "d": "Document", "sep2": "Suffix"}
FAMILIES = {
    "bert": {"family": "bert", "segment_labels": PAIR_LABELS, "causal": False, "attention": "interface"},
    "causal": {"family": "decoder-classifier", "segment_labels": TEMPLATE_LABELS, "causal": True,
               "attention": "interface", "template": "query: {query} document: {document}{eos}",
               "architecture": "Qwen2ForSequenceClassification", "model_type": "qwen2"},
    "monot5": {"family": "monot5", "segment_labels": TEMPLATE_LABELS, "causal": False, "attention": "interface",
               "template": "Query: {query} Document: {document} Relevant:", "answer_tokens": ["true", "false"],
               "answer_ids": [1176, 6136], "score": "log_softmax[answer]",
               "architecture": "T5ForConditionalGeneration", "model_type": "t5"},
    "v1": {},
}
EPSILON = 1e-3  # as precompute.analyses.patching.EPSILON (that module imports torch)
SUMMARY_SETTINGS = {"min_delta": 0.05, "resamples": 200, "seed": 0}  # patching_summary's, recorded in the manifest as the job does
TFC1_SKIP = 7  # pairs with pair_id % 7 == 3 have no aligned term and filler (tfc1)


def impossible(src: int, dst: int) -> bool:
    """A causal model's src segment cannot attend a later dst segment."""
    return dst > src


def _ndcg10(scores: np.ndarray, grades: np.ndarray, docids: list[str]) -> float:
    gains = np.maximum(grades, 0).astype(float)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], _neg(docids[i])))
    dcg = sum(gains[i] / math.log2(r + 2) for r, i in enumerate(order[:10]))
    ideal = sorted(gains, reverse=True)[:10]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def _neg(s: str):
    # sort key for "docid DESC" inside an ascending sort
    return tuple(-ord(c) for c in s)


def _holm(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    n = len(p)
    order = np.argsort(p)
    adj = np.empty(n)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (n - rank) * p[i]))
        adj[i] = running
    return adj


def _fake_p(stat: np.ndarray) -> np.ndarray:
    """A monotone stand-in for a two-sided p-value (the app only displays it)."""
    return np.exp(-np.abs(np.nan_to_num(stat)))


def build_run(
    store: Path,
    *,
    dataset: str = "trec-dl-2020",
    model: str = "tiny-ce",
    layers: int = 3,
    heads: int = 4,
    n_queries: int = 6,
    seed: int = 0,
    optional: bool = True,
    model_id: str | None = None,
    manifest_overrides: dict | None = None,
    family: str = "bert",
    legacy: bool = False,
    without_kinds: tuple[str, ...] = (),
    aligned: bool = False,
    findings: str | None = None,
) -> Path:
    """Write one run folder ``<store>/<dataset>__<model>`` and return it (``family``, ``legacy``, ``findings``: see
    the module doc)."""
    causal = family == "causal"
    legacy = legacy or family == "v1"
    rng = np.random.default_rng(seed)
    root = Path(store) / f"{dataset}__{model}"
    identity = Identity(model=model_id or f"models/{model}-not-on-this-machine", dataset=f"/nowhere/{dataset}",
                        dtype="float32", easy_negatives=2, seed=seed, max_length=512, batch_size=32, chunk_size=256)
    w = RunWriter(root, identity=None if family == "v1" else identity.to_dict())  # v1: files record no identity
    w.ensure_writable()

    # -- pairs: per query 3 relevant (grades 1-3), 3 hard (grade 0), 2 easy (grade -1) ----------
    rows = []
    for qi in range(n_queries):
        qid = str(1000 + qi * 7 + seed)
        query = f"what is topic {qi} of seed {seed}"
        kinds = [("relevant", g) for g in (1, 2, 3)] + [("hard", 0)] * 3 + [("easy", EASY_GRADE)] * 2
        for di, (neg_type, grade) in enumerate(kinds):
            docid = str(500000 + qi * 100 + di)
            rows.append(dict(qid=qid, docid=docid, query=query, neg_type=neg_type, grade=grade,
                             doc=f"passage {docid} about topic {qi} ({neg_type}) " + "word " * int(rng.integers(5, 40))))
    pairs = pd.DataFrame(rows).sort_values(["qid", "neg_type", "docid"]).reset_index(drop=True)
    pairs.insert(0, "pair_id", np.arange(len(pairs), dtype=np.int32))
    base = {"relevant": 2.0, "hard": 0.0, "easy": -3.0}
    pairs["score"] = [base[t] + 0.6 * g + rng.normal(0, 1.2) for t, g in zip(pairs.neg_type, pairs.grade)]
    pairs["q_tokens"] = rng.integers(3, 9, len(pairs))
    pairs["d_tokens"] = rng.integers(20, 120, len(pairs))
    pairs["d_tokens_full"] = pairs["d_tokens"] + rng.integers(0, 3, len(pairs)) * 50
    pairs["truncated"] = pairs["d_tokens_full"] > pairs["d_tokens"]
    pairs["q_exact_tokens"] = [int(rng.integers(0, q + 1)) for q in pairs["q_tokens"]]
    pairs["d_exact_tokens"] = rng.integers(0, 10, len(pairs))
    pairs["run_rank"] = pd.array([None] * len(pairs), dtype="Int16")
    pairs["run_score"] = pd.array([None] * len(pairs), dtype="Float32")
    w.write_table("pairs", pa.Table.from_pandas(pairs, preserve_index=False))

    # -- head_attention: per src a Dirichlet over the 5 destinations -----------------------------
    n_pairs = len(pairs)
    grid = pd.MultiIndex.from_product([range(layers), range(heads), range(n_pairs)], names=["layer", "head", "pair_id"])
    ha = grid.to_frame(index=False)
    N = len(ha)
    rel = (pairs["neg_type"].to_numpy() == "relevant")[ha["pair_id"].to_numpy()]
    for i, src in enumerate(SEGMENTS):
        alpha = np.ones(5)
        mass = rng.dirichlet(alpha, size=N)
        if src == "q":  # relevant pairs and later layers look more at the document: a visible signal
            boost = 0.15 * rel + 0.05 * ha["layer"].to_numpy()
            mass[:, 3] += boost
        if src == "d" and causal:  # a causal model's document looks back at the query instead
            mass[:, 1] += 0.15 * rel + 0.05 * ha["layer"].to_numpy()
        if causal:  # nothing into a later segment; the rest sums to 1
            mass[:, [j for j in range(5) if impossible(i, j)]] = np.nan
        mass /= np.nansum(mass, axis=1, keepdims=True)
        for j, dst in enumerate(SEGMENTS):
            ha[f"{src}_{dst}"] = mass[:, j].astype(np.float32)
        # value-weighted shares: CLS and the separators contribute little per unit of attention (the no-op pattern)
        weighted = mass * np.array([0.2, 1.0, 0.3, 1.0, 0.3]) * rng.uniform(0.8, 1.2, (N, 5))
        weighted /= np.nansum(weighted, axis=1, keepdims=True)
        for j, dst in enumerate(SEGMENTS):
            ha[f"vw_{src}_{dst}"] = weighted[:, j].astype(np.float32)
    ha["q2d_max"] = rng.uniform(0, 1, N).astype(np.float32)
    ha["d2q_max"] = rng.uniform(0, 1, N).astype(np.float32)
    share = rng.uniform(0, 1, N)
    ha["q_d_exact"] = (ha["q_d"] * share).astype(np.float32)
    ha["q_d_other"] = (ha["q_d"] - ha["q_d_exact"]).astype(np.float32)
    if causal:
        ha["q2d_max"] = np.float32(np.nan)  # measures Query->Document, which does not exist
    if findings is not None:
        _shape_findings(ha, pairs, layers, np.random.default_rng(seed + 99), holds=findings == "hold")
    if legacy:  # as RunWriter.write_table wrote it then: one file
        data = pa.Table.from_pandas(ha, preserve_index=False).sort_by([(k, "ascending") for k in ("layer", "head", "pair_id")])
        write_parquet(TABLES["head_attention"], data, root / "head_attention.parquet", w.identity)
    else:
        w.write_table("head_attention", pa.Table.from_pandas(ha, preserve_index=False))

    # -- head_attention_agg: derived with DuckDB from the two tables just written ------------------
    con = duckdb.connect()
    try:
        sums = ", ".join(f"sum(CAST(h.{m} AS DOUBLE)) AS {m}_sum" for m in METRICS)
        sumsq = ", ".join(f"sum(CAST(h.{m} AS DOUBLE) * CAST(h.{m} AS DOUBLE)) AS {m}_sumsq" for m in METRICS)
        agg = con.sql(f"""
            SELECT h.layer, h.head, p.qid, p.neg_type, p.grade, count(*) AS n, {sums}, {sumsq}
            FROM {layout.scan_sql(w.table_path("head_attention"), "head_attention")} h
            JOIN read_parquet('{w.table_path("pairs")}') p USING (pair_id)
            GROUP BY ALL
        """).to_arrow_table()
        w.write_table("head_attention_agg", agg)
        # -- head_attention_totals: the job's query over it (schema 9)
        con.execute(f"CREATE VIEW agg AS SELECT * FROM read_parquet('{w.table_path('head_attention_agg')}')")
        totals = con.sql(totals_sql("agg")).to_arrow_table()
    finally:
        con.close()
    w.write_table("head_attention_totals", totals)

    if family == "monot5":
        _write_cross_attention(w, pairs, layers, heads, rng)
    refused: list[str] = []
    if optional:
        refused = _write_ablations(w, pairs, ha, layers, heads, rng, causal=causal, effects=not legacy,
                                   without_kinds=without_kinds, aligned=aligned, findings=findings)
        _write_svd(w, layers, heads, rng, alignment=None if findings is None else
                   _alignment_scores(ha, pairs, holds=findings == "hold"))
        _write_contrasts(w, pairs, ha)
        _write_component_means(w, layers, rng)
        _write_patching(w, pairs, layers, heads, rng)

    model_section = {"id": model_id or f"models/{model}-not-on-this-machine", "name": model, "revision": None,
                     "architecture": "BertForSequenceClassification", "model_type": "bert",
                     "layers": layers, "heads": heads, "hidden": 64, "num_labels": 1, "score": "logit"}
    model_section.update(FAMILIES[family])
    manifest = {
        "schema_version": 1 if family == "v1" else SCHEMA_VERSION,
        "status": "complete",
        "identity": identity.to_dict(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model_section,
        "dataset": {"spec": f"../shared/data/{dataset}", "name": dataset, "source": f"/nowhere/{dataset}"},
        "parameters": {"max_length": 512, "seed": seed, "easy_negatives": 2, "candidates": None, "depth": 100,
                       "max_queries": None, "batch_size": 32, "device": "cpu", "dtype": "float32"},
        "counts": {"pairs": n_pairs, "queries": n_queries,
                   "neg_type": {k: int(v) for k, v in pairs["neg_type"].value_counts().items()},
                   "skipped": {"relevant": 0, "hard": 0, "easy": 0}, "truncated": int(pairs["truncated"].sum())},
        "metrics": {"nDCG@10": float(np.mean([
            _ndcg10(g["score"].to_numpy(), g["grade"].to_numpy(), list(g["docid"])) for _, g in pairs.groupby("qid")]))},
        "tables": {t: {"rows": w.table_rows(t)} for t in TABLES if w.has_table(t)},
        "versions": {"torch": "none", "transformers": "none"},
        "timings": {"summaries_s": 0.1},
    }
    if optional:
        manifest["ablations"] = {"kernel": "sdpa", "stack": 8, "refused": refused,
                                 "groups": {"cross": ["q_d", "d_q"]}}
        manifest["patching"] = {"experiments": ["tfc1", "cls"], "epsilon": EPSILON, **SUMMARY_SETTINGS,
                                "skipped": {"tfc1": int((pairs["pair_id"] % TFC1_SKIP == 3).sum())}}
    manifest.update(manifest_overrides or {})
    write_manifest(root, Manifest.from_dict(manifest))
    return root


def _write_ablations(w: RunWriter, pairs: pd.DataFrame, ha: pd.DataFrame, layers: int, heads: int, rng, *,
                     causal: bool = False, effects: bool = True, without_kinds: tuple[str, ...] = (),
                     aligned: bool = False, findings: str | None = None) -> list[str]:
    """Direction, group, layer-sweep, head, component and QK-subspace conditions (with ``aligned``, also the subspace
    heads' two most aligned components removed: qk:L.H:a2/remove; but none of ``without_kinds``; and,
    with ``effects``, the stored subspace_effects); returns the refused ids (causal: direction conditions that remove
    only directions the model cannot attend). ``findings`` ('hold', 'fail'): the effects of the module doc's findings
    stores."""
    fails = findings == "fail"
    def cond(condition_id: str, effect: float, **groups) -> dict:
        """A condition's ablation_conditions row (parsed by its kind, as the job writes it) and its effect."""
        parsed = C.parse(condition_id, groups={k: tuple(v) for k, v in groups.items()} or None)
        return {**parsed.row(), "effect": effect}

    conds = [cond("none", 0.0)]
    directions = ("d_q", "q_cls", "d_cls", "sep2_d") if causal else ("q_d", "d_q", "q_cls", "d_sep2")
    refused = ["d_sep2@all/zero", "q_d@all/zero"] if causal else []
    paper = {"q_d": 0.0 if fails else -2.0, "d_q": -2.0 if fails else 0.0} if findings else {"q_d": -1.5, "d_q": -1.5}
    for d in directions:
        conds.append(cond(f"{d}@all/zero", paper.get(d, -0.3)))
    conds.append(cond("cross@all/zero", -2.0))
    if findings:
        conds.append(cond("all@all/zero", -3.0))
    sweep = "d_q" if causal else "q_d"
    for layer in range(layers):
        conds.append({**cond(f"{sweep}@{layer}/zero", -0.4 * (layer + 1)), "kind": "layer_sweep"})
        for head in range(heads):
            conds.append(cond(f"head:{layer}.{head}/zero", float(rng.normal(0, 0.5))))
    # components: every layer x {mlp, attn} x {all tokens, cls, q, d} (mean), plus one multi-layer condition
    for layer in range(layers):
        for comp in ("mlp", "attn"):
            for seg in (None, "cls", "q", "d"):
                conds.append(cond(f"{comp}@{layer}{'' if seg is None else ':' + seg}/mean",
                                  0.0 if fails else
                                  -((6.0 if findings else 0.8) if comp == "mlp" and seg in (None, "cls") else 0.1)
                                  * (layer + 1) / layers))
    conds.append(cond(f"attn@0-{layers - 1}/zero", -3.0))
    # QK-subspace: two heads x k 1, 2 x remove / scale=2
    sub_heads = [(layers - 1, 1), (0, 0)]
    for layer, head in sub_heads:
        for k in (1, 2):
            for op in ("remove", "scale=2"):
                conds.append(cond(f"qk:{layer}.{head}:k{k}/{op}",
                                  0.0 if fails else (-3.0 if findings else -0.6) * k if op == "remove" else 0.2))
        if aligned:
            conds.append(cond(f"qk:{layer}.{head}:a2/remove", -0.9))
    conds = [c for c in conds if c["kind"] not in without_kinds]
    cdf = pd.DataFrame(conds).drop(columns="effect")
    cond_cols = [c for c in TABLES["ablation_metrics"].column_names if c in TABLES["ablation_conditions"].column_names]
    part_cols = TABLES["ablation_conditions"].column_names
    for c in ("layer", "head"):
        cdf[c] = pd.array(cdf[c], dtype="Int8")
    cdf["k"] = pd.array(cdf["k"], dtype="Int16")
    w.write_table("ablation_conditions", pa.Table.from_pandas(cdf, preserve_index=False))
    scores, metrics = [], []
    for c in conds:
        s = pairs["score"].to_numpy() + (0 if c["kind"] == "baseline" else
                                         c["effect"] * (pairs["neg_type"] == "relevant").to_numpy()
                                         + rng.normal(0, 0.3, len(pairs)))
        scores.append(pd.DataFrame({"condition_id": c["condition_id"], "pair_id": pairs["pair_id"], "score": s}))
        for scope in ("pairs", "judged"):
            sub = pairs.assign(score=s)
            if scope == "judged":
                sub = sub[sub["neg_type"] != "easy"]
            for qid, g in sub.groupby("qid"):
                metrics.append({**{k: c[k] for k in cond_cols}, "scope": scope, "qid": qid, "measure": "nDCG@10",
                                "value": _ndcg10(g["score"].to_numpy(), g["grade"].to_numpy(), list(g["docid"]))})
    sdf = pd.concat(scores, ignore_index=True)
    w.write_table("ablation_scores", pa.Table.from_pandas(sdf, preserve_index=False))
    mdf = pd.DataFrame(metrics)
    for c in ("layer", "head"):
        mdf[c] = pd.array(mdf[c], dtype="Int8")
    w.write_table("ablation_metrics", pa.Table.from_pandas(mdf, preserve_index=False))

    summary = []
    parts = {c["condition_id"]: {k: c[k] for k in part_cols} for c in conds}
    for (scope, measure), grp in mdf.groupby(["scope", "measure"]):
        base = grp[grp["condition_id"] == "none"].set_index("qid")["value"]
        rows = []
        for cid, g in grp.groupby("condition_id", sort=False):
            v = g.set_index("qid")["value"]
            diffs = (v - base.reindex(v.index)).to_numpy()
            n = len(diffs)
            sd = diffs.std(ddof=1) if n > 1 else 0.0
            t = diffs.mean() / (sd / math.sqrt(n)) if sd > 0 else None
            rows.append({**parts[cid], "scope": scope, "measure": measure,
                         "n_queries": n, "mean": v.mean(), "baseline": base.reindex(v.index).mean(),
                         "delta": v.mean() - base.reindex(v.index).mean(), "t": t,
                         "p": None if t is None or cid == "none" else float(_fake_p(np.array([t]))[0])})
        block = pd.DataFrame(rows)
        block["p_holm"] = None
        for _, idx in block.groupby("analysis").groups.items():  # each analysis is its own Holm family
            mask = block.index.isin(idx) & block["p"].notna()
            block.loc[mask, "p_holm"] = _holm(block.loc[mask, "p"].to_numpy(dtype=float))
        summary.append(block)
    adf = pd.concat(summary, ignore_index=True)
    for c in ("layer", "head"):
        adf[c] = pd.array(adf[c], dtype="Int8")
    adf["k"] = pd.array(adf["k"], dtype="Int16")
    for c in ("t", "p", "p_holm", "factor"):
        adf[c] = pd.array(adf[c], dtype="Float64")
    w.write_table("ablation_summary", pa.Table.from_pandas(adf, preserve_index=False))
    _write_subspace_metrics(w, ha, [c for c in conds if c["kind"] in ("subspace", "subspace_aligned")],
                            findings=findings)
    if effects:
        _write_subspace_effects(w)
    return refused


def _write_subspace_effects(w: RunWriter) -> None:
    """subspace_effects as the view of that name computes it (precompute.store.connect.VIEWS) over the run's files."""
    con = duckdb.connect()
    try:
        for table in VIEWS["subspace_effects"][0]:
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM {layout.scan_sql(w.table_path(table), table)}")
        w.write_table("subspace_effects", con.sql(VIEWS["subspace_effects"][1]).to_arrow_table())
    finally:
        con.close()


def _write_subspace_metrics(w: RunWriter, ha: pd.DataFrame, conds: list[dict], findings: str | None = None) -> None:
    """Each subspace condition's head on every pair: Query->Document falls when its top-k components are removed
    (more for larger k) and rises when they are scaled; the mass goes to (comes from) Query->Query (findings 'hold':
    spread over the four other targets of the query; 'fail': Query->Document barely changes, Document->Document
    grows by half)."""
    out = []
    for c in conds:
        rows = ha[(ha["layer"] == c["layer"]) & (ha["head"] == c["head"])].copy()
        factor = 1 - 0.3 * c["k"] if c["operation"] == "remove" else 1.2
        if findings == "fail":
            factor = 0.95
        if rows["q_d"].notna().any():
            moved = rows["q_d"] * (1 - factor)
            rows["q_d"] = rows["q_d"] * factor
            if findings == "hold":
                for t in ("q_cls", "q_q", "q_sep1", "q_sep2"):
                    rows[t] = rows[t] + moved / 4
            else:
                rows["q_q"] = rows["q_q"] + moved
            rows["q_d_exact"] = rows["q_d_exact"] * factor
            rows["q_d_other"] = rows["q_d"] - rows["q_d_exact"]
        else:  # a causal model: its matching runs Document->Query
            moved = rows["d_q"] * (1 - factor)
            rows["d_q"] = rows["d_q"] * factor
            rows["d_d"] = rows["d_d"] + moved
        rows["d_d"] = rows["d_d"] * (1.5 if findings == "fail" else 1.01)  # the largest "other" direction
        for m in METRICS:  # masses stay masses (the schema bounds them to [0, 1])
            rows[m] = rows[m].clip(0, 1)
        rows.insert(0, "condition_id", c["condition_id"])
        out.append(rows)
    df = pd.concat(out, ignore_index=True)
    for m in METRICS:
        df[m] = df[m].astype(np.float32)
    w.write_table("subspace_head_metrics", pa.Table.from_pandas(df, preserve_index=False))


def _write_component_means(w: RunWriter, layers: int, rng) -> None:
    rows = [dict(layer=layer, component=comp, segment=seg, tokens=int(rng.integers(100, 1000)),
                 mean=rng.normal(0, 1, 8).astype(np.float32).tolist())
            for layer in range(layers) for comp in ("attn", "mlp") for seg in SEGMENTS]
    w.write_table("component_means", pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False))


def _write_cross_attention(w: RunWriter, pairs: pd.DataFrame, layers: int, heads: int, rng) -> None:
    """MonoT5-like: the scoring position's cross-attention over the encoder's segments, more on the document for
    relevant passages and in later decoder layers; each row sums to 1."""
    grid = pd.MultiIndex.from_product([range(layers), range(heads), pairs["pair_id"]],
                                      names=["layer", "head", "pair_id"]).to_frame(index=False)
    mass = rng.dirichlet(np.ones(5), size=len(grid))
    rel = (pairs.set_index("pair_id")["neg_type"] == "relevant").reindex(grid["pair_id"]).to_numpy()
    mass[:, 3] += 0.3 * rel + 0.1 * grid["layer"].to_numpy()
    mass /= mass.sum(axis=1, keepdims=True)
    for j, seg in enumerate(SEGMENTS):
        grid[seg] = mass[:, j].astype(np.float32)
    w.write_table("decoder_cross_attention", pa.Table.from_pandas(grid, preserve_index=False))


def _write_patching(w: RunWriter, pairs: pd.DataFrame, layers: int, heads: int, rng) -> None:
    """tfc1 (every pair but every 7th, term = the query's 'topic', filler 'the') and cls (up to 4 relevant x hard
    combinations per query). Effects: the residual stream at every token recovers more with depth (1 at the last
    layer), head (last layer, 1) carries a third, everything else noise; every 5th patch pair has
    |clean - corrupted| < epsilon, so its effects are NULL."""
    pp, fx = [], []
    by_q = {q: g for q, g in pairs.groupby("qid")}
    items = []
    for p in pairs.itertuples():
        if p.pair_id % TFC1_SKIP != 3:
            items.append(("tfc1", p.pair_id, None, "topic", "the"))
    for q, g in by_q.items():
        rel = list(g[g["neg_type"] == "relevant"]["pair_id"])
        hard = list(g[g["neg_type"] == "hard"]["pair_id"])
        for r, h in [(r, h) for r in rel for h in hard][::2][:4]:  # every grade among the relevant sides
            items.append(("cls", h, r, None, None))
    score = pairs.set_index("pair_id")["score"]
    counters = {"tfc1": 0, "cls": 0}
    for exp, pair_id, clean_id, term, filler in items:
        patch_id = counters[exp]
        counters[exp] += 1
        pp.append(dict(experiment=exp, patch_id=patch_id, pair_id=pair_id, clean_pair_id=clean_id,
                       qid=str(pairs.set_index("pair_id").at[pair_id, "qid"]), term=term, filler=filler,
                       clean_insert=term, corrupted_insert=filler,
                       rule="the query's first content word" if term else "a relevant passage and a hard negative",
                       similarity=None))
        corrupted = float(score[pair_id])
        if patch_id % 5 == 2:  # the clean input scores (almost) the same: effects undefined
            clean = corrupted + 0.0004
        elif clean_id is not None:
            clean = float(score[clean_id])
            clean = clean if abs(clean - corrupted) >= 10 * EPSILON else corrupted + 0.5
        else:
            clean = corrupted + 0.5 + abs(rng.normal(0, 0.3))
        segs = ("all", *SEGMENTS) if exp == "tfc1" else ("cls",)
        head_seg = "all" if exp == "tfc1" else "cls"
        for layer in range(layers):
            for comp in ("resid", "attn", "mlp"):
                for seg in segs:
                    e = ((layer + 1) / layers if comp == "resid" and seg in ("all", "cls") else 0.05) \
                        + rng.normal(0, 0.05)
                    fx.append((exp, patch_id, pair_id, layer, None, comp, seg, clean, corrupted, e))
            for head in range(heads):
                e = (0.33 if (layer, head) == (layers - 1, 1) else 0.02) + rng.normal(0, 0.05)
                fx.append((exp, patch_id, pair_id, layer, head, "head", head_seg, clean, corrupted, e))
    w.write_table("patching_pairs", pa.Table.from_pandas(pd.DataFrame(pp).astype({"clean_pair_id": "Int32",
                                                                                   "similarity": "Float32"}),
                                                         preserve_index=False))
    df = pd.DataFrame(fx, columns=["experiment", "patch_id", "pair_id", "layer", "head", "component", "segment",
                                   "clean", "corrupted", "true_effect"])
    df["head"] = pd.array(df["head"], dtype="Int8")
    clean, corrupted = df["clean"].astype(np.float32), df["corrupted"].astype(np.float32)
    df["patched"] = (corrupted + df["true_effect"] * (clean - corrupted)).astype(np.float32)
    gap = clean.astype(np.float64) - corrupted.astype(np.float64)
    eff = (df["patched"].astype(np.float64) - corrupted.astype(np.float64)) / gap
    df["effect"] = eff.where(gap.abs() >= EPSILON).astype(np.float32)
    df["clean"], df["corrupted"] = clean, corrupted
    df["method"], df["graddrop"] = "exact", pd.array([None] * len(df), dtype="Float32")
    effects = pa.Table.from_pandas(df.drop(columns="true_effect"), preserve_index=False)
    w.write_table("patching_effects", effects)
    _write_patching_summary(w, effects, pd.DataFrame(pp))


def _write_patching_summary(w: RunWriter, effects: pa.Table, pp: pd.DataFrame) -> None:
    """patching_summary as the job derives it (precompute.analyses.patching_ranking, numpy only), 200 resamples."""
    from precompute.analyses.patching_ranking import SummarySettings, columns_table, rows_of, summary_columns

    qid = {(e, p): q for e, p, q in zip(pp["experiment"], pp["patch_id"], pp["qid"])}
    keys = zip(effects.column("experiment").to_pylist(), effects.column("patch_id").to_pylist())
    rows = rows_of(effects.append_column("qid", pa.array([qid[k] for k in keys], pa.string())))
    settings = SummarySettings(min_delta=SUMMARY_SETTINGS["min_delta"], epsilon=EPSILON,
                               n_resamples=SUMMARY_SETTINGS["resamples"], seed=SUMMARY_SETTINGS["seed"])
    w.write_table("patching_summary", columns_table(summary_columns(rows, settings)))


def _write_svd(w: RunWriter, layers: int, heads: int, rng, alignment: dict | None = None) -> None:
    """Random spectra; ``alignment`` ((layer, head) -> value) gives every component of a head that alignment (so the
    head's alignment score, view head_alignment, is that value)."""
    rows = []
    for layer in range(layers):
        for head in range(heads):
            sig = np.sort(rng.gamma(2.0, 1.0, 8))[::-1]
            for k, s in enumerate(sig):
                a = float(rng.uniform(-1, 1)) if alignment is None else float(alignment[(layer, head)])
                rows.append(dict(layer=layer, head=head, kv_head=head, k=k, sigma=float(s), alignment=a))
    w.write_table("svd", pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False))


def _write_contrasts(w: RunWriter, pairs: pd.DataFrame, ha: pd.DataFrame) -> None:
    kind = pairs.set_index("pair_id")["neg_type"]
    ha = ha.assign(neg_type=kind.reindex(ha["pair_id"]).to_numpy())
    rows = []
    for contrast, other in (("relevant_vs_easy", "easy"), ("relevant_vs_hard", "hard")):
        kinds = pairs.groupby("qid")["neg_type"].agg(set)
        n_queries = int(sum({"relevant", other} <= k for k in kinds))
        for (layer, head), g in ha.groupby(["layer", "head"]):
            a_all, b_all = g[g["neg_type"] == "relevant"], g[g["neg_type"] == other]
            for m in METRICS:
                a, b = a_all[m].to_numpy(float), b_all[m].to_numpy(float)
                if np.isnan(a).all():  # a metric the model does not have (causal): no statistic
                    continue
                sd = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
                d = (a.mean() - b.mean()) / sd if sd > 0 else None
                u = float(sum((x > y) + 0.5 * (x == y) for x in a for y in b))
                diff = a.mean() - b.mean()
                p = float(_fake_p(np.array([3 * (d or 0)]))[0])
                rows.append(dict(layer=layer, head=head, metric=m, contrast=contrast, n_queries=n_queries,
                                 effect=diff, effect_low=diff - 0.01, effect_high=diff + 0.01, effect_dz=d, t=None, p=p,
                                 n_resamples=1000, n_a=len(a), n_b=len(b), mean_a=a.mean(), mean_b=b.mean(), diff=diff,
                                 cohen_d=d, u=u, pooled_p=p))
    df = pd.DataFrame(rows)
    df["p_holm"] = 0.0
    for contrast, idx in df.groupby("contrast").groups.items():
        df.loc[idx, "p_holm"] = _holm(df.loc[idx, "p"].to_numpy())
    for column in ("cohen_d", "effect_dz", "t"):
        df[column] = pd.array(df[column], dtype="Float64")
    schema = TABLES["head_contrasts"].schema
    w.write_table("head_contrasts", pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False))


MATCHING_HEADS = (1, 2)  # findings 'hold': the heads of the last layer that carry Query->Document matching


def _shape_findings(ha: pd.DataFrame, pairs: pd.DataFrame, layers: int, rng, *, holds: bool) -> None:
    """Rewrite the Query->Document masses (q_d = q_d_exact + q_d_other; the query's other targets rescaled so its row
    still sums to 1) so that the paper's findings hold or fail (module doc)."""
    kind = pairs["neg_type"].to_numpy()[ha["pair_id"].to_numpy()]
    rel, lexical = kind == "relevant", kind != "easy"  # judged passages share the query's words, easy ones do not
    layer, head, n = ha["layer"].to_numpy(), ha["head"].to_numpy(), len(ha)
    if holds:  # exact matches separate from layer 0; the rest only in a few heads of the last layer
        exact = 0.05 + rng.uniform(0, 0.1, n) + 0.04 * lexical
        other = 0.05 + rng.uniform(0, 0.1, n) + 0.3 * (rel & (layer == layers - 1) & np.isin(head, MATCHING_HEADS))
    else:  # exact matches never separate; the rest everywhere, in every head
        exact = 0.08 + rng.uniform(0, 0.1, n) - 0.03 * rel
        other = 0.05 + rng.uniform(0, 0.1, n) + 0.2 * rel
    if not holds:  # value-weighted shares (when the schema has them): [CLS] and SEP contribute more than attended
        for src in ("q", "d"):
            shares = [f"vw_{src}_{dst}" for dst in SEGMENTS]
            if all(c in ha.columns for c in shares):
                weighted = ha[[f"{src}_{dst}" for dst in SEGMENTS]].to_numpy() * np.array([3.0, 1.0, 3.0, 1.0, 3.0])
                weighted /= weighted.sum(axis=1, keepdims=True)
                for j, c in enumerate(shares):
                    ha[c] = weighted[:, j].astype(np.float32)
    q_d = exact + other
    rest = [f"q_{d}" for d in SEGMENTS if d != "d"]
    scale = (1 - q_d) / ha[rest].sum(axis=1).to_numpy()
    for c in rest:
        ha[c] = (ha[c] * scale).astype(np.float32)
    ha["q_d"], ha["q_d_exact"], ha["q_d_other"] = (v.astype(np.float32) for v in (q_d, exact, other))


def _alignment_scores(ha: pd.DataFrame, pairs: pd.DataFrame, *, holds: bool) -> dict:
    """Per head, its mean Query->Document difference relevant - easy (holds: the alignment score follows it; fails:
    it runs against it)."""
    kind = pairs["neg_type"].to_numpy()[ha["pair_id"].to_numpy()]
    frame = ha.assign(kind=kind)
    means = frame[frame["kind"].isin(("relevant", "easy"))].groupby(["layer", "head", "kind"])["q_d"].mean().unstack()
    diff = (means["relevant"] - means["easy"]) / (means["relevant"] - means["easy"]).abs().max()
    return {key: (1 if holds else -1) * float(v) for key, v in diff.items()}


def build_findings_store(store: Path, *, holds: bool) -> Path:
    """The Findings page's stores: a full run of 12 queries built so that every finding of the paper holds
    (``holds``), with a second model's run on the same dataset, or so that each fails, alone."""
    build_run(store, model="tiny-ce", n_queries=12, seed=7, findings="hold" if holds else "fail")
    if holds:
        build_run(store, model="other-ce", layers=2, heads=2, n_queries=3, seed=8, optional=False)
    return Path(store)


def build_store(store: Path) -> Path:
    """The standard test store: two full runs (dl20; dl19 in the layout before head_attention was partitioned) of one
    model and a dl20 run of a second, smaller model without the optional tables."""
    build_run(store, dataset="trec-dl-2020", model="tiny-ce", seed=0)
    build_run(store, dataset="trec-dl-2019", model="tiny-ce", seed=1, legacy=True)
    build_run(store, dataset="trec-dl-2020", model="small-ce", layers=2, heads=4, seed=2, optional=False)
    return Path(store)


def build_bad_store(store: Path) -> Path:
    """A store whose only runs are refused: one of another schema version, one still running."""
    build_run(store, dataset="trec-dl-2020", model="old-ce", optional=False,
              manifest_overrides={"schema_version": SCHEMA_VERSION + 1})
    build_run(store, dataset="trec-dl-2019", model="busy-ce", optional=False,
              manifest_overrides={"status": "running"})
    return Path(store)


# Text a link or a store may carry that Markdown would turn into a live link, an image, HTML, bold, a colour or math,
# each piece with the pattern of its raw form, so a test can tell which one got through (tests/app/test_markdown.py).
HOSTILE_PIECES = {
    "link": ("[Session expired: sign in](https://evil.example/x)", r"(?<!\\)\[Session expired: sign in(?<!\\)\]\("),
    "image": ("![pixel](https://evil.example/p.png)", r"(?<!\\)!(?<!\\)\[pixel"),
    "url": ("https://evil.example/auto", r"https://evil"),
    "www": ("www.evil.example", r"www\.evil"),
    "email": ("spy@evil.example", r"spy@evil"),
    "html": ("<img src=evil.png>", r"(?<!\\)<img"),
    "bold": ("**bold-evil**", r"(?<!\\)\*(?<!\\)\*bold-evil"),
    "colour": (":red[evil-red]", r":red(?<!\\)\[evil"),
    "math": ("$evil^2$", r"(?<!\\)\$evil"),
}
# ... and a backtick, which closed the code spans the app put names in (`{run.name}`) and let the rest loose
HOSTILE = " ".join(text for text, _ in HOSTILE_PIECES.values()) + " `evil-code`"
HOSTILE_FOLDER = "trec-dl-2020__[sign in](https:evil.example) **bold-evil** :red[evil-red]"  # no "/" in a name
HOSTILE_PLAIN = "trec-dl-2020__plain-hostile"


def build_hostile_store(store: Path) -> Path:
    """Runs whose every string the app shows comes from the store and is :data:`HOSTILE`: a full run in a folder
    named with Markdown (manifest names, ids, segment words, parameters; query and passage texts; the ablation
    measure) and a run without optional tables whose spectra were not computed for a hostile reason."""
    model = {"id": f"models/{HOSTILE}", "name": f"model {HOSTILE}", "architecture": f"arch {HOSTILE}",
             "model_type": f"type {HOSTILE}", "layers": 2, "heads": 2, "hidden": 64, "num_labels": 1, "score": "logit",
             "family": f"family {HOSTILE}", "attention": f"attention {HOSTILE}", "causal": False,
             "segment_labels": {s: f"{s.upper()} {HOSTILE}" for s in SEGMENTS},
             "template": f"{{query}} {HOSTILE} {{document}}", "answer_tokens": [f"yes {HOSTILE}", "no"],
             "answer_ids": [1, 2]}
    dataset = {"spec": f"data/{HOSTILE}", "name": f"dataset {HOSTILE}", "source": f"/nowhere/{HOSTILE}"}
    parameters = {"max_length": f"512 {HOSTILE}", "seed": f"0 {HOSTILE}", "easy_negatives": f"2 {HOSTILE}"}
    common = {"model": model, "dataset": dataset, "parameters": parameters, "created": f"today {HOSTILE}"}
    full = build_run(store, dataset="trec-dl-2020", model=HOSTILE_FOLDER.split("__", 1)[1], layers=2, heads=2,
                     n_queries=2, manifest_overrides=common)
    _rewrite_strings(full, "pairs", {"query": lambda v: f"{v} {HOSTILE}", "doc": lambda v: f"{v} {HOSTILE}"})
    for table in ("ablation_metrics", "ablation_summary"):
        _rewrite_strings(full, table, {"measure": lambda v: f"{v} {HOSTILE}"})
    build_run(store, dataset="trec-dl-2020", model="plain-hostile", layers=2, heads=2, n_queries=2, optional=False,
              manifest_overrides={**common, "spectra": {"computed": False, "reason": f"reason {HOSTILE}",
                                                        "matrix": f"matrix {HOSTILE}"}})
    return Path(store)


def _rewrite_strings(run: Path, table: str, changes: dict) -> None:
    """Rewrite string columns of one table of ``run`` in place, keeping its identity and row count."""
    from precompute.store import integrity

    path = run / f"{table}.parquet"
    data = pq.read_table(path)
    for column, change in changes.items():
        values = [change(v) for v in data.column(column).to_pylist()]
        data = data.set_column(data.schema.get_field_index(column), column, pa.array(values, pa.string()))
    RunWriter(run, identity=integrity.stored_identity(path)).write_table(table, data)


CAUSAL, MONOT5, DEEP, V1 = ("trec-dl-2020__tiny-decoder", "trec-dl-2020__tiny-monot5", "trec-dl-2020__deep-ce",
                            "trec-dl-2020__old-v1-ce")


def build_family_store(store: Path) -> Path:
    """Runs of other families: a causal decoder classifier (6 layers x 2 heads, every optional table), a MonoT5-like
    encoder-decoder (4 x 3, decoder_cross_attention), a deeper bert-style encoder (12 x 2, no optional tables) and
    a schema-version-1 run (no family fields in its manifest)."""
    build_run(store, model="tiny-decoder", family="causal", layers=6, heads=2, n_queries=3, seed=3)
    build_run(store, model="tiny-monot5", family="monot5", layers=4, heads=3, n_queries=3, seed=4, optional=False)
    build_run(store, model="deep-ce", layers=12, heads=2, n_queries=3, seed=5, optional=False)
    build_run(store, model="old-v1-ce", family="v1", layers=3, heads=2, n_queries=2, seed=6, optional=False)
    return Path(store)
