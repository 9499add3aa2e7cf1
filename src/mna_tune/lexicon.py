"""The domain-term lexicon (data/lexicon/domain_terms.tsv): M&A, finance and law terms with
weights. The filter's lexicon scorer weighs rows by it; evaluation measures term use by it."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, require_regular_file


@dataclass(frozen=True)
class Lexicon:
    weights: dict[str, int]
    pattern: re.Pattern  # every term, longest first, so "기업결합" wins over "결합" at one place

    @classmethod
    def from_tsv(cls, path: Path) -> Lexicon:
        """Lines `term<TAB>weight[<TAB>domain]`; blank lines and `#` comments are skipped."""
        weights: dict[str, int] = {}
        require_regular_file(path, "filter.lexicon_path")
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise InputError(str(path), "lexicon file not found (filter.lexicon_path)") from None
        except IsADirectoryError:
            raise InputError(str(path), "is a folder, expected the lexicon TSV file (filter.lexicon_path)") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) < 2 or not fields[1].strip().lstrip("-").isdigit():
                raise InputError(str(path), "expected 'term<TAB>weight[<TAB>domain]'", record=f"line {number}")
            term = unicodedata.normalize("NFC", fields[0].strip())
            if term in weights:
                raise InputError(str(path), f"term '{term}' is listed twice", record=f"line {number}")
            weights[term] = int(fields[1])
        if not weights:
            raise InputError(str(path), "the lexicon holds no terms")
        alternation = "|".join(re.escape(term) for term in sorted(weights, key=len, reverse=True))
        return cls(weights, re.compile(alternation))
