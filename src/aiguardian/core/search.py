"""Full-text search shared by features: the words of a query, and how each database matches them.

SQLite matches through an external-content FTS5 table whose rowid is the searched row's id; PostgreSQL
through a generated ``tsvector`` column with a GIN index (the ``simple`` configuration: no stemming, no stop
words, so both databases find the same rows). Every word must match. The feature's migration makes both.
"""

from __future__ import annotations

import re
import unicodedata

from sqlalchemy import ColumnElement, Integer, column, func, literal_column, text
from sqlalchemy.orm import QueryableAttribute

MAX_SEARCH_WORDS = 32
# Letters and digits only: what both FTS5's unicode61 tokenizer and PostgreSQL's parser call words.
_WORD = re.compile(r"[^\W_]+")


def search_words(q: str) -> list[str]:
    """The words of a search, in order, each once. Operators and quotes are not words: text is only text."""
    words = _WORD.findall(unicodedata.normalize("NFKC", q).lower())
    return list(dict.fromkeys(words))[:MAX_SEARCH_WORDS]


def fts5_query(words: list[str]) -> str:
    # Every word becomes an FTS5 string (a quote inside is doubled), so no user text is ever FTS5 syntax.
    return " AND ".join('"' + word.replace('"', '""') + '"' for word in words)


def matching(
    id_column: QueryableAttribute[int], words: list[str], *, sqlite: bool, fts_table: str, tsvector: str
) -> ColumnElement[bool]:
    """Rows holding every word: found in ``fts_table`` on SQLite, by the ``tsvector`` column (``table.column``)
    on PostgreSQL. ``fts_table`` and ``tsvector`` are the feature's constants, never user text."""
    if sqlite:
        hits = (
            text(f"SELECT rowid FROM {fts_table} WHERE {fts_table} MATCH :fts_query")  # noqa: S608 (constants)
            .bindparams(fts_query=fts5_query(words))
            .columns(column("rowid", Integer))
        )
        return id_column.in_(hits)
    query = func.plainto_tsquery(literal_column("'simple'::regconfig"), " ".join(words))
    return literal_column(tsvector).op("@@", is_comparison=True)(query)
