"""Listen before publishing: does a chunk's audio say its text?

The audio is force-aligned with its own text by pocketsphinx (US English acoustic model,
dictionary and no language model, all inside its wheel): the text becomes a grammar that
accepts exactly its words in order, with silence and noise allowed between them. Audio that
says the text aligns end to end; audio that says something else, stops early, runs on or
holds a long gap does not, or aligns with a long stretch of silence/noise ("unexplained"
audio) where no word fits. Free transcription of synthetic speech is poor; alignment against
the known text is a good detector and runs at ~60x real time per core (`make bench-quality`).

Words missing from the dictionary (names, coinages) get a pronunciation from eSpeak NG's
letter-to-sound rules mapped to the dictionary's phone set, else a wildcard (the acoustic
model's generic speech phone), so they never fail a chunk on their own.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np

ASR_RATE = 16_000  # the acoustic model's sample rate
FRAME_S = 0.01  # pocketsphinx frames
# Exact digital silence (eSpeak NG pads with zeros) gives log-energy features the model never
# saw, and the aligner then fails on clean speech; a fixed, seeded noise floor at -60 dBFS
# avoids that and keeps the verdict a function of the audio alone.
NOISE_FLOOR = 1e-3
# Speech that ends (or starts) right at the edge of the clip loses its last phone's frames to
# the feature window and then fails to align; a short quiet margin on each side avoids it.
MARGIN_S = 0.3
# Unexplained audio: sound (frames within SOUND_DB of the loudest) that the aligner put in
# silence/noise segments rather than in a word, and the part of a word beyond a generous
# duration (babble or noise absorbed into it). Silence alone is a pause, judged by its length.
SOUND_DB = 35.0
END_LIMIT_S = 0.5  # unexplained audio allowed after the last word (a breath, a word's tail)
INSIDE_LIMIT_S = 0.75  # and before it (a whole book may hold INSIDE_SHARE of its duration)
INSIDE_SHARE = 0.01
GAP_LIMIT_S = 1.5  # longest pause (or any run without words) allowed before the last word
WORD_BASE_S = 0.5  # a word may last this long plus WORD_PHONE_S per phone before its excess
WORD_PHONE_S = 0.15  # counts as unexplained (noise or babble absorbed into one word)
PASS_SCORE = 1.0  # every passing chunk scores 1.0; a book below it holds a failed chunk
WILDCARD_PHONE = "+SPN+"  # the acoustic model's generic speech unit
# Beams: the default first (fast); a clean chunk that fails it gets one wider, slower try.
WIDE_BEAMS = {"beam": 1e-80, "pbeam": 1e-80, "wbeam": 1e-60}
# (wide beams, may stop early): a chunk that fails both strict passes is aligned once more
# with exits after every word, for the figures (how many words the audio does say).
ALIGNMENT_PASSES = ((False, False), (True, False), (True, True))
STOP_PROBABILITY = 1e-10

# eSpeak NG's English IPA phonemes in the dictionary's ARPAbet phone set.
IPA_TO_ARPABET = {
    "æ": "AE", "ɑ": "AA", "ɑː": "AA", "ɒ": "AA", "ɔ": "AO", "ɔː": "AO", "ʌ": "AH", "ə": "AH",
    "ɐ": "AH", "ᵻ": "IH", "ɪ": "IH", "i": "IY", "iː": "IY", "ɛ": "EH", "e": "EH", "eɪ": "EY",
    "aɪ": "AY", "aʊ": "AW", "oʊ": "OW", "əʊ": "OW", "o": "OW", "oː": "AO", "ɔɪ": "OY",
    "ʊ": "UH", "u": "UW", "uː": "UW", "ɜ": "ER", "ɜː": "ER", "ɚ": "ER", "ɝ": "ER", "a": "AA",
    "aː": "AA", "ɪə": "IH R", "eə": "EH R", "ʊə": "UH R", "iə": "IY AH", "aɪə": "AY ER",
    "aɪɚ": "AY ER", "ɔːɹ": "AO R", "oːɹ": "AO R", "ɑːɹ": "AA R", "ɛɹ": "EH R", "ʊɹ": "UH R",
    "ɪɹ": "IH R", "əl": "AH L", "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "ɡ": "G",
    "g": "G", "f": "F", "v": "V", "θ": "TH", "ð": "DH", "s": "S", "z": "Z", "ʃ": "SH",
    "ʒ": "ZH", "h": "HH", "tʃ": "CH", "dʒ": "JH", "m": "M", "n": "N", "ŋ": "NG", "l": "L",
    "ɹ": "R", "r": "R", "w": "W", "j": "Y", "ɾ": "D", "x": "HH", "ç": "HH", "ɬ": "L",
    "ʍ": "W", "ʔ": "",
}  # fmt: skip
_IGNORED_MARKS = "ˈˌ̩ʲ̃"  # stress, syllabicity (n̩ is N), palatalization, nasalization


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the aligner heard, in figures a person can judge."""

    words_expected: int
    words_aligned: int  # of the text's words, in order, from the first
    missing_at_end: int  # words_expected - words_aligned: the text the audio never reached
    unexplained_end_s: float  # sound after the last aligned word that no word explains
    unexplained_inside_s: float  # such sound before it
    longest_gap_s: float  # the longest stretch without words before the last word
    duration_s: float
    score: float  # 1.0 when passed; less the worse it is (the best of several takes wins)
    passed: bool
    reason: str  # why it failed, or "ok"

    def to_json(self) -> dict[str, object]:
        return {
            key: round(value, 3) if isinstance(value, float) else value
            for key, value in asdict(self).items()
        }

    def __str__(self) -> str:
        head = "pass" if self.passed else f"FAIL ({self.reason})"
        return (
            f"{head}: {self.words_aligned}/{self.words_expected} words aligned, "
            f"{self.unexplained_end_s:.1f} s unexplained at the end, "
            f"{self.unexplained_inside_s:.1f} s inside, longest gap {self.longest_gap_s:.1f} s, "
            f"score {self.score:.2f}"
        )


