"""docs/store.md documents exactly the schema in code, and its SQL examples run on a real store."""

from __future__ import annotations

import re

import pytest

from precompute.store import docs
from precompute.store.connect import connect
from precompute.store.schema import TABLES

TEXT = docs.DOC.read_text()


def test_generated_section_is_up_to_date():
    section = TEXT.split(docs.BEGIN, 1)[1].split(docs.END, 1)[0]
    assert section.strip() == docs.render().strip(), "run: python -m precompute.store.docs --write"


def test_generated_manifest_section_is_up_to_date():
    section = TEXT.split(docs.MANIFEST_BEGIN, 1)[1].split(docs.MANIFEST_END, 1)[0]
    assert section.strip() == docs.render_manifest().strip(), "run: python -m precompute.store.docs --write"


def test_every_manifest_field_is_documented():
    import dataclasses

    from precompute.store import manifest

    sections = [cls for cls in vars(manifest).values() if isinstance(cls, type) and issubclass(cls, manifest.Section)
                and cls is not manifest.Section]
    assert manifest.Manifest in sections and manifest.AblationsInfo in sections
    for section in sections:
        assert section.__doc__.strip().splitlines()[0] in TEXT, f"section {section.__name__} is not in docs/store.md"
        for f in dataclasses.fields(section):
            if f.name != "extra":
                assert f.metadata.get("doc"), f"{section.__name__}.{f.name} has no description"
                assert f"| `{f.name}` |" in TEXT, f"{section.__name__}.{f.name} is not in docs/store.md"


def test_every_public_table_and_column_is_documented_and_no_internal_one():
    for table in TABLES.values():
        if table.internal:  # resumable parts merged into a public table: never a file of a finished run
            assert f"### `{table.name}`" not in TEXT
            continue
        assert f"### `{table.name}`" in TEXT
        for column in table.columns:
            assert f"| `{column.name}` |" in TEXT, f"{table.name}.{column.name}"


def test_every_condition_kind_is_documented_with_its_grammar():
    from precompute.conditions import REGISTRY

    for kind in REGISTRY.values():
        assert f"| `{kind.name}` | `{kind.grammar.replace('|', chr(92) + '|')}` | `{kind.example}` |" in TEXT


@pytest.mark.parametrize("sql", re.findall(r"```sql\n(.*?)```", TEXT, flags=re.S))
def test_example_query_runs(sql, tiny_bert_run):
    _, root = tiny_bert_run
    cursor = connect(root).execute(sql)  # fails on any table, view or column the docs get wrong
    cursor.fetchall()
    assert cursor.description
