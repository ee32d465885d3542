"""Listen before publishing: does a chunk's audio say its text?

The audio, brought to one level, is force-aligned with its own text by pocketsphinx (US
English acoustic model, dictionary and no language model, all inside its wheel): the text
becomes a grammar that accepts exactly its words in order, with silence and noise allowed
between them. Audio that says the text aligns end to end; audio that stops early, runs on or
holds a long gap does not, or aligns with a long stretch of sound ("unexplained" audio) where
no word fits.

Forced alignment stretches the expected word over whatever was said, so each segment is also
scored against what an unconstrained decoder hears in the same frames: pocketsphinx scores
every frame against the best phone state of the whole model, and a segment's acoustic score
per frame is its goodness of pronunciation. A word scoring far below that (and below the
take's other words) was not said; a pause scoring far below it holds speech no word explains
(an insertion, a repeat). Both fail the take and are named with their times.

Every word gets its pronunciations in eSpeak NG's English accents (ACCENTS) besides the
dictionary's, mapped to the dictionary's phone set; a word the dictionary lacks (a name, a
coinage) gets them alone, else a wildcard (the model's generic speech phone).
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
from dataclasses import asdict, dataclass, fields
from functools import cache
from pathlib import Path

import numpy as np

ASR_RATE = 16_000  # the acoustic model's sample rate
FRAME_S = 0.01  # pocketsphinx frames
# Takes of any level are heard alike: the loud end of the audio (its 99.9th percentile sample)
# is brought to this level first. Audio quieter than SILENT_LEVEL throughout is digital
# silence (or dither) and is left as it is: it holds no sound.
NORMAL_LEVEL = 0.5
SILENT_LEVEL = 1e-4
# Exact digital silence (eSpeak NG pads with zeros) gives log-energy features the model never
# saw, and the aligner then fails on clean speech; a fixed, seeded noise floor at -60 dBFS
# avoids that and keeps the verdict a function of the audio alone.
NOISE_FLOOR = 1e-3
# Speech that ends (or starts) right at the edge of the clip loses its last phone's frames to
# the feature window and then fails to align; a short quiet margin on each side avoids it.
MARGIN_S = 0.3
# Sound: 10 ms frames within SOUND_DB of the loudest frame, above SOUND_FLOOR_DB (dBFS, after
# normalizing) and ABOVE_NOISE_DB over the take's noise floor (its quietest tenth of frames:
# steady room tone or hiss under the speech is not sound). Sound that the aligner put in
# silence/noise segments rather than in a word is unexplained, and so is the part of a word
# beyond a generous duration (babble or noise absorbed into it). Silence alone is a pause,
# judged by its length.
SOUND_DB = 35.0
SOUND_FLOOR_DB = -60.0
ABOVE_NOISE_DB = 10.0
EDGE_LIMIT_S = 1.0  # unexplained sound allowed before the first and after the last word
INSIDE_LIMIT_S = 0.75  # and between words (a whole book may hold INSIDE_SHARE of its duration)
INSIDE_SHARE = 0.01
GAP_LIMIT_S = 2.5  # longest run without words between words: a 2 s pause beside a comma's
WORD_BASE_S = 0.5  # a word may last this long plus WORD_PHONE_S per phone before its excess
WORD_PHONE_S = 0.15  # counts as unexplained (noise or babble absorbed into one word)
# Evidence: the aligner's acoustic score of a segment, per frame, is the log-likelihood of
# its expected phones relative to the best-scoring phone state of the whole model in each
# frame (pocketsphinx normalizes every frame's scores by its best): what an unconstrained
# phone decoder hears. Clean speech of the right word scores about -1 to -3 per frame; a
# different word forced into the span, or speech forced into silence, far less.
WORD_EVIDENCE_LIMIT = -6.0  # a word scoring below this per frame was not said
WORD_MIN_FRAMES = 8  # shorter words are too brief to judge on their own
WORD_MIN_PHONES = 4  # and so are words of fewer phones (accents blur them)
WORD_RELATIVE_LIMIT = -3.5  # and scoring this far below the take's median word (its voice)
WORD_STRETCH = 2.2  # a word lasting this many times its phones at the take's pace
WORD_STRETCH_EVIDENCE = -4.0  # and scoring below this was not said either
WORD_SQUEEZE = 0.6  # a word lasting under this many times its phones at the take's pace
WORD_SQUEEZE_EVIDENCE = -6.0  # and scoring below this was not said whole
SPEECH_EVIDENCE_LIMIT = -4.5  # a pause scoring below this holds speech (or babble)
SPEECH_MIN_S = 0.2  # shortest unexplained speech between words that fails a take
PASS_SCORE = 1.0  # every passing chunk scores 1.0; a book below it holds a failed chunk
WILDCARD_PHONE = "+SPN+"  # the acoustic model's generic speech unit
# eSpeak NG's letter-to-sound rules give each word of the text its pronunciation in these
# accents too (the dictionary is US English): "them" as "dem", "turned" without its r.
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-029")
# Beams: the default first (fast); a clean chunk that fails it gets one wider, slower try.
WIDE_BEAMS = {"beam": 1e-80, "pbeam": 1e-80, "wbeam": 1e-60}
# (wide beams, may stop early): a chunk that fails both strict passes is aligned once more
# with exits after every word, for the figures (how many words the audio does say).
ALIGNMENT_PASSES = ((False, False), (True, False), (True, True))
STOP_PROBABILITY = 1e-10
LOWEST_LOG = -745.0  # the natural log of the smallest float a segment's score can hold

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
class Fault:
    """A stretch of the take a listener would stop at, with its times in the audio."""

    kind: str  # "word": the expected word is not what was said; "speech": speech between
    # words that no word of the text explains (an insertion, a repeat, babble)
    word: str  # the expected word ("" for speech)
    start_s: float
    end_s: float
    evidence: float  # per frame, against the best any-phone score (0 best; lower is worse)

    def to_json(self) -> dict[str, object]:
        return {
            key: round(value, 2) if isinstance(value, float) else value
            for key, value in asdict(self).items()
        }

    def __str__(self) -> str:
        what = f'"{self.word}"' if self.kind == "word" else "unexplained speech"
        return f"{what} at {self.start_s:.2f}-{self.end_s:.2f} s"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the aligner heard, in figures a person can judge."""

    words_expected: int
    words_aligned: int  # of the text's words, in order, from the first
    missing_at_end: int  # words_expected - words_aligned: the text the audio never reached
    unexplained_end_s: float  # sound after the last aligned word that no word explains
    unexplained_inside_s: float  # such sound between the first and the last word
    longest_gap_s: float  # the longest stretch without words between words
    duration_s: float
    score: float  # 1.0 when passed; less the worse it is (the best of several takes wins)
    passed: bool
    reason: str  # why it failed, or "ok"
    unexplained_start_s: float = 0.0  # such sound before the first word
    faults: tuple[Fault, ...] = ()  # words not said and speech no word explains, in order

    def to_json(self) -> dict[str, object]:
        found: dict[str, object] = {}
        for each in fields(self):
            key, value = each.name, getattr(self, each.name)
            if key == "faults":
                value = [fault.to_json() for fault in value]
            found[key] = round(value, 3) if isinstance(value, float) else value
        return found

    def __str__(self) -> str:
        head = "pass" if self.passed else f"FAIL ({self.reason})"
        return (
            f"{head}: {self.words_aligned}/{self.words_expected} words aligned, "
            f"{self.unexplained_start_s:.1f} s unexplained at the start, "
            f"{self.unexplained_end_s:.1f} s at the end, "
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


def pronunciations(word: str) -> list[str]:
    """ARPAbet phones for `word` in eSpeak NG's English accents (US first), distinct."""
    phonemizer = _phonemizer()
    found: list[str] = []
    for accent in ACCENTS if phonemizer else ():
        phonemizer.use_voice(accent)
        phones = " ".join(ipa_to_arpabet(phonemizer.phonemes(word)))
        if phones and phones not in found:
            found.append(phones)
    return found


# --- alignment --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Segment:
    word: str  # "(2)"-style alternate marks removed
    start: int  # frames
    end: int  # inclusive
    filler: bool
    evidence: float  # acoustic score per frame (natural log, against the best phone state)

    @property
    def frames(self) -> int:
        return self.end - self.start + 1


class Aligner:
    """A pocketsphinx decoder (two: default and wide beams) and the words added to it."""

    def __init__(self) -> None:
        self._decoders: dict[str, object] = {}
        self._added: dict[str, str] = {}  # entry -> phones, for each decoder made later
        self._seen: dict[str, str] = {}  # word -> its entry name, once its accents are in

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
        """`word` in the dictionary with its pronunciations in each of ACCENTS (added from
        eSpeak NG where the dictionary lacks them); its entry name."""
        if word in self._seen:
            return self._seen[word]
        decoder = self._decoder(False)
        name = word
        bare = word.replace("'", "")
        if decoder.lookup_word(word) is None and decoder.lookup_word(bare) is not None:
            name = bare
        known = []
        while (phones := decoder.lookup_word(self._entry(name, len(known)))) is not None:
            known.append(phones)
        accents = pronunciations(name)
        if not known:
            accents = accents or [WILDCARD_PHONE]
        for phones in accents:
            if phones not in known:
                entry = self._entry(name, len(known))
                known.append(phones)
                self._added[entry] = phones
                for each in self._decoders.values():
                    each.add_word(entry, phones, True)
        self._seen[word] = name
        return name

    @staticmethod
    def _entry(word: str, index: int) -> str:
        """The dictionary's name of a word's `index`-th pronunciation: word, word(2)..."""
        return f"{word}({index + 1})" if index else word

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
                max(LOWEST_LOG, math.log(seg.ascore) if seg.ascore > 0 else LOWEST_LOG)
                / max(1, seg.end_frame - seg.start_frame + 1),
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


def normalized(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float audio at the aligner's rate, its loud end at NORMAL_LEVEL (digital silence
    left silent)."""
    from scipy.signal import resample_poly

    audio = np.asarray(audio, dtype=np.float32)
    if sample_rate != ASR_RATE and len(audio):
        common = math.gcd(sample_rate, ASR_RATE)
        audio = resample_poly(audio, ASR_RATE // common, sample_rate // common)
    level = float(np.quantile(np.abs(audio), 0.999)) if len(audio) else 0.0
    if level > SILENT_LEVEL:
        audio = audio * (NORMAL_LEVEL / level)
    return audio.astype(np.float32)


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """Normalized audio as the aligner hears it: int16, quiet margins, a noise floor."""
    margin = np.zeros(int(MARGIN_S * ASR_RATE), dtype=np.float32)
    audio = np.concatenate([margin, audio, margin])
    floor = np.random.default_rng(0).standard_normal(len(audio)) * NOISE_FLOOR
    return (np.clip(audio + floor, -1.0, 1.0) * 32767).astype("<i2")


def _sound_frames(audio: np.ndarray) -> np.ndarray:
    """Per 10 ms frame of the margined audio: whether it holds sound (the margins and digital
    silence never do)."""
    size = int(ASR_RATE * FRAME_S)
    margin = int(MARGIN_S * ASR_RATE) // size
    frames = audio[: len(audio) // size * size].reshape(-1, size)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    floor = float(np.quantile(level, 0.1)) + ABOVE_NOISE_DB if len(level) else 0.0
    sound = (level > level.max(initial=-120.0) - SOUND_DB) & (level > max(SOUND_FLOOR_DB, floor))
    edge = np.zeros(margin, dtype=bool)
    # the margined pcm may hold one partial frame more than the audio's whole frames
    return np.concatenate([edge, sound, edge, np.zeros(2, dtype=bool)])


def speakable(text: str) -> bool:
    """Whether `text` has any word the check can listen for."""
    return bool(spoken_tokens(text))


@dataclass(frozen=True, slots=True)
class Heard:
    """What the aligner made of a take, before it is judged."""

    expected: int  # tokens of the text
    aligned: int  # of them, in order from the first, in the best path
    segments: list[_Segment]
    sound: np.ndarray  # per frame
    duration_s: float


def listen(audio: np.ndarray, sample_rate: int, text: str) -> Heard:
    """Align mono `audio` with `text` (the best of the alignment passes)."""
    duration = len(audio) / sample_rate if sample_rate else 0.0
    tokens = spoken_tokens(text)
    level = normalized(audio, sample_rate)
    pcm = to_pcm16(level)
    sound = _sound_frames(level)
    if not tokens:
        return Heard(0, 0, [], sound, duration)
    aligner = _aligner()
    best: tuple[int, list[_Segment]] = (-1, [])
    for wide, may_stop in ALIGNMENT_PASSES:
        segments = aligner.align(tokens, pcm.tobytes(), wide, may_stop)
        aligned = _aligned_tokens(tokens, [s.word for s in segments if not s.filler])
        if aligned > best[0]:
            best = (aligned, segments)
        if aligned == len(tokens):
            break
    return Heard(len(tokens), best[0], best[1], sound, duration)


def check(audio: np.ndarray, sample_rate: int, text: str) -> Verdict:
    """Whether mono `audio` says `text`, and the figures behind the verdict."""
    return judge(listen(audio, sample_rate, text))


def judge(heard: Heard) -> Verdict:
    """The figures of what was heard, against the limits."""
    if not heard.expected:
        end = float(heard.sound.sum()) * FRAME_S
        return verdict_of(0, 0, (end, 0.0, 0.0), heard.duration_s)
    figures, faults = _unexplained(heard.segments, heard.sound, _aligner()), []
    if heard.aligned == heard.expected:
        faults = _faults(heard.segments, heard.sound, heard.duration_s)
    start, *rest = figures
    return verdict_of(
        heard.expected,
        heard.aligned,
        tuple(rest),  # type: ignore[arg-type]
        heard.duration_s,
        faults=tuple(faults),
        start=start,
    )


def _seconds(frame: int, duration: float) -> float:
    """A frame of the margined audio as a time in the take."""
    return min(max(0.0, frame * FRAME_S - MARGIN_S), duration)


def _faults(segments: list[_Segment], sound: np.ndarray, duration: float) -> list[Fault]:
    """Words whose evidence is far below any phones', and speech between words that the
    aligner could only call silence."""
    aligner = _aligner()
    found: list[Fault] = []
    words = [i for i, s in enumerate(segments) if not s.filler]
    if not words:
        return found
    typical = float(np.median([segments[i].evidence for i in words]))
    phones = {i: aligner.phone_count(segments[i].word) for i in words}
    pace = float(np.median([segments[i].frames / phones[i] for i in words]))  # frames a phone
    run: list[_Segment] = []  # adjacent pauses between two words, judged together
    for index in range(words[0], words[-1] + 1):
        segment = segments[index]
        if segment.filler:
            run.append(segment)
            continue
        if run:
            found.extend(_speech_fault(run, sound, duration))
            run = []
        unlike = (
            phones[index] >= WORD_MIN_PHONES
            and segment.evidence < WORD_EVIDENCE_LIMIT
            and segment.evidence - typical < WORD_RELATIVE_LIMIT
        )
        stretched = (  # a longer word said in its place
            segment.frames > WORD_STRETCH * phones[index] * pace
            and segment.evidence < WORD_STRETCH_EVIDENCE
        )
        squeezed = (  # a word cut short, or said over too little speech
            phones[index] > 1
            and segment.frames < WORD_SQUEEZE * phones[index] * pace
            and segment.evidence < WORD_SQUEEZE_EVIDENCE
        )
        if squeezed or (segment.frames >= WORD_MIN_FRAMES and (unlike or stretched)):
            found.append(
                Fault(
                    "word",
                    segment.word,
                    _seconds(segment.start, duration),
                    _seconds(segment.end + 1, duration),
                    segment.evidence,
                )
            )
    return found


def _speech_fault(run: list[_Segment], sound: np.ndarray, duration: float) -> list[Fault]:
    frames = sum(s.frames for s in run)
    evidence = sum(s.evidence * s.frames for s in run) / frames
    heard = sum(int(sound[s.start : s.end + 1].sum()) for s in run) * FRAME_S
    if evidence >= SPEECH_EVIDENCE_LIMIT or heard < SPEECH_MIN_S:
        return []
    start, end = _seconds(run[0].start, duration), _seconds(run[-1].end + 1, duration)
    return [Fault("speech", "", start, end, evidence)]


def _unexplained(
    segments: list[_Segment], sound: np.ndarray, aligner: Aligner
) -> tuple[float, float, float, float]:
    """Unexplained sound before the first word, after the last word and between them, and
    the longest run without words between words (seconds)."""
    words = [s for s in segments if not s.filler]
    if not words:
        return 0.0, float(sound.sum()) * FRAME_S, 0.0, 0.0
    first_start, last_end = words[0].start, words[-1].end + 1
    inside = gap = run = 0.0
    for segment in segments:
        if segment.start >= last_end:
            break
        if segment.end < first_start:
            continue
        length = segment.frames * FRAME_S
        if segment.filler:
            inside += float(sound[segment.start : segment.end + 1].sum()) * FRAME_S
            run += length
            gap = max(gap, run)
        else:
            run = 0.0
            allowed = WORD_BASE_S + WORD_PHONE_S * aligner.phone_count(segment.word)
            inside += max(0.0, length - allowed)
    start = float(sound[:first_start].sum()) * FRAME_S
    end = float(sound[last_end:].sum()) * FRAME_S
    return start, end, inside, gap


def verdict_of(
    expected: int,
    aligned: int,
    unexplained: tuple[float, float, float],
    duration: float,
    *,
    faults: tuple[Fault, ...] = (),
    start: float = 0.0,
) -> Verdict:
    """The figures judged against the limits; `unexplained` is (end, inside, longest gap),
    `start` the unexplained sound before the first word."""
    end, inside, gap = unexplained
    inside_limit = max(INSIDE_LIMIT_S, INSIDE_SHARE * duration)
    excess = (
        max(0.0, start - EDGE_LIMIT_S)
        + max(0.0, end - EDGE_LIMIT_S)
        + max(0.0, inside - inside_limit)
        + max(0.0, gap - GAP_LIMIT_S)
        + sum(fault.end_s - fault.start_s for fault in faults)
    )
    if aligned < expected:
        reason = f"{expected - aligned} of {expected} words missing at the end"
    elif faults:
        reason = "; ".join(str(fault) for fault in faults[:3])
        reason += f" (and {len(faults) - 3} more)" if len(faults) > 3 else ""
    elif end > EDGE_LIMIT_S:
        reason = f"{end:.1f} s of unexplained sound at the end"
    elif start > EDGE_LIMIT_S:
        reason = f"{start:.1f} s of unexplained sound at the start"
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
        unexplained_start_s=start,
        faults=faults,
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

# A file is checked chunk by chunk: each chunk's text together with the next one's is aligned
# with a window of the audio long enough for both at the slowest plausible narration; the
# chunk's words are judged there and the next window starts where its last word ends. Only a
# window's audio is held, so a book of any length is checked in bounded memory.
SLOWEST_CHARS_PER_S = 4.0
WINDOW_SLACK_S = 4.0


class AudioStream:
    """A file's audio at ASR_RATE, mono, decoded as far as it is read; what lies before the
    last `drop` is let go."""

    def __init__(self, path: str) -> None:
        import av

        from narrate.errors import UsageError

        try:
            self._container = av.open(path)
            stream = self._container.streams.audio[0]
        except (av.FFmpegError, IndexError, OSError) as exc:
            raise UsageError(f"{path} is not audio narrate can decode: {exc}") from exc
        self.path = path
        self._frames = self._container.decode(stream)
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=ASR_RATE)
        self._pieces: list[np.ndarray] = []
        self._held = 0  # samples in _pieces
        self._offset = 0  # the sample index of _pieces' first sample
        self._ended = False

    def _more(self) -> bool:
        import av

        from narrate.errors import UsageError

        try:
            frame = next(self._frames, None)
            resampled = self._resampler.resample(frame)
        except av.FFmpegError as exc:
            raise UsageError(f"{self.path} does not decode: {exc}") from exc
        for each in resampled:
            piece = each.to_ndarray()[0].astype(np.float32)
            self._pieces.append(piece)
            self._held += len(piece)
        self._ended = frame is None
        return not self._ended

    def read(self, start: int, stop: int | None) -> np.ndarray:
        """Samples [start, stop) (to the end: None), fewer where the audio ends first."""
        while (stop is None or self._offset + self._held < stop) and self._more():
            pass
        held = np.concatenate(self._pieces) if self._pieces else np.zeros(0, np.float32)
        self._pieces, self._held = [held], len(held)
        end = None if stop is None else stop - self._offset
        return held[start - self._offset : end]

    def drop(self, before: int) -> None:
        held = np.concatenate(self._pieces) if self._pieces else np.zeros(0, np.float32)
        self._pieces = [held[before - self._offset :]]
        self._held = len(self._pieces[0])
        self._offset = before

    def length(self) -> int:
        """The audio's length in samples (decoding the rest, holding none of it)."""
        while self._more():
            self.drop(self._offset + self._held)
        return self._offset + self._held

    def close(self) -> None:
        self._container.close()


def _token_word_ends(tokens: list[list[list[str]]], words: list[str]) -> list[int]:
    """For each token aligned (in order from the first), how many words end with it."""
    ends: list[int] = []
    position = 0
    for readings in tokens:
        for reading in readings:
            if words[position : position + len(reading)] == reading:
                position += len(reading)
                ends.append(position)
                break
        else:
            break
    return ends


def _part(heard: Heard, words: int, expected: int) -> tuple[Heard, int]:
    """The first chunk's share of a two-chunk alignment whose first chunk's tokens end
    after `words` words: its Heard, and the frame where it ends (its last word's end)."""
    cut = len(heard.segments)
    seen = 0
    end = 0
    for index, segment in enumerate(heard.segments):
        if segment.filler:
            continue
        if seen == words:
            cut = index
            break
        seen += 1
        end = segment.end + 1
    stop = heard.segments[cut].start if cut < len(heard.segments) else len(heard.sound)
    part = Heard(expected, expected, heard.segments[:cut], heard.sound[:stop], stop * FRAME_S)
    return part, end


def _shifted(verdict: Verdict, seconds: float) -> tuple[Fault, ...]:
    return tuple(
        Fault(f.kind, f.word, f.start_s + seconds, f.end_s + seconds, f.evidence)
        for f in verdict.faults
    )


def check_stream(stream: AudioStream, chunks: Sequence[str]) -> Verdict:
    """Whether the stream says the chunks' text, in order, judged chunk by chunk."""
    chunks = [chunk for chunk in chunks if speakable(chunk)]
    expected = sum(len(spoken_tokens(chunk)) for chunk in chunks)
    aligned = 0
    start = end = inside = gap = 0.0
    faults: list[Fault] = []
    position = 0  # samples
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        text = chunk if last else f"{chunk} {chunks[index + 1]}"
        window = int((len(text) / SLOWEST_CHARS_PER_S + WINDOW_SLACK_S) * ASR_RATE)
        audio = stream.read(position, None if last else position + window)
        heard = listen(audio, ASR_RATE, text)
        tokens = spoken_tokens(chunk)
        words = [s.word for s in heard.segments if not s.filler]
        ends = _token_word_ends(spoken_tokens(text), words)
        if last:
            part, frame = heard, 0
        elif len(ends) >= len(tokens):
            part, frame = _part(heard, ends[len(tokens) - 1], len(tokens))
        else:  # the audio left this chunk's text: what follows cannot be placed
            reached = min(len(ends), len(tokens))
            part = Heard(len(tokens), reached, heard.segments, heard.sound, heard.duration_s)
            frame = 0
        verdict = judge(part)
        offset = position / ASR_RATE
        aligned += verdict.words_aligned
        faults.extend(_shifted(verdict, offset))
        inside += verdict.unexplained_inside_s
        gap = max(gap, verdict.longest_gap_s)
        if index == 0:
            start = verdict.unexplained_start_s
        if last or verdict.words_aligned < len(tokens):
            end = verdict.unexplained_end_s
            break
        position += max(1, int((frame * FRAME_S - MARGIN_S) * ASR_RATE))
        stream.drop(position)
    duration = stream.length() / ASR_RATE
    return verdict_of(
        expected, aligned, (end, inside, gap), duration, faults=tuple(faults), start=start
    )


def check_file(path: str, chunks: Sequence[str]) -> Verdict:
    """`check` for an audio file in any format narrate can decode (WAV, FLAC, MP3, Opus...)
    against its chunks' text; UsageError when the text has nothing to listen for."""
    from narrate.errors import UsageError

    if not any(speakable(chunk) for chunk in chunks):
        raise UsageError(
            "the text has no words to listen for",
            hint="the check hears English words (letters a-z, digits); give the text spoken",
        )
    if not Path(path).is_file():
        raise UsageError(f"cannot read {path}: not a file")
    stream = AudioStream(path)
    try:
        return check_stream(stream, chunks)
    finally:
        stream.close()
