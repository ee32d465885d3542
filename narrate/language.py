"""The language check before synthesis: CSM-1B speaks English, so a row whose `language` is not
English, or whose text reads as another language, is rejected (reason `unsupported_language`)
before anything is synthesized, instead of being spoken badly and failing at the quality gate.

Detection is offline: lingua-language-detector, its models inside its wheel. Book prose is
recognised as English first by its function words ("the", "and", "of"...) in a sample of the
text, which costs microseconds; only a text without them (another language, or a list of
names) is given to lingua, which loads its models on first use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from narrate.records import Book, RowError

REASON = "unsupported_language"
SAMPLE_CHARS = 2000  # from the start and the middle of a text: a book is in one language
MIN_WORDS = 8  # fewer words than this tell nothing: a title, a chapter heading
MIN_CONFIDENCE = 0.6  # lingua's confidence in the other language, to reject a row

_ENGLISH_CODES = frozenset({"en", "eng", "english"})
# frequent English words that are no words of the other Latin-script languages: English prose
# has one in every ~4 words, German or French none
_ENGLISH_WORDS = re.compile(
    r" (?:the|and|of|to|that|his|her|with|had|for|she|he|it|not|but|from|you|they) "
)
# three of these in the first MARKER_CHARS characters (~180 words): English, nothing more to
# check; most frequent first
_MARKERS = (" the ", " of ", " and ", " to ", " that ", " it ", " with ", " had ", " his ", " but ")
SURE_MARKERS = 3
MARKER_CHARS = 1000
_ENGLISH_SHARE = 0.05  # of the words of the first FAST_SAMPLE_CHARS characters, at least
FAST_SAMPLE_CHARS = 1000
_LETTERS = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True, slots=True)
class Detected:
    """The language a text reads as: ISO 639-1 code, English name, lingua's confidence."""

    code: str
    name: str
    confidence: float


def is_english_code(language: str) -> bool:
    """ "en", "en-GB", "en_US", "eng", "English" are English."""
    return re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0] in _ENGLISH_CODES


def _sample(text: str) -> str:
    if len(text) <= 2 * SAMPLE_CHARS:
        return text
    middle = len(text) // 2
    return text[:SAMPLE_CHARS] + " " + text[middle : middle + SAMPLE_CHARS]


def _reads_as_english(text: str) -> bool:
    """SURE_MARKERS of the English words in _MARKERS early in `text`: each str.find stops at
    the first one, a few dozen characters in (about a microsecond a book)."""
    found = 0
    for marker in _MARKERS:
        if text.find(marker, 0, MARKER_CHARS) >= 0:
            found += 1
            if found == SURE_MARKERS:
                return True
    return False


def detect_other_language(text: str) -> Detected | None:
    """The language `text` reads as when it is surely not English; None for English, or for
    too little text to tell."""
    if _reads_as_english(text):
        return None
    words = len(_LETTERS.findall(text, 0, FAST_SAMPLE_CHARS))
    if len(_ENGLISH_WORDS.findall(text, 0, FAST_SAMPLE_CHARS)) >= _ENGLISH_SHARE * words:
        return None
    sample = _sample(text)
    if len(_LETTERS.findall(sample)) < MIN_WORDS:
        return None
    from lingua import Language

    values = _detector().compute_language_confidence_values(sample)
    top = values[0] if values else None
    if top is None or top.language == Language.ENGLISH or top.value < MIN_CONFIDENCE:
        return None
    iso = top.language.iso_code_639_1.name.lower()
    return Detected(iso, top.language.name.capitalize(), round(top.value, 2))


@lru_cache(maxsize=1)
def _detector():  # type: ignore[no-untyped-def]
    from lingua import LanguageDetectorBuilder

    # low accuracy mode: trigram models only (about 150 MB, not 1 GB), reliable from a
    # sentence on, and a book sample is many sentences
    return LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()


def language_error(book: Book, text: str) -> RowError | None:
    """A RowError when `book` is not in English: its `language` field, or its text."""
    if not is_english_code(book.language):
        return RowError(
            book.row,
            REASON,
            f"language: {book.language!r} is not English, the only language CSM-1B speaks "
            "(--no-language-check narrates it anyway)",
            book.book_id,
            "language",
        )
    detected = detect_other_language(text)
    if detected is None:
        return None
    return RowError(
        book.row,
        REASON,
        f"text: reads as {detected.name} ({detected.code}, confidence {detected.confidence:.2f}),"
        " not English, the only language CSM-1B speaks (--no-language-check narrates it anyway)",
        book.book_id,
        "text",
    )
