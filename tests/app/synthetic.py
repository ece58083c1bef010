"""A tiny, internally consistent store built in code, for the app tests.

Every table of ``precompute.store.schema.TABLES`` is written through ``RunWriter.write_table``;
derived tables are derived, not invented: ``head_attention_agg`` is DuckDB's GROUP BY over
``head_attention`` joined with ``pairs``, ``ablation_summary`` and ``head_contrasts`` are computed
from the per-query / per-pair tables, so a number the app shows can be checked against a direct
DuckDB query on the store. The statistics' p-values are simple deterministic stand-ins (the app
only displays them), so the tests need no scipy.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from precompute.names import EASY_GRADE, METRICS, SEGMENTS
from precompute.store.schema import SCHEMA_VERSION, TABLES
from precompute.store.writer import RunWriter

OPTIONAL_TABLES = ("ablation_conditions", "ablation_scores", "ablation_metrics", "ablation_summary", "svd",
                   "head_contrasts")


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
) -> Path:
    """Write one run folder ``<store>/<dataset>__<model>`` and return it."""
    rng = np.random.default_rng(seed)
    root = Path(store) / f"{dataset}__{model}"
    w = RunWriter(root)
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
    for src in SEGMENTS:
        alpha = np.ones(5)
        mass = rng.dirichlet(alpha, size=N)
        if src == "q":  # relevant pairs and later layers look more at the document: a visible signal
            boost = 0.15 * rel + 0.05 * ha["layer"].to_numpy()
            mass[:, 3] += boost
            mass /= mass.sum(axis=1, keepdims=True)
        for j, dst in enumerate(SEGMENTS):
            ha[f"{src}_{dst}"] = mass[:, j].astype(np.float32)
    ha["q2d_max"] = rng.uniform(0, 1, N).astype(np.float32)
    ha["d2q_max"] = rng.uniform(0, 1, N).astype(np.float32)
    share = rng.uniform(0, 1, N)
    ha["q_d_exact"] = (ha["q_d"] * share).astype(np.float32)
    ha["q_d_other"] = (ha["q_d"] - ha["q_d_exact"]).astype(np.float32)
    w.write_table("head_attention", pa.Table.from_pandas(ha, preserve_index=False))

    # -- head_attention_agg: derived with DuckDB from the two tables just written ------------------
    con = duckdb.connect()
    try:
        sums = ", ".join(f"sum(CAST(h.{m} AS DOUBLE)) AS {m}_sum" for m in METRICS)
        sumsq = ", ".join(f"sum(CAST(h.{m} AS DOUBLE) * CAST(h.{m} AS DOUBLE)) AS {m}_sumsq" for m in METRICS)
        agg = con.sql(f"""
            SELECT h.layer, h.head, p.qid, p.neg_type, p.grade, count(*) AS n, {sums}, {sumsq}
            FROM read_parquet('{w.table_path("head_attention")}') h
            JOIN read_parquet('{w.table_path("pairs")}') p USING (pair_id)
            GROUP BY ALL
        """).to_arrow_table()
    finally:
        con.close()
    w.write_table("head_attention_agg", agg)

    if optional:
        _write_ablations(w, pairs, layers, heads, rng)
        _write_svd(w, layers, heads, rng)
        _write_contrasts(w, pairs, ha)

    manifest = {
        "status": "complete",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"id": model_id or f"models/{model}-not-on-this-machine", "name": model, "revision": None,
                  "architecture": "BertForSequenceClassification", "model_type": "bert",
                  "layers": layers, "heads": heads, "hidden": 64, "num_labels": 1, "score": "logit"},
        "dataset": {"spec": f"../shared/data/{dataset}", "name": dataset, "source": f"/nowhere/{dataset}"},
        "parameters": {"max_length": 512, "seed": seed, "easy_negatives": 2, "candidates": None, "depth": 100,
                       "max_queries": None, "batch_size": 32, "device": "cpu", "dtype": "float32"},
        "counts": {"pairs": n_pairs, "queries": n_queries,
                   "neg_type": {k: int(v) for k, v in pairs["neg_type"].value_counts().items()},
                   "skipped": {"relevant": 0, "hard": 0, "easy": 0}, "truncated": int(pairs["truncated"].sum())},
        "metrics": {"nDCG@10": float(np.mean([
            _ndcg10(g["score"].to_numpy(), g["grade"].to_numpy(), list(g["docid"])) for _, g in pairs.groupby("qid")]))},
        "tables": {t: {"rows": None} for t in TABLES if w.has_table(t)},
        "versions": {"torch": "none", "transformers": "none"},
        "timings": {"summaries_s": 0.1},
    }
    manifest.update(manifest_overrides or {})
    w.write_manifest(manifest)
    if manifest_overrides and "schema_version" in manifest_overrides:
        # write_manifest stamps the current version; a test of another version rewrites it afterwards
        import json

        path = root / "manifest.json"
        data = json.loads(path.read_text())
        data["schema_version"] = manifest_overrides["schema_version"]
        path.write_text(json.dumps(data))
    return root


def _write_ablations(w: RunWriter, pairs: pd.DataFrame, layers: int, heads: int, rng) -> None:
    conds = [dict(condition_id="none", condition="none", mode="none", layers="all", layer=None, head=None,
                  kind="baseline", directions=None, effect=0.0)]
    for d in ("q_d", "d_q", "q_cls", "d_sep2"):
        conds.append(dict(condition_id=f"{d}@all/zero", condition=d, mode="zero", layers="all", layer=None, head=None,
                          kind="direction", directions=d, effect=-1.5 if d == "q_d" else -0.3))
    conds.append(dict(condition_id="cross@all/zero", condition="cross", mode="zero", layers="all", layer=None,
                      head=None, kind="group", directions="q_d,d_q", effect=-2.0))
    for layer in range(layers):
        conds.append(dict(condition_id=f"q_d@{layer}/zero", condition="q_d", mode="zero", layers=str(layer),
                          layer=layer, head=None, kind="layer_sweep", directions="q_d", effect=-0.4 * (layer + 1)))
        for head in range(heads):
            conds.append(dict(condition_id=f"head:{layer}.{head}/zero", condition="head", mode="zero",
                              layers=str(layer), layer=layer, head=head, kind="head", directions=None,
                              effect=float(rng.normal(0, 0.5))))
    cdf = pd.DataFrame(conds)
    cond_cols = ["condition_id", "condition", "mode", "layers", "layer", "head"]
    for c in ("layer", "head"):
        cdf[c] = pd.array(cdf[c], dtype="Int8")
    w.write_table("ablation_conditions", pa.Table.from_pandas(cdf[cond_cols + ["kind", "directions"]],
                                                              preserve_index=False))

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
    kinds = {c["condition_id"]: c["kind"] for c in conds}
    for (scope, measure), grp in mdf.groupby(["scope", "measure"]):
        base = grp[grp["condition_id"] == "none"].set_index("qid")["value"]
        rows = []
        for cid, g in grp.groupby("condition_id", sort=False):
            v = g.set_index("qid")["value"]
            diffs = (v - base.reindex(v.index)).to_numpy()
            n = len(diffs)
            sd = diffs.std(ddof=1) if n > 1 else 0.0
            t = diffs.mean() / (sd / math.sqrt(n)) if sd > 0 else None
            first = g.iloc[0]
            rows.append({**{k: first[k] for k in cond_cols}, "kind": kinds[cid], "scope": scope, "measure": measure,
                         "n_queries": n, "mean": v.mean(), "baseline": base.reindex(v.index).mean(),
                         "delta": v.mean() - base.reindex(v.index).mean(), "t": t,
                         "p": None if t is None else float(_fake_p(np.array([t]))[0])})
        block = pd.DataFrame(rows)
        mask = block["p"].notna()
        block["p_holm"] = None
        block.loc[mask, "p_holm"] = _holm(block.loc[mask, "p"].to_numpy(dtype=float))
        summary.append(block)
    adf = pd.concat(summary, ignore_index=True)
    for c in ("layer", "head"):
        adf[c] = pd.array(adf[c], dtype="Int8")
    for c in ("t", "p", "p_holm"):
        adf[c] = pd.array(adf[c], dtype="Float64")
    w.write_table("ablation_summary", pa.Table.from_pandas(adf, preserve_index=False))


def _write_svd(w: RunWriter, layers: int, heads: int, rng) -> None:
    rows = []
    for layer in range(layers):
        for head in range(heads):
            sig = np.sort(rng.gamma(2.0, 1.0, 8))[::-1]
            for k, s in enumerate(sig):
                rows.append(dict(layer=layer, head=head, k=k, sigma=float(s), alignment=float(rng.uniform(-1, 1))))
    w.write_table("svd", pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False))


def _write_contrasts(w: RunWriter, pairs: pd.DataFrame, ha: pd.DataFrame) -> None:
    kind = pairs.set_index("pair_id")["neg_type"]
    ha = ha.assign(neg_type=kind.reindex(ha["pair_id"]).to_numpy())
    rows = []
    for contrast, other in (("relevant_vs_easy", "easy"), ("relevant_vs_hard", "hard")):
        for (layer, head), g in ha.groupby(["layer", "head"]):
            a_all, b_all = g[g["neg_type"] == "relevant"], g[g["neg_type"] == other]
            for m in METRICS:
                a, b = a_all[m].to_numpy(float), b_all[m].to_numpy(float)
                sd = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
                d = (a.mean() - b.mean()) / sd if sd > 0 else None
                u = float(sum((x > y) + 0.5 * (x == y) for x in a for y in b))
                rows.append(dict(layer=layer, head=head, metric=m, contrast=contrast, n_a=len(a), n_b=len(b),
                                 mean_a=a.mean(), mean_b=b.mean(), diff=a.mean() - b.mean(), cohen_d=d, u=u,
                                 p=float(_fake_p(np.array([3 * (d or 0)]))[0])))
    df = pd.DataFrame(rows)
    df["p_holm"] = 0.0
    for contrast, idx in df.groupby("contrast").groups.items():
        df.loc[idx, "p_holm"] = _holm(df.loc[idx, "p"].to_numpy())
    df["cohen_d"] = pd.array(df["cohen_d"], dtype="Float64")
    w.write_table("head_contrasts", pa.Table.from_pandas(df, preserve_index=False))


def build_store(store: Path) -> Path:
    """The standard test store: two full runs (dl20, dl19) of one model and a dl20 run of a second,
    smaller model without the optional tables."""
    build_run(store, dataset="trec-dl-2020", model="tiny-ce", seed=0)
    build_run(store, dataset="trec-dl-2019", model="tiny-ce", seed=1)
    build_run(store, dataset="trec-dl-2020", model="small-ce", layers=2, heads=4, seed=2, optional=False)
    return Path(store)


def build_bad_store(store: Path) -> Path:
    """A store whose only runs are refused: one of another schema version, one still running."""
    build_run(store, dataset="trec-dl-2020", model="old-ce", optional=False,
              manifest_overrides={"schema_version": SCHEMA_VERSION + 1})
    build_run(store, dataset="trec-dl-2019", model="busy-ce", optional=False,
              manifest_overrides={"status": "running"})
    return Path(store)
