"""The family tables of README, docs/store.md and the families package docstring are generated from the registry
and up to date; every family's declared facts are in them."""

from __future__ import annotations

import pytest

from precompute.families import FAMILIES
from precompute.families import docs


@pytest.mark.parametrize("path", list(docs.TARGETS), ids=lambda p: p.name)
def test_generated_family_table_is_up_to_date(path):
    assert docs.section(path.read_text()).strip() == docs.TARGETS[path]().strip(), \
        "run: python -m precompute.families.docs --write"


def test_every_family_is_a_row_of_the_readme_and_module_tables():
    readme, module = docs.readme_table(), docs.module_table()
    for family in FAMILIES:
        assert f"| `{family.name}` |" in readme and f"| {family.name} |" in module, family.name
    store = docs.store_table()
    assert all(family.name in store for family in FAMILIES)


def test_splice_replaces_only_the_generated_part():
    text = f"before\n{docs.BEGIN}\nold table\n{docs.END}\nafter\n"
    assert docs.splice(text, "| new |\n") == f"before\n{docs.BEGIN}\n| new |\n{docs.END}\nafter\n"
