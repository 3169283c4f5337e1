"""Word lists learnt from the training spans: which words were seen inside names, places, organisations,
addresses, titles and nationalities.

The tagger gets one feature per list a word belongs to (``gz=PERSON``), which generalises from the words it
has seen to names it has not seen in that sentence shape. Trained naively the feature would be a perfect
oracle on the training data and the tagger would trust it blindly, so during training every record sees lists
built only from the other folds (cross-fitting); the shipped lists come from all of the training data.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

from aiguardian.guards.pii.features import tokenize

Gazetteer = Mapping[str, tuple[str, ...]]

LISTED_TYPES = ("PERSON", "LOCATION", "ORGANIZATION", "ADDRESS", "NRP", "TITLE")
OUTSIDE = "O"  # words seen mostly outside any entity: ordinary words
MIN_SHARE = 0.5  # a word joins a list when at least this share of its occurrences are inside that type
_WORD = re.compile(r"[^\W\d_]{2,}")


def build(records: Iterable[Mapping[str, object]]) -> dict[str, tuple[str, ...]]:
    """Lists from records of ``{"text", "spans"}``, as ``word -> types`` (sorted, so output is stable)."""
    inside: dict[str, Counter[str]] = defaultdict(Counter)
    total: Counter[str] = Counter()
    for record in records:
        text = str(record["text"])
        spans = record["spans"]
        assert isinstance(spans, list)
        for start, end in tokenize(text):
            word = text[start:end].lower()
            if not _WORD.fullmatch(word):
                continue
            total[word] += 1
            for span in spans:
                if span["start"] < end and start < span["end"]:
                    if span["type"] in LISTED_TYPES:
                        inside[word][span["type"]] += 1
                    break
            else:
                inside[word][OUTSIDE] += 1
    return {
        word: tuple(sorted(kind for kind, n in kinds.items() if n >= MIN_SHARE * total[word]))
        for word, kinds in sorted(inside.items())
        if any(n >= MIN_SHARE * total[word] for n in kinds.values())
    }


# Word lists of a public fake-data library (Faker, MIT), read at training time only: first names, last names,
# country and place names of its ~80 locales. They carry general knowledge ("Olivia" is a first name) that a
# few thousand template sentences cannot teach. The tagger sees them as ``gz=first`` and so on.
PUBLIC_LISTS = {
    "first": ("person", ("first_names", "first_names_male", "first_names_female", "first_names_nonbinary")),
    "last": ("person", ("last_names", "last_names_male", "last_names_female")),
    "country": ("address", ("countries",)),
    "place": ("address", ("cities", "city_names", "big_cities", "provinces", "states", "regions")),
}


def public_lists() -> dict[str, tuple[str, ...]]:
    """``word -> list names`` from Faker's providers (``pip install aiguardian[train]``)."""
    import importlib
    import pkgutil

    words: dict[str, set[str]] = defaultdict(set)
    for list_name, (provider, attributes) in PUBLIC_LISTS.items():
        package = importlib.import_module(f"faker.providers.{provider}")
        for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
            cls = importlib.import_module(f"faker.providers.{provider}.{module}").Provider
            for attribute in attributes:
                values = getattr(cls, attribute, None)
                if not isinstance(values, (list, tuple, dict)):
                    continue
                for value in values:
                    for word in _WORD.findall(str(value).lower()):
                        words[word].add(list_name)
    return {word: tuple(sorted(lists)) for word, lists in sorted(words.items())}


def merge(*lists: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for mapping in lists:
        for word, kinds in mapping.items():
            out[word] = tuple(sorted(set(out.get(word, ())) | set(kinds)))
    return dict(sorted(out.items()))


def cross_fitted(records: Sequence[Mapping[str, object]], folds: Sequence[int]) -> list[Gazetteer]:
    """For each record, the lists built from the records of the other folds."""
    by_fold = sorted(set(folds))
    built = {fold: build(r for r, f in zip(records, folds, strict=True) if f != fold) for fold in by_fold}
    return [built[f] for f in folds]
