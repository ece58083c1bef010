"""atlas publish against a file-based stand-in for the Hub API, and the run read back through an hf:// path (an
fsspec filesystem over the stand-in's folder): verified before use, and the report prints the same Table 1."""

from __future__ import annotations

import re

import pytest
import yaml

from matching_atlas import hub
from matching_atlas.cli import main as atlas
from precompute.config import JobConfig
from tests.precompute.conftest import make_dataset
from tests.tiny_models import build

REPO = "someone/tiny-atlas-run"
URL = f"hf://datasets/{REPO}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from precompute.job import run as run_job

    root = tmp_path_factory.mktemp("hubrun")
    cfg = JobConfig(dataset=str(make_dataset(root / "tiny-dl")), model=str(build("bert", root / "model")),
                    out=root / "run", cache=root / "cache", easy_negatives=2, max_queries=4, batch_size=8,
                    progress=False, ablations=("groups",), stages=("summaries", "ablations"))
    return run_job(cfg)


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """The stand-in's folder; hf:// paths read from it, cached under tmp_path/cache."""
    root = tmp_path / "hub"
    monkeypatch.setattr(hub, "filesystem", lambda: hub.local_hub_filesystem(root))
    monkeypatch.setattr(hub, "cache_root", lambda: tmp_path / "cache")
    return root


def _table_one(text: str) -> str:
    """The report less the lines that name where the run is (its folder, the rerun command's --out)."""
    return re.sub(r"(?m)^(Run\s.*|.*--out .*)$", "", text)


def test_publish_writes_the_run_and_a_card_whose_configs_name_every_table(run, stand_in, capsys):
    assert hub.main([str(run), "--repo", REPO], api=hub.LocalHub(stand_in)) == 0
    published = stand_in / "datasets" / REPO
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*.parquet"))
    assert any(f.startswith("head_attention/layer=") for f in files)  # a partitioned table: one file per layer
    assert sorted(str(p.relative_to(published)) for p in published.rglob("*.parquet")) == files
    assert (published / "manifest.json").exists()
    tables = sorted({f.split("/")[0].removesuffix(".parquet") for f in files})
    text = (published / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert [c["config_name"] for c in front["configs"]] == tables
    patterns = {c["config_name"]: c["data_files"] for c in front["configs"]}
    assert patterns.pop("head_attention") == "head_attention/layer=*/*.parquet"
    assert all(pattern == f"{name}.parquet" for name, pattern in patterns.items())
    assert "python -m precompute" in text and "store schema version" in text and "page checksums" in text
    assert f"published {run} as {URL}" in capsys.readouterr().out


def test_the_report_of_the_hf_run_is_the_local_runs(run, stand_in, capsys):
    hub.publish(run, REPO, api=hub.LocalHub(stand_in))
    assert atlas(["report", str(run)]) == 0
    local = capsys.readouterr().out
    assert atlas(["report", URL]) == 0
    remote = capsys.readouterr().out
    assert "Directions" in local or "Groups" in local
    assert _table_one(remote) == _table_one(local)
    cached = hub.fetch(URL)
    assert (cached / "pairs.parquet").read_bytes() == (run / "pairs.parquet").read_bytes()
    import pandas as pd

    import matching_atlas as ma
    from matching_atlas.app_server import resolve_store

    pd.testing.assert_frame_equal(ma.open_run(URL, progress=False).table1(), ma.open_run(run, progress=False).table1())
    assert resolve_store(URL, environ={}) == cached.resolve()  # atlas app --store hf://...: the verified copy


def test_a_damaged_remote_file_is_refused_and_not_kept(run, stand_in, capsys):
    hub.publish(run, REPO, api=hub.LocalHub(stand_in))
    published = stand_in / "datasets" / REPO / "pairs.parquet"
    data = bytearray(published.read_bytes())
    data[len(data) // 3] ^= 0xFF
    published.write_bytes(bytes(data))
    assert atlas(["report", URL]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {URL}: ") and "pairs.parquet" in err and "\n" not in err
    assert not (hub.cache_root() / REPO.replace("/", "--") / "main" / "pairs.parquet").exists()
    import matching_atlas as ma

    with pytest.raises(ma.RunError, match="pairs.parquet"):
        ma.open_run(URL, progress=False)


def test_publish_refuses_an_unfinished_run_or_a_bad_repo(tmp_path, capsys):
    assert hub.main([str(tmp_path), "--repo", REPO], api=hub.LocalHub(tmp_path / "hub")) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert hub.main([str(tmp_path), "--repo", "nouser"]) == 2
    assert "expected USER/NAME" in capsys.readouterr().err


def test_an_unreachable_hub_is_one_line_naming_the_path(tmp_path):
    """A network or authentication failure (httpx raises its own classes, not OSError) is a HubError naming the run's
    path and what to check, never a bare "[Errno -2] Name or service not known"."""
    class Offline:
        def find(self, path, detail=False):
            raise RuntimeError("[Errno -2] Name or service not known")

    with pytest.raises(hub.HubError, match=r"hf://datasets/someone/none: the Hub could not be reached .*HF_TOKEN"):
        hub.fetch("hf://datasets/someone/none", fs=Offline(), cache=tmp_path)