# --- text -------------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)*(?:'[a-z]+)*")
_ORDINAL = re.compile(r"^([0-9]+)(st|nd|rd|th)$")
_NUMBER = re.compile(r"^[0-9]+(?:[.,][0-9]+)*$")


def _number_words(text: str, **kw: str) -> list[str]:
    from num2words import num2words

    spoken = num2words(text, lang="en", **kw)
    return re.sub(r"[^a-z ]+", " ", spoken.lower()).split()


def _number_readings(token: str) -> list[list[str]]:
    """The ways a number token may be spoken: 1813 as "one thousand..." or "eighteen thirteen"."""
    if ordinal := _ORDINAL.match(token):
        return [_number_words(ordinal.group(1), to="ordinal")]
    plain = token.replace(",", "") if re.fullmatch(r"[0-9]{1,3}(,[0-9]{3})+", token) else token
    try:
        readings = [_number_words(plain)]
    except (ValueError, ArithmeticError, NotImplementedError):
        return [list(plain)]  # digit by digit: "1.2.3" etc.
    if plain.isdigit() and 1000 <= int(plain) <= 2099:
        readings.append(_number_words(plain, to="year"))
    if plain.isdigit() and len(plain) > 1:
        readings.append(_number_words(plain[0]) + [w for d in plain[1:] for w in _number_words(d)])
    return [r for i, r in enumerate(readings) if r and r not in readings[:i]]


