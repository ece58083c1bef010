"""Every malformed value of a flag of the conditions grammar stops the CLI before any work with one line and exit 2
(the values a model must confirm, such as layer 99 of a 3-layer model, are refused after it loads: test_job)."""

from __future__ import annotations

import pytest

from precompute.cli import main

BAD = [
    ("--ablations", "bogus"), ("--ablations", "none,heads"), ("--ablations", "directions,,nothing"),
    ("--ablation-mode", "half"), ("--ablation-mode", ","),
    ("--ablation-layers", "x"), ("--ablation-layers", "3-1"), ("--ablation-layers", "-1"),
    ("--ablation-group", "head=q_d"), ("--ablation-group", "mlp=q_d"), ("--ablation-group", "qk=q_d"),
    ("--ablation-group", "none=q_d"), ("--ablation-group", "Bad Name=q_d"), ("--ablation-group", "g=Q->X"),
    ("--ablation-group", "cross=q_d"), ("--ablation-sweep", "q_d+d_q"), ("--ablation-sweep", "foo"),
    ("--ablation-heads", "3.x"), ("--ablation-heads", "3"),
    ("--ablation-components", "mlp@3:x/mean"), ("--ablation-components", "mlp:d@/mean"),
    ("--ablation-components", "ffn@3/zero"), ("--ablation-components", "attn@1/mask"),
    ("--ablation-components", "mlp@2-1/zero"), ("--component-mode", "median"),
    ("--subspace-heads", "top:0"), ("--subspace-heads", "3"), ("--subspace-heads", ","),
    ("--subspace-k", "0"), ("--subspace-k", "x"), ("--subspace-k", "4-2"),
    ("--subspace-ops", "bogus"), ("--subspace-ops", "scale=nan"), ("--subspace-ops", "scale=inf"),
    ("--subspace-ops", "scale=1e309"), ("--subspace-ops", "scale=-1"), ("--subspace-ops", "invert"),
]


@pytest.mark.parametrize("flag,value", BAD)
def test_a_bad_value_is_one_line_and_exit_2(flag, value, capsys, tmp_path):
    extra = ["--ablations", "directions"] if flag != "--ablations" else []
    with pytest.raises(SystemExit) as exit_:
        main(["--dataset", str(tmp_path / "none"), "--model", str(tmp_path / "none"), "--out", str(tmp_path / "out"),
              *extra, flag, value])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "out").exists()
