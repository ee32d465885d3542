"""Text normalization, spoken forms, sentence splitting and chunking of a book into CSM-sized
chunks.

Everything here is pure and built for throughput (a 1M-book catalog, ~5 G characters, is planned
in about a minute on two cores): NFKC and typography run as str methods over whole texts, and
the per-character rules (controls, dashes, paragraphs, sentence ends, packing) run in C++
(`narrate/_textcore.cpp`, compiled at install). This module documents those rules, builds the
`Chunk`s and their ids, and gives `measure_book` to the planner, which needs only numbers.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

try:
    from narrate import _textcore
except ImportError as exc:  # a checkout used without `make install` / `pip install`
    raise ImportError(
        "narrate's C++ text core (narrate/_textcore.cpp) is not built: run `make install` "
        "(or `pip install -e .`; needs g++ and the Python headers)"
    ) from exc
from narrate.config import ChunkingConfig, Lexicon, fingerprint
from narrate.errors import UsageError
from narrate.records import Chunk, Pause
from narrate.spoken import Decision, explain, speak, speak_counted

# --- normalization -------------------------------------------------------------------------

# Characters NFKC leaves alone (it already turns "…" into "..." and odd spaces into " "):
# typographic quotes, hyphen-like dashes ("-"), dash-like ones ("—", a clause break).
_TYPOGRAPHY = {
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2039\u203a", "'"),
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u00ab\u00bb", '"'),
    **dict.fromkeys("\u2010\u2012\u2013\u2212", "-"),
    **dict.fromkeys("\u2015\u2e3a\u2e3b", "\u2014"),
    "\u1680": " ",  # the one space NFKC keeps
}


# NFKC writes "3½" as "31⁄2": a space keeps the whole number apart ("3 1⁄2", three and a half)
_MIXED_FRACTION = re.compile(r"(?<=\d)(?=[\u00bc-\u00be\u2150-\u215e])")


def _unicode_forms(text: str) -> str:
    """NFKC, then the typography NFKC leaves alone; ASCII text has nothing to change."""
    if text.isascii():
        return text
    normalized = unicodedata.normalize("NFKC", text)
    if "\u2044" in normalized:  # a vulgar fraction (rare): keep it apart from a number before
        normalized = unicodedata.normalize("NFKC", _MIXED_FRACTION.sub(" ", text))
    text = normalized
    if " \u2013 " in text:  # a spaced en dash is a dash, not a range
        text = text.replace(" \u2013 ", " \u2014 ")
    # str.translate is slow on non-ASCII strings; a few memchr-fast scans are not
    for char, replacement in _TYPOGRAPHY.items():
        if char in text:
            text = text.replace(char, replacement)
    return text


def _spoken_forms(text: str, config: ChunkingConfig) -> str:
    """What the rest of the pipeline works on: Unicode forms, then the text as spoken
    (narrate.spoken: numbers, abbreviations and Roman numerals as words, the lexicon). Raises
    narrate.spoken.SpokenTooLong over `config.max_text_chars`: the limit holds for the text
    as spoken, which a lexicon can lengthen."""
    return _spoken_counted(text, config)[0]


def _spoken_counted(text: str, config: ChunkingConfig) -> tuple[str, int]:
    """`_spoken_forms`, and how many forms it left as written (their reading not certain)."""
    return speak_counted(_unicode_forms(text), config.lexicon, limit=config.max_text_chars)


def _paragraphs(text: str) -> list[str]:
    """The normalized, non-empty paragraphs of `text` (see `normalize`)."""
    return _textcore.paragraphs(_unicode_forms(text))


def normalize(text: str) -> str:
    """Canonical text: what chunk ids hash and what the model reads, once the text is written
    as spoken (see `spoken_text`).

    NFKC; curly quotes and guillemets become straight quotes, "…" and ". . ." become "...",
    "--" and dash-like characters become "—", hyphen-like ones "-"; control and invisible
    characters are removed; runs of spaces/tabs and single line breaks become one space;
    paragraphs (separated by blank lines) are joined by exactly "\\n\\n".
    """
    return "\n\n".join(_paragraphs(text))


def spoken_text(text: str, lexicon: Lexicon | None = None) -> str:
    """The text as the model will read it: `normalize` of the spoken forms (what `chunk_book`
    packs into chunks; `narrate spoken` prints it)."""
    return "\n\n".join(_textcore.paragraphs(speak(_unicode_forms(text), lexicon)))


def explain_spoken(text: str, lexicon: Lexicon | None = None) -> list[Decision]:
    """What `spoken_text` rewrote in `text` and by which rule, and what it left as written and
    why (narrate.spoken.explain on the Unicode forms)."""
    return explain(_unicode_forms(text), lexicon)


# --- sentence splitting --------------------------------------------------------------------


# A sentence ends at ".", "!", "?" or "…" (a run of them, then closing quotes and brackets:
# " ' ) ] } ’ ” ») when whitespace follows and the next word does not start in lowercase
# (a-z, ß-ÿ). A lone "." does not end one after a title (Mr, Mrs, Dr, Prof, St, Gen, Capt, vs,
# cf, approx, e.g, i.e, ...: any case), after an initial ("J. R. R."; "I." does end one), or
# after No/p/pp/ch/vol/fig/sec/... before a number ("No. 5"). The lists are in _textcore.cpp.


def _sentence_ends(text: str) -> list[int]:
    """Offsets just past each sentence's last character (before the whitespace that follows)."""
    return _textcore.sentence_ends(text)


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph into sentences, knowing abbreviations, initials, numbers and quotes.

    A sentence ends at ".", "!", "?" or an ellipsis (with any closing quotes/brackets) when
    the next word does not start in lowercase: '"Stop!" he said.' stays one sentence.
    """
    bounds = [0, *_sentence_ends(paragraph), len(paragraph)]
    sentences = (paragraph[start:end].strip() for start, end in pairwise(bounds))
    return [sentence for sentence in sentences if sentence]


# --- chunk ids -----------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _context(speaker: int, voice_key: str, engine_fingerprint: str) -> str:
    """Fingerprint of what a chunk's audio depends on besides its text: a catalog has few
    (speaker, voice, engine) triples, and each fingerprint costs ~10 µs of JSON + SHA-256."""
    return fingerprint(speaker, voice_key, engine_fingerprint)


def _id_function(speaker: int, voice_key: str, engine_fingerprint: str) -> Callable[[str], str]:
    """`chunk_id` for one book: the constant parts are fingerprinted once, the text per chunk.

    The context fingerprint is fixed-length hex, so (context, text) -> bytes is unambiguous.
    """
    context = (_context(speaker, voice_key, engine_fingerprint) + "\n").encode()
    id_length = len(context) - 1

    def chunk_id_of(text: str) -> str:
        return hashlib.sha256(context + text.encode()).hexdigest()[:id_length]

    return chunk_id_of


def chunk_id(text: str, speaker: int, voice_key: str, engine_fingerprint: str) -> str:
    """Stable id of a chunk's audio: hash of (normalized text, speaker, voice, engine).

    The book is not part of it, so identical chunks of different books share one id.
    `voice_key` identifies the voice prompt (its content, not only its name).
    """
    return _id_function(speaker, voice_key, engine_fingerprint)(normalize(text))


# --- chunking ------------------------------------------------------------------------------


_MIN_CHUNK_CHARS = 20  # a chunk must hold a few words


@dataclass(frozen=True, slots=True)
class _Budget:
    """How long a chunk may be for one (config, voice prompt size), as _textcore reads it."""

    chars: int  # longest chunk, in characters, under both limits (by the token estimator)
    frames: bytes  # int32 config.max_frames(n) for n in 0..chars
    tokens: bytes  # int32 config.estimate_tokens of n characters (it depends on length only)


@lru_cache(maxsize=64)
def _budget(config: ChunkingConfig, prompt_positions: int) -> _Budget:
    def fits(chars: int) -> bool:
        tokens = config.estimate_tokens("x" * chars)
        return prompt_positions + tokens + config.max_frames(chars) <= config.window

    low, high = 0, config.max_chunk_chars  # fits() is monotonic in the length
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    if low < _MIN_CHUNK_CHARS:
        raise UsageError(
            f"a voice prompt of {prompt_positions} positions leaves no room for text in "
            f"CSM's {config.window}-position window",
            hint="use a shorter voice prompt (a few seconds of audio is enough)",
        )
    lengths = range(low + 1)
    return _Budget(
        low,
        array("i", map(config.max_frames, lengths)).tobytes(),
        array("i", (config.estimate_tokens("x" * n) for n in lengths)).tobytes(),
    )


def _spec(
    config: ChunkingConfig, prompt_positions: int, count_tokens: Callable[[str], int] | None
) -> tuple[object, ...]:
    """The packing rules' parameters, as `_textcore.chunk` and `_textcore.measure` take them.

    Paragraphs and sentences are packed greedily under `budget.chars`; a piece whose real
    token count (`count_tokens`) does not fit is cut shorter. A piece ends at the last sentence
    end, else the last clause mark (, ; : —), else before a spaced dash, else at the last
    space; a single word longer than the budget is kept whole.
    """
    budget = _budget(config, prompt_positions)
    return (
        config.window - prompt_positions,  # room for the text tokens and the audio frames
        budget.chars,
        prompt_positions,
        None if count_tokens else budget.tokens,  # None: call count for every piece
        budget.frames,
        count_tokens or config.estimate_tokens,
        config.max_frames,
    )


_PAUSES: tuple[Pause, ...] = ("none", "sentence", "paragraph")


def chunk_book(
    book_id: str,
    text: str,
    *,
    config: ChunkingConfig,
    engine_fingerprint: str,
    speaker: int = 0,
    voice: str | None = None,
    voice_key: str = "",
    prompt_positions: int = 0,
    count_tokens: Callable[[str], int] | None = None,
) -> list[Chunk]:
    """Normalize a book's text, write it as spoken (`config.lexicon` included), and pack its
    sentences into chunks that fit CSM's window.

    Sentences are packed greedily; a paragraph always starts a new chunk (`pause_before`
    "paragraph"; "sentence" inside a paragraph; "none" for the first chunk). A sentence over
    the budget is split at clause marks (, ; : —), then at spaces, never inside a word.
    Every chunk has `positions <= config.window` and `len(text) <= config.max_chunk_chars`,
    except a single word longer than that, which is kept whole rather than cut.
    `count_tokens` is the model tokenizer when the caller has one (tokens the chunk text
    takes, specials included); without it `config.estimate_tokens` is used.
    """
    spec = _spec(config, prompt_positions, count_tokens)
    pieces = _textcore.chunk(_spoken_forms(text, config), spec)
    make_id = _id_function(speaker, voice_key, engine_fingerprint)
    return [
        Chunk(
            chunk_id=make_id(piece),
            book_id=book_id,
            index=index,
            text=piece,
            speaker=speaker,
            voice=voice,
            pause_before=_PAUSES[pause],
            text_tokens=tokens,
            max_frames=cap,
            prompt_positions=prompt_positions,
        )
        for index, (piece, tokens, cap, pause) in enumerate(pieces)
    ]


@dataclass(frozen=True, slots=True)
class BookMeasure:
    """What planning needs of a book's chunks, without the chunks: `chunk_book`'s chunks,
    counted. `positions` (int32) and `text_hashes` (uint64, of text + speaker + voice + engine;
    equal for identical chunks) are native-endian arrays, one entry per chunk."""

    chunks: int
    characters: int
    positions: bytes
    text_hashes: bytes
    left_as_written: int = 0  # forms the spoken step recognised but could not read for certain


def measure_book(
    text: str,
    *,
    config: ChunkingConfig,
    engine_fingerprint: str,
    speaker: int = 0,
    voice_key: str = "",
    prompt_positions: int = 0,
) -> BookMeasure:
    """`chunk_book`'s chunks as numbers, at C++ speed (no Python object per chunk).

    Chunk ids are SHA-256 in Python; the 64-bit text hash here only tells identical chunks
    apart within a plan window, where a collision (~3e-10 for 10^5 chunks) would miscount one.
    """
    seed = int(_context(speaker, voice_key, engine_fingerprint)[:16], 16)
    spec = _estimator_spec(config, prompt_positions)
    spoken, left = _spoken_counted(text, config)
    return BookMeasure(*_textcore.measure(spoken, spec, seed), left_as_written=left)


@lru_cache(maxsize=64)
def _estimator_spec(config: ChunkingConfig, prompt_positions: int) -> tuple[object, ...]:
    return _spec(config, prompt_positions, None)