def spoken_tokens(text: str) -> list[list[list[str]]]:
    """The text as the aligner expects it spoken: per token, its readings (word lists).

    First as the model was given it (narrate.spoken: numbers, abbreviations, Roman numerals
    as words; a no-op on a chunk's text, which is already spoken); then lower case, no
    punctuation, accents folded, dashes and hyphens split words, and any number left in
    digits in words (every usual reading of it is accepted).
    """
    from narrate.spoken import speak

    text = speak(text)
    folded = unicodedata.normalize("NFKD", text.replace("\u2019", "'").replace("\u2018", "'"))
    folded = "".join(c for c in folded if not unicodedata.combining(c)).lower()
    folded = re.sub(r"[-\u2010-\u2015_/]+", " ", folded)
    tokens: list[list[list[str]]] = []
    for token in _TOKEN.findall(folded):
        token = token.rstrip(".,")
        if _NUMBER.match(token) or _ORDINAL.match(token):
            tokens.append(_number_readings(token))
        elif token:
            tokens.append([[token]])
    return tokens


# --- pronunciations ---------------------------------------------------------------------


def ipa_to_arpabet(phonemes: Sequence[str]) -> list[str]:
    """eSpeak NG IPA phonemes in ARPAbet; unknown symbols are dropped, longest match first."""
    phones: list[str] = []
    for phoneme in phonemes:
        symbol = "".join(c for c in phoneme if c not in _IGNORED_MARKS).replace(" ", "")
        while symbol:
            for size in range(min(4, len(symbol)), 0, -1):
                if (mapped := IPA_TO_ARPABET.get(symbol[:size])) is not None:
                    phones.extend(mapped.split())
                    symbol = symbol[size:]
                    break
            else:
                symbol = symbol[1:].lstrip("ː")
    return phones


@cache
def _phonemizer():  # -> Phonemizer | None, one per process
    from narrate.synth.espeak import Phonemizer

    try:
        return Phonemizer()
    except OSError:
        return None


def pronunciation(word: str) -> str:
    """ARPAbet phones for a word the dictionary lacks: eSpeak NG's, else the wildcard."""
    phonemizer = _phonemizer()
    phones = ipa_to_arpabet(phonemizer.phonemes(word)) if phonemizer else []
    return " ".join(phones) if phones else WILDCARD_PHONE


# --- alignment --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Segment:
    word: str  # "(2)"-style alternate marks removed
    start: int  # frames
    end: int  # inclusive
    filler: bool


class Aligner:
    """A pocketsphinx decoder (two: default and wide beams) and the words added to it."""

    def __init__(self) -> None:
        self._decoders: dict[str, object] = {}
        self._added: dict[str, str] = {}

    def _decoder(self, wide: bool):
        key = "wide" if wide else "default"
        if key not in self._decoders:
            import pocketsphinx

            decoder = pocketsphinx.Decoder(
                lm=None, loglevel="FATAL", **(WIDE_BEAMS if wide else {})
            )
            for word, phones in self._added.items():
                decoder.add_word(word, phones, False)
            self._decoders[key] = decoder
        return self._decoders[key]

    def _known(self, word: str) -> str:
        """`word` in the dictionary (added from eSpeak NG when missing); its entry name."""
        decoder = self._decoder(False)
        if decoder.lookup_word(word) is None and word not in self._added:
            if "'" in word and decoder.lookup_word(word.replace("'", "")) is not None:
                return word.replace("'", "")
            phones = pronunciation(word)
            self._added[word] = phones
            for each in self._decoders.values():
                each.add_word(word, phones, True)
        return word

    def phone_count(self, word: str) -> int:
        phones = self._decoder(False).lookup_word(word)
        return len(phones.split()) if phones else 1

    def align(
        self, tokens: list[list[list[str]]], pcm: bytes, wide: bool, may_stop: bool = False
    ) -> list[_Segment]:
        """Segments of the best path through the text's grammar: complete when it reaches
        the last word, else the best partial path (a prefix of the text). `may_stop` lets the
        path leave the text after any word, at a cost: audio that stops early then still
        shows how far it got."""
        transitions: list[tuple] = []
        state = states = 0
        for readings in tokens:  # a token's readings are parallel paths to its exit state
            exit_state = states = states + 1
            for reading in readings:
                source = state
                words = [self._known(w) for w in reading]
                for word in words[:-1]:
                    states += 1
                    transitions.append((source, states, 1.0, word))
                    source = states
                transitions.append((source, exit_state, 1.0, words[-1]))
            state = exit_state
        if may_stop:
            transitions += [(s, state, STOP_PROBABILITY) for s in range(1, state)]
        decoder = self._decoder(wide)
        decoder.add_fsg("_quality", decoder.create_fsg("_quality", 0, state, transitions))
        decoder.activate_search("_quality")
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        return [
            _Segment(
                re.sub(r"\(\d+\)$", "", seg.word),
                seg.start_frame,
                seg.end_frame,
                seg.word.startswith(("<sil>", "[")),
            )
            for seg in decoder.seg() or ()
            if seg.word not in ("<s>", "</s>")
        ]


