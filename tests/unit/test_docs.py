"""The tables in docs/SEMANTICS.md are copies of the code's own tables: they must match."""

from pathlib import Path

from fwfs import errors, paths

SEMANTICS = Path(__file__).resolve().parents[2] / "docs" / "SEMANTICS.md"


def _between(text: str, marker: str) -> str:
    start = text.index(f"<!-- {marker} -->\n") + len(f"<!-- {marker} -->\n")
    return text[start : text.index(f"<!-- /{marker} -->")]


def test_names_table_is_the_one_the_rules_produce() -> None:
    assert _between(SEMANTICS.read_text(), "names-table") == paths.render_examples()


def test_errno_table_is_the_one_the_client_uses() -> None:
    assert _between(SEMANTICS.read_text(), "errno-table") == errors.render_errno_table()


def test_every_errno_row_names_an_errno_its_class_raises() -> None:
    text = SEMANTICS.read_text()
    for row in errors.ERRNO_TABLE:
        assert f"| {row.errno_name} |" in text
        assert row.error.errno == getattr(__import__("errno"), row.errno_name)
