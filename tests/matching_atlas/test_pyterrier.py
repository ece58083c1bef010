"""The atlas in a PyTerrier pipeline without Java: a DataFrame source >> the atlas builds a run of exactly the frame's
pairs, and pt.Experiment over the plain and two ablated rerankers gives the report's nDCG@10 and p-values."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest
from ir_measures import nDCG

pt = pytest.importorskip("pyterrier")

from matching_atlas.pyterrier import Atlas, AtlasError, stored_scores, write_trec_run  # noqa: E402
from tests.precompute.conftest import make_dataset  # noqa: E402
from tests.tiny_models import build  # noqa: E402

CONDITIONS = ("q_d@all/zero", "d_q@all/zero")


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """(topics, qrels, the first stage's result frame with text, a tiny model) from a tiny dataset folder."""
    root = tmp_path_factory.mktemp("pt")
    folder = make_dataset(root / "tiny-dl")
    topics = pd.read_csv(folder / "queries.tsv", sep="\t", names=["qid", "query"], dtype=str)
    docs = pd.read_csv(folder / "docs.tsv", sep="\t", names=["docno", "text"], dtype=str)
    qrels = pd.read_csv(folder / "qrels.txt", sep=" ", names=["qid", "iter", "docno", "label"],
                        dtype={"qid": str, "docno": str})[["qid", "docno", "label"]]
    run = pd.read_csv(folder / "runs" / "first.trec", sep=" ", names=["qid", "Q0", "docno", "rank", "score", "tag"],
                      dtype={"qid": str, "docno": str})
    frame = run[run["rank"] <= 8].merge(topics, on="qid").merge(docs, on="docno")[["qid", "query", "docno", "text",
                                                                                  "score"]]
    return topics, qrels, frame, build("bert", root / "model")


def test_a_dataframe_pipeline_builds_a_run_and_experiment_gives_the_reports_numbers(setting, tmp_path):
    topics, qrels, frame, model = setting
    atlas = Atlas(str(model), tmp_path / "atlas", qrels=qrels, ablations=("groups",), ablation_groups=("q_d", "d_q"),
                  batch_size=8, stages=("summaries", "ablations"))
    source = pt.Transformer.from_df(frame)
    reranked = (source >> atlas)(topics)
    pairs = pq.read_table(atlas.run_folder / "pairs.parquet").to_pandas()
    assert sorted(zip(pairs.qid, pairs.docid)) == sorted(zip(frame.qid, frame.docno))  # exactly the frame's pairs
    merged = reranked.merge(pairs.rename(columns={"docid": "docno"}), on=["qid", "docno"], suffixes=("", "_stored"))
    assert len(merged) == len(frame) and (merged.score == merged.score_stored).all()

    import matching_atlas as ma

    summary = ma.open_run(atlas.run_folder).table1(measure="nDCG@10", scope="run").set_index("condition_id")  # the report's
    # the systems are the run's Holm family (the built-in groups and the two asked for), so Holm corrects alike
    conditions = sorted(summary[summary.analysis == "attention"].index)
    assert set(CONDITIONS) <= set(conditions)
    # a string measure is read by PyTerrier 1.1 as a trec_eval name (ndcg_cut_10): the ir_measures object is nDCG@10
    result = pt.Experiment([source >> atlas, *(source >> atlas.ablated(c) for c in conditions)], topics, qrels,
                           eval_metrics=[nDCG @ 10], baseline=0, test="t", correction="holm",
                           names=["plain", *conditions]).set_index("name")
    assert result.loc["plain", "nDCG@10"] == pytest.approx(summary.loc["none", "mean"], abs=1e-9)
    for c in conditions:
        row = summary.loc[c]
        assert result.loc[c, "nDCG@10"] == pytest.approx(row["mean"], abs=1e-9)
        # NaN on both sides: per-query values equal to the baseline's (no t-test; the store's p is NULL)
        assert result.loc[c, "nDCG@10 p-value"] == pytest.approx(row["p"], abs=1e-9, nan_ok=True)
        assert result.loc[c, "nDCG@10 p-value corrected"] == pytest.approx(row["p_holm"], abs=1e-9, nan_ok=True)
    tested = summary.loc[conditions, "p"].dropna()
    assert len(tested) >= 2 and (tested < 1).all()  # p-values that were computed, not only NaN = NaN

    exported = write_trec_run(stored_scores(atlas.run_folder, conditions[0]), tmp_path / "ablated.trec")
    import ir_measures

    back = list(ir_measures.read_trec_run(str(exported)))
    assert len(back) == len(frame)
    with pytest.raises(AtlasError, match="not in run"):
        atlas.ablated("cls_q@all/zero")(frame)


def test_a_frame_without_text_or_judgments_is_one_line(setting, tmp_path):
    _, _, frame, model = setting
    with pytest.raises(AtlasError, match="lacks text"):
        Atlas(str(model), tmp_path)(frame.drop(columns="text"))
    with pytest.raises(AtlasError, match="label column or pass qrels"):
        Atlas(str(model), tmp_path)(frame)
