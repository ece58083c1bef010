"""--subspace-heads top:N picks heads by the lower bound of their query-level effect, not by d_z."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from precompute.stages.ablations_stage import top_heads


def test_top_heads_rank_by_the_effects_lower_bound_not_a_near_zero_sd(tmp_path):
    rows = [  # (layer, head, contrast, metric, effect, effect_low, effect_dz)
        (0, 0, "relevant_vs_easy", "q_d", 0.020, 0.019, 40.0),  # tiny, near-constant differences: d_z huge
        (1, 2, "relevant_vs_easy", "q_d", 0.400, 0.300, 3.0),  # surely large
        (1, 3, "relevant_vs_easy", "q_d", 0.500, 0.050, 1.0),  # large but uncertain
        (2, 0, "relevant_vs_easy", "d_q", 0.900, 0.800, 9.0),  # another metric
        (2, 1, "relevant_vs_hard", "q_d", 0.900, 0.800, 9.0),  # another contrast
        (2, 2, "relevant_vs_easy", "q_d", None, None, None),  # untested
    ]
    names = ["layer", "head", "contrast", "metric", "effect", "effect_low", "effect_dz"]
    path = tmp_path / "head_contrasts.parquet"
    pq.write_table(pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)}), path)
    assert top_heads(path, 2) == [(1, 2), (1, 3)]
    assert top_heads(path, 9) == [(1, 2), (1, 3), (0, 0)]
