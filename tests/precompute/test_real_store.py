"""On real data and real weights: the numbers the job stores equal a direct computation from eager attention.

Runs the job on the first DL20 query (../shared; skipped when absent) and recomputes a sample of the
stored pairs from ``output_attentions=True`` with the reference implementation in tests/reference.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from precompute.config import JobConfig
from precompute.job import run
from precompute.families.loading import load
from precompute.metrics import METRICS
from precompute.families.segments import encode
from precompute.store.connect import connect
from tests import reference

pytestmark = [pytest.mark.shared, pytest.mark.slow]


@pytest.fixture(scope="module")
def real_run(dl20_dir, minilm_dir, tmp_path_factory):
    cfg = JobConfig(dataset=str(dl20_dir), model=str(minilm_dir), out=tmp_path_factory.mktemp("real") / "run",
                    cache=tmp_path_factory.mktemp("cache"), max_queries=1, easy_negatives=20, device="cpu",
                    progress=False, stages=("summaries",))
    return cfg, run(cfg)


def test_stored_summaries_equal_eager_attention(real_run):
    cfg, root = real_run
    con = connect(root)
    sample = con.execute(
        "SELECT pair_id, query, doc, score, q_exact_tokens, d_exact_tokens FROM pairs "
        "WHERE pair_id IN (SELECT min(pair_id) FROM pairs GROUP BY neg_type UNION SELECT max(pair_id) FROM pairs GROUP BY neg_type) "
        "ORDER BY pair_id"
    ).df()
    assert len(sample) >= 6  # first and last pair of each kind
    lm = load(cfg.model, device="cpu")
    batch = encode(lm.tokenizer, list(sample["query"]), list(sample["doc"]), cfg.max_length)
    logits, attentions = reference.eager_attentions(lm.model, batch.inputs)
    want = reference.summaries(attentions, batch.segments.numpy(), batch.inputs["input_ids"].numpy())
    ids = ",".join(str(i) for i in sample["pair_id"])
    stored = con.execute(
        f"SELECT pair_id, layer, head, {', '.join(METRICS)} FROM head_attention WHERE pair_id IN ({ids}) ORDER BY pair_id, layer, head"
    ).df()
    got = stored[list(METRICS[:want.shape[-1]])].to_numpy().reshape(want.shape)  # the masses and matching signals
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(sample["score"].to_numpy(), logits[:, 0].numpy(), atol=1e-4)

    seg, input_ids = batch.segments.numpy(), batch.inputs["input_ids"].numpy()
    for row in range(len(sample)):
        q_ids = set(input_ids[row][seg[row] == 1])
        d_ids = input_ids[row][seg[row] == 3]
        assert sample["d_exact_tokens"][row] == sum(i in q_ids for i in d_ids)
        assert sample["q_exact_tokens"][row] == sum(i in set(d_ids) for i in input_ids[row][seg[row] == 1])


def test_every_judged_pair_with_text_is_there(real_run, dl20_dir):
    _, root = real_run
    con = connect(root)
    qid = con.execute("SELECT DISTINCT qid FROM pairs").fetchall()
    assert len(qid) == 1
    judged = [line.split() for line in (dl20_dir / "qrels.txt").read_text().splitlines() if line.split()[0] == qid[0][0]]
    docids = {line.split("\t", 1)[0] for line in (dl20_dir / "docs.tsv").read_text().splitlines()}
    with_text = {d for _, _, d, _ in judged if d in docids}
    stored = {d for (d,) in con.execute("SELECT docid FROM pairs WHERE neg_type <> 'easy'").fetchall()}
    assert stored == with_text
    assert con.execute("SELECT count(*) FROM pairs WHERE neg_type = 'easy'").fetchone()[0] == 20
