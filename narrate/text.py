"""Text normalization, sentence splitting and chunking of a book into CSM-sized chunks.

Everything here is pure and built for throughput (a 1M-book catalog is planned in one pass):
precompiled regexes run over whole strings, Python code runs per paragraph and per chunk,
never per character or per word.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

from narrate.config import ChunkingConfig, fingerprint
from narrate.errors import UsageError
from narrate.records import Chunk, Pause

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
# Control and invisible format characters, and lone surrogates (JSON can carry them):
# line-like ones become line breaks, the rest go.
_ASCII_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 and C1 controls but tab and newline
    "\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff"  # soft hyphen, zero-width, bidi
    "\u2028\u2029\ud800-\udfff]"  # line/paragraph separators, lone surrogates
)
_LINE_BREAK = re.compile("\r\n?|[\x0b\x0c\x85\u2028]")
_PARAGRAPH_BREAK = re.compile("\n[ \t]*\n")
_SPACE_RUN = re.compile("[ \t]{2,}|\t")
_DOUBLE_HYPHEN = re.compile(r"(?<!-)-{2,3}(?!-)")  # typewriter dash: "--" or "---"
_SPACED_ELLIPSIS = re.compile(r"\.(?:[ \t]\.){2,}")  # ". . ." -> "..."


def _paragraphs(text: str) -> list[str]:
    """The normalized, non-empty paragraphs of `text` (see `normalize`).

    Each step runs only when a cheap scan says it is needed: most narratives are clean.
    After it, the only whitespace left is " ", "\t" and "\n" (NFKC maps the other spaces).
    """
    if text.isascii():
        control = _ASCII_CONTROL.search(text)
    else:
        text = unicodedata.normalize("NFKC", text)
        if " \u2013 " in text:  # a spaced en dash is a dash, not a range
            text = text.replace(" \u2013 ", " \u2014 ")
        # str.translate is slow on non-ASCII strings; a few memchr-fast scans are not
        for char, replacement in _TYPOGRAPHY.items():
            if char in text:
                text = text.replace(char, replacement)
        control = _CONTROL.search(text)
    if control:
        text = _LINE_BREAK.sub("\n", text).replace("\u2029", "\n\n")
        text = _CONTROL.sub("", text)
    if "--" in text:
        text = _DOUBLE_HYPHEN.sub("\u2014", text)
    if ". ." in text or ".\t." in text:
        text = _SPACED_ELLIPSIS.sub("...", text)
    paragraphs = []
    for para in _PARAGRAPH_BREAK.split(text):
        if "\n" in para:
            para = para.replace("\n", " ")
        if "  " in para or "\t" in para:
            para = _SPACE_RUN.sub(" ", para)
        para = para.strip(" ")
        if para:
            paragraphs.append(para)
    return paragraphs


def normalize(text: str) -> str:
    """Canonical text: what chunk ids hash and what the model reads.

    NFKC; curly quotes and guillemets become straight quotes, "…" and ". . ." become "...",
    "--" and dash-like characters become "—", hyphen-like ones "-"; control and invisible
    characters are removed; runs of spaces/tabs and single line breaks become one space;
    paragraphs (separated by blank lines) are joined by exactly "\\n\\n".
    """
    return "\n\n".join(_paragraphs(text))


# --- sentence splitting --------------------------------------------------------------------


def _preceded_by(words: Iterable[str]) -> str:
    """A zero-width pattern: the text before this point is one of `words` (a whole word) + ".".

    Python lookbehinds need a fixed width, so words are grouped by length.
    """
    by_length: dict[int, list[str]] = {}
    for word in words:
        by_length.setdefault(len(word), []).append(re.escape(word))
    return "|".join(
        rf"(?<=\b(?:{'|'.join(sorted(group))})\.)" for _, group in sorted(by_length.items())
    )


# Abbreviations after which a period never ends a sentence (case-insensitive).
_TITLES = (
    "mr mrs ms mx dr prof rev hon st mt ft fr gen col maj capt cpt lt sgt cpl adm cmdr gov sen"
    " rep pres supt insp messrs mme mlle msgr vs viz cf approx e.g i.e"
).split()
# Abbreviations that do not end a sentence when a number follows ("No. 5", "p. 12").
_NUMBERED = "no nos nr p pp ch vol fig art sec op".split()

_CLOSERS = "\"')\\]}\u2019\u201d\u00bb"  # straight, and curly for text not normalized yet
_SENTENCE_END = re.compile(
    rf"""
    [.!?\u2026]
    (?=[.!?\u2026{_CLOSERS}]*\s+[^\sa-z\u00df-\u00ff])  # cheap test first: the next sentence
                                                    # does not start in lowercase
    (?:
        (?<=[!?\u2026])[.!?\u2026]*         # "!", "?!", "?..."
      | (?<=\.)[.!?\u2026]+                 # "...", ".?"
      | (?<=\.)                             # a lone period, unless it ends
        (?!(?i:{_preceded_by(_TITLES)}))    #   a title or "e.g."
        (?<!\b[A-HJ-Z]\.)                   #   an initial ("J. R. R."; "I." ends sentences)
        (?!(?i:{_preceded_by(_NUMBERED)})\s+\d)  # or "No." before a number
    )
    [{_CLOSERS}]*                            # closing quotes and brackets stay with it
    (?=\s)
    """,
    re.VERBOSE,
)


def _sentence_ends(text: str) -> list[int]:
    """Offsets just past each sentence's last character (before the whitespace that follows)."""
    return [match.end() for match in _SENTENCE_END.finditer(text)]


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph into sentences, knowing abbreviations, initials, numbers and quotes.

    A sentence ends at ".", "!", "?" or an ellipsis (with any closing quotes/brackets) when
    the next word does not start in lowercase: '"Stop!" he said.' stays one sentence.
    """
    bounds = [0, *_sentence_ends(paragraph), len(paragraph)]
    sentences = (paragraph[start:end].strip() for start, end in pairwise(bounds))
    return [sentence for sentence in sentences if sentence]


# --- chunk ids -----------------------------------------------------------------------------


def _id_function(speaker: int, voice_key: str, engine_fingerprint: str) -> Callable[[str], str]:
    """`chunk_id` for one book: the constant parts are fingerprinted once, the text per chunk.

    The context fingerprint is fixed-length hex, so (context, text) -> bytes is unambiguous.
    """
    context = (fingerprint(speaker, voice_key, engine_fingerprint) + "\n").encode()
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
    """How long a chunk may be for one (config, voice prompt size)."""

    chars: int  # longest chunk, in characters, under both limits (by the token estimator)
    frames: tuple[int, ...]  # config.max_frames(n) for n in 0..chars


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
    return _Budget(low, tuple(config.max_frames(n) for n in range(low + 1)))


_CLAUSE_ENDS = (", ", "; ", ": ", "\u2014 ")  # cut after the mark


def _cut(para: str, start: int, limit: int, sentence_ends: list[int]) -> int:
    """Where the chunk starting at `start` ends, at most at `limit` when possible.

    Prefers the last sentence end, then the last clause mark, then the last space; a single
    word longer than the budget is kept whole. `para` has single spaces between words, so
    the returned offset is a space (or the end) and the next chunk starts one after it.
    """
    if limit >= len(para):
        return len(para)
    i = bisect_right(sentence_ends, limit) - 1
    if i >= 0 and sentence_ends[i] > start:
        return sentence_ends[i]
    clause = max(para.rfind(mark, start, limit + 1) for mark in _CLAUSE_ENDS) + 1
    if clause > start:
        return clause
    dash = para.rfind(" \u2014", start + 1, limit + 2)  # cut before a spaced dash
    if dash > start:
        return dash
    space = para.rfind(" ", start + 1, limit + 1)
    if space > start:
        return space
    space = para.find(" ", limit)
    return len(para) if space < 0 else space


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
    """Normalize a book's text and pack its sentences into chunks that fit CSM's window.

    Sentences are packed greedily; a paragraph always starts a new chunk (`pause_before`
    "paragraph"; "sentence" inside a paragraph; "none" for the first chunk). A sentence over
    the budget is split at clause marks (, ; : —), then at spaces, never inside a word.
    Every chunk has `positions <= config.window` and `len(text) <= config.max_chunk_chars`,
    except a single word longer than that, which is kept whole rather than cut.
    `count_tokens` is the model tokenizer when the caller has one (tokens the chunk text
    takes, specials included); without it `config.estimate_tokens` is used.
    """
    budget = _budget(config, prompt_positions)
    longest, frames = budget.chars, budget.frames
    count = count_tokens or config.estimate_tokens
    room = config.window - prompt_positions  # for the text tokens and the audio frames

    def frame_cap(chars: int) -> int:
        return frames[chars] if chars <= longest else config.max_frames(chars)

    pieces: list[tuple[str, int, int, Pause]] = []  # text, tokens, frame cap, pause
    for para in _paragraphs(text):
        pause: Pause = "paragraph" if pieces else "none"
        if len(para) <= longest:  # fast path: the whole paragraph is one chunk
            tokens, cap = count(para), frames[len(para)]
            if tokens + cap <= room:
                pieces.append((para, tokens, cap, pause))
                continue
        sentence_ends = _sentence_ends(para)
        start = 0
        while start < len(para):
            limit = start + longest
            while True:  # shrink until the real token count fits as well
                end = _cut(para, start, limit, sentence_ends)
                piece = para[start:end]
                tokens, cap = count(piece), frame_cap(len(piece))
                if tokens + cap <= room or " " not in piece:
                    break
                limit = end - 1
            pieces.append((piece, tokens, cap, pause))
            pause = "sentence"
            start = end + 1

    make_id = _id_function(speaker, voice_key, engine_fingerprint)
    return [
        Chunk(
            chunk_id=make_id(piece),
            book_id=book_id,
            index=index,
            text=piece,
            speaker=speaker,
            voice=voice,
            pause_before=pause,
            text_tokens=tokens,
            max_frames=cap,
            prompt_positions=prompt_positions,
        )
        for index, (piece, tokens, cap, pause) in enumerate(pieces)
    ]