def _aligned_tokens(tokens: list[list[list[str]]], words: list[str]) -> int:
    """How many tokens, from the first, the aligned words speak."""
    count = position = 0
    for readings in tokens:
        for reading in readings:
            if words[position : position + len(reading)] == reading:
                position += len(reading)
                count += 1
                break
        else:
            break
    return count


@cache
def _aligner() -> Aligner:  # one per process: loading the model takes ~0.2 s
    return Aligner()


def to_pcm16(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float audio as the aligner hears it: 16 kHz int16, quiet margins, a noise floor."""
    from scipy.signal import resample_poly

    audio = np.asarray(audio, dtype=np.float32)
    if sample_rate != ASR_RATE and len(audio):
        common = math.gcd(sample_rate, ASR_RATE)
        audio = resample_poly(audio, ASR_RATE // common, sample_rate // common)
    margin = np.zeros(int(MARGIN_S * ASR_RATE), dtype=np.float32)
    audio = np.concatenate([margin, audio, margin])
    floor = np.random.default_rng(0).standard_normal(len(audio)) * NOISE_FLOOR
    return (np.clip(audio + floor, -1.0, 1.0) * 32767).astype("<i2")


def _sound_frames(pcm: np.ndarray) -> np.ndarray:
    """Per 10 ms frame: whether it holds sound (within SOUND_DB of the loudest frame)."""
    size = int(ASR_RATE * FRAME_S)
    frames = pcm[: len(pcm) // size * size].astype(np.float32).reshape(-1, size)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1.0)
    return level > (level.max(initial=0.0) - SOUND_DB)


def check(audio: np.ndarray, sample_rate: int, text: str) -> Verdict:
    """Whether mono `audio` says `text`, and the figures behind the verdict."""
    duration = len(audio) / sample_rate if sample_rate else 0.0
    tokens = spoken_tokens(text)
    pcm = to_pcm16(audio, sample_rate)
    sound = _sound_frames(pcm)
    if not tokens:
        return verdict_of(0, 0, (float(sound.sum()) * FRAME_S, 0.0, 0.0), duration)
    aligner = _aligner()
    best: tuple[int, list[_Segment]] = (-1, [])
    for wide, may_stop in ALIGNMENT_PASSES:
        segments = aligner.align(tokens, pcm.tobytes(), wide, may_stop)
        aligned = _aligned_tokens(tokens, [s.word for s in segments if not s.filler])
        if aligned > best[0]:
            best = (aligned, segments)
        if aligned == len(tokens):
            break
    aligned, segments = best
    return verdict_of(len(tokens), aligned, _unexplained(segments, sound, aligner), duration)


def _unexplained(
    segments: list[_Segment], sound: np.ndarray, aligner: Aligner
) -> tuple[float, float, float]:
    """Unexplained sound after the last word and before it, and the longest run without
    words before it (seconds)."""
    words = [s for s in segments if not s.filler]
    last_end = words[-1].end + 1 if words else 0
    inside = gap = run = 0.0
    for segment in segments:
        if segment.start >= last_end:
            break
        length = (segment.end - segment.start + 1) * FRAME_S
        if segment.filler:
            inside += float(sound[segment.start : segment.end + 1].sum()) * FRAME_S
            run += length
            gap = max(gap, run)
        else:
            run = 0.0
            allowed = WORD_BASE_S + WORD_PHONE_S * aligner.phone_count(segment.word)
            inside += max(0.0, length - allowed)
    end = float(sound[last_end:].sum()) * FRAME_S
    return end, inside, gap


def verdict_of(
    expected: int, aligned: int, unexplained: tuple[float, float, float], duration: float
) -> Verdict:
    """The figures judged against the limits; `unexplained` is (end, inside, longest gap)."""
    end, inside, gap = unexplained
    inside_limit = max(INSIDE_LIMIT_S, INSIDE_SHARE * duration)
    excess = (
        max(0.0, end - END_LIMIT_S) + max(0.0, inside - inside_limit) + max(0.0, gap - GAP_LIMIT_S)
    )
    if aligned < expected:
        reason = f"{expected - aligned} of {expected} words missing at the end"
    elif end > END_LIMIT_S:
        reason = f"{end:.1f} s of unexplained sound at the end"
    elif inside > inside_limit:
        reason = f"{inside:.1f} s of unexplained sound inside"
    elif gap > GAP_LIMIT_S:
        reason = f"a {gap:.1f} s gap without words"
    else:
        reason = "ok"
    fraction = aligned / expected if expected else 1.0
    return Verdict(
        words_expected=expected,
        words_aligned=aligned,
        missing_at_end=expected - aligned,
        unexplained_end_s=end,
        unexplained_inside_s=inside,
        longest_gap_s=gap,
        duration_s=duration,
        score=fraction / (1.0 + excess),
        passed=reason == "ok",
        reason=reason,
    )


# --- takes, books and the pool a run feeds -------------------------------------------------


def best_take(verdicts: Sequence[Verdict]) -> int:
    """Which of a chunk's takes to keep: the first that passes, else the best-scoring one
    (the earliest among equals)."""
    if not verdicts:
        raise ValueError("no takes to choose from")
    passing = [i for i, verdict in enumerate(verdicts) if verdict.passed]
    return passing[0] if passing else max(range(len(verdicts)), key=lambda i: verdicts[i].score)


def book_score(verdicts: Sequence[Verdict]) -> float:
    """A book's score: its worst chunk's (a listener hears every chunk); 1.0 without chunks.
    Below PASS_SCORE the book holds at least one chunk that failed every take."""
    return min((verdict.score for verdict in verdicts), default=PASS_SCORE)


def _warm_worker(parent: int, nice: int) -> None:
    if nice:
        os.nice(nice)
    # a SIGKILLed run cannot shut its pool down: its checkers notice and exit within a second
    threading.Thread(target=_exit_with, args=(parent,), name="parent-watch", daemon=True).start()
    _aligner()._decoder(False)  # load the model before the first chunk arrives


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


class QualityPool:
    """Checks in CPU processes, fed while the engine works: `submit` returns at once.

    Processes are spawned, not forked: the caller may hold a CUDA context or threads.
    """

    def __init__(self, workers: int, *, nice: int = 0) -> None:
        """`nice`: added to the checking processes' nice value (work that can wait)."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_warm_worker,
            initargs=(os.getpid(), nice),
        )

    def submit(self, audio: np.ndarray, sample_rate: int, text: str) -> Future[Verdict]:
        return self._pool.submit(check, audio, sample_rate, text)

    def call(self, function: Callable[..., Verdict], *args: object) -> Future[Verdict]:
        """Any module-level function that checks (a run's check-then-cache) in these processes."""
        return self._pool.submit(function, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> QualityPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# --- files (`narrate check`) ---------------------------------------------------


def check_file(path: str, text: str) -> Verdict:
    """`check` for an audio file in any format narrate can decode (WAV, FLAC, MP3, Opus...)."""
    from narrate.errors import AudioError, UsageError
    from narrate.post.encode import decode

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        audio, rate = decode(data)
    except AudioError as exc:
        raise UsageError(f"{path} is not audio narrate can decode: {exc.message}") from exc
    return check(audio, rate, text)
