"""docs/vllm-internals.md lists exactly what the start-up check looks for."""

from pathlib import Path

from node.vllm.internals import doc_table

DOC = Path(__file__).resolve().parents[1] / "docs" / "vllm-internals.md"


def test_the_doc_table_is_the_checked_list():
    text = DOC.read_text()
    assert text.endswith(doc_table()), "regenerate the table: python -c 'from node.vllm.internals import doc_table; print(doc_table())'"
