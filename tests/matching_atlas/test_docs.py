"""Every code block of docs/reader.md runs, in order, on a tiny store laid out as the examples name it."""

from __future__ import annotations

import re
import shutil

from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures"
DOC = REPO / "docs" / "reader.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_reader_docs_examples_run(tmp_path, monkeypatch, capsys):
    store = tmp_path / "data" / "store"
    shutil.copytree(FIXTURES / "store-v2" / "tiny-dl__tiny-bert", store / "trec-dl-2020__minilm-l6-msmarco-ce")
    shutil.copytree(FIXTURES / "store-v1" / "tiny-dl__tiny-bert", store / "trec-dl-2020__minilm-l6-msmarco-ce-all")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))
    code = blocks()
    assert len(code) >= 7
    scope: dict = {}
    for block in code:
        exec(compile(block, str(DOC), "exec"), scope)  # noqa: S102 - the documentation's own examples
    out = capsys.readouterr().out
    assert "does not exist" in out and "condition_id" in out and "bin" in out and "neg_type" in out
    assert (tmp_path / "head-means.html").is_file()
