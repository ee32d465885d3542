"""Clean and corrupted speech for judging the quality check (its tests and its benchmark).

Sentences of book prose (bench/quality_prose.txt) are spoken by eSpeak NG in several voices
and speeds, in this process (the benchmark speaks thousands; synthesis state carried between
utterances does not matter here). Each corruption is one failure a proof-listener reports in
TTS narration; each clean variant is something real speech contains that must pass.
"""

from __future__ import annotations

import ctypes
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from narrate.synth import espeak

PROSE = Path(__file__).resolve().parents[2] / "bench" / "quality_prose.txt"
HELD_OUT_EVERY = 3  # every third sentence is held out from setting thresholds


@dataclass(frozen=True, slots=True)
class Voice:
    name: str  # eSpeak NG voice (language + variant)
    words_per_minute: int

    def __str__(self) -> str:
        return f"{self.name}@{self.words_per_minute}"


# accents, sexes, speeds and a whisper: the voices an outside evaluation used differ in kind
VOICES = (
    Voice("en-us", 165),
    Voice("en-gb-scotland", 215),
    Voice("en-029", 170),
    Voice("en-gb-x-rp+f3", 130),
    Voice("en-us+m3", 195),
    Voice("en-us+whisper", 160),
    Voice("en+klatt4", 150),
    Voice("en-us-nyc+f2", 185),
)


def prose() -> list[str]:
    return [
        line.strip()
        for line in PROSE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def split(sentences: list[str]) -> tuple[list[str], list[str]]:
    """(sentences that thresholds may be set on, held-out sentences)."""
    held = set(range(HELD_OUT_EVERY - 1, len(sentences), HELD_OUT_EVERY))
    return (
        [s for i, s in enumerate(sentences) if i not in held],
        [s for i, s in enumerate(sentences) if i in held],
    )


class Speaker:
    """eSpeak NG in this process: text -> mono float32 audio at its rate."""

    def __init__(self) -> None:
        library, data = espeak.load_library()
        library.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        self.rate = library.espeak_Initialize(espeak.AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.rate <= 0:
            raise OSError("eSpeak NG failed to initialize")
        library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        library.espeak_Synth.argtypes = espeak.SYNTH_ARGUMENTS
        self._library = library
        self._pieces: list[bytes] = []
        self._callback = espeak.SynthCallback(self._collect)
        library.espeak_SetSynthCallback(self._callback)

    def _collect(self, samples, count: int, _events: int) -> int:
        if samples and count > 0:
            self._pieces.append(ctypes.string_at(samples, count * 2))
        return 0

    def speak(self, text: str, voice: Voice) -> np.ndarray:
        if self._library.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise OSError(f"eSpeak NG has no voice {voice.name!r}")
        self._library.espeak_SetParameter(espeak.ESPEAK_RATE, voice.words_per_minute, 0)
        self._pieces = []
        encoded = text.encode() + b"\0"
        self._library.espeak_Synth(
            encoded, len(encoded), 0, espeak.POS_CHARACTER, 0, espeak.ESPEAK_CHARS_UTF8, None, None
        )
        pcm = np.frombuffer(b"".join(self._pieces), dtype="<i2")
        return pcm.astype(np.float32) / 32768.0


@cache
def speaker() -> Speaker:
    return Speaker()


# --- signal helpers ---------------------------------------------------------------------


def speech_only(audio: np.ndarray, rate: int) -> np.ndarray:
    """`audio` without its leading and trailing quiet (10 ms frames 40 dB under the peak)."""
    size = rate // 100
    frames = audio[: len(audio) // size * size].reshape(-1, size)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loud = np.flatnonzero(level > level.max(initial=-120.0) - 40.0)
    if not len(loud):
        return audio[:0]
    return audio[loud[0] * size : (loud[-1] + 1) * size]


def silence(seconds: float, rate: int) -> np.ndarray:
    return np.zeros(int(seconds * rate), dtype=np.float32)


def breath(seconds: float, rate: int, seed: int, level: float) -> np.ndarray:
    """A breath-like sound: low-passed noise with a rise and fall, peaking at `level`
    (relative to full scale)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(int(seconds * rate) + 64).astype(np.float32)
    kernel = np.hanning(24).astype(np.float32)
    shaped = np.convolve(noise, kernel / kernel.sum(), mode="same")[: int(seconds * rate)]
    envelope = np.sin(np.linspace(0.0, np.pi, len(shaped))) ** 2
    shaped = shaped * envelope
    return (shaped / (np.abs(shaped).max() + 1e-9) * level).astype(np.float32)


def with_noise(audio: np.ndarray, snr_db: float, seed: int, rate: int) -> np.ndarray:
    """White noise under the whole clip, `snr_db` below the speech's power."""
    speech = speech_only(audio, rate)
    power = float(np.mean(speech**2)) if len(speech) else 1e-6
    noise = np.random.default_rng(seed).standard_normal(len(audio)).astype(np.float32)
    return audio + noise * np.sqrt(power / 10 ** (snr_db / 10))


def stretched(audio: np.ndarray, factor: float, rate: int) -> np.ndarray:
    """`audio` made `factor` times longer at the same pitch (overlap-add of 40 ms windows,
    each placed where it best continues the output: WSOLA)."""
    size, hop_out = int(0.04 * rate), int(0.01 * rate)
    hop_in, search = hop_out / factor, int(0.01 * rate)
    window = np.hanning(size).astype(np.float32)
    length = int(len(audio) * factor) + size
    out = np.zeros(length, dtype=np.float32)
    weight = np.zeros(length, dtype=np.float32)
    padded = np.concatenate([audio, np.zeros(size + 2 * search, dtype=np.float32)])
    previous = 0
    for index in range(int((len(audio) - size) / hop_in) + 1 if len(audio) > size else 0):
        centre = int(index * hop_in)
        if index == 0:
            start = 0
        else:
            natural = padded[previous + hop_out : previous + hop_out + size]
            lo, hi = max(0, centre - search), centre + search
            candidates = np.lib.stride_tricks.sliding_window_view(padded[lo : hi + size], size)
            start = lo + int(np.argmax(candidates @ natural))
        place = index * hop_out
        out[place : place + size] += padded[start : start + size] * window
        weight[place : place + size] += window
        previous = start
    return (out / np.maximum(weight, 1e-3))[: int(len(audio) * factor)]


# --- trials ------------------------------------------------------------------------------

FUNCTION_WORDS = frozenset(
    "a an the and or but of to in on at by for with from as is was were be been it its he she "
    "they them his her their we you i me my our your that this these those not no so then than "
    "there here what when where who how all any each some up down out over into".split()
)
UNRELATED = (
    "volcano umbrella elephant mustard saxophone dinosaur spinach telescope penguin "
    "calendar blanket pyramid tornado lobster ketchup battery magnet pillow rocket cactus "
    "lemonade hammock giraffe crayon sandwich orbit velvet tulip bucket pepper"
).split()


@dataclass(frozen=True, slots=True)
class Trial:
    kind: str
    text: str  # what the audio should say
    audio: np.ndarray
    voice: Voice
    short: bool  # the text has 2-4 words
    held_out: bool


def _words(text: str) -> list[str]:
    return text.split()


def _bare(word: str) -> str:
    return re.sub(r"[^a-z']", "", word.lower())


def _content_positions(words: list[str]) -> list[int]:
    found = [i for i, w in enumerate(words) if _bare(w) not in FUNCTION_WORDS and len(_bare(w)) > 2]
    return found or list(range(len(words)))


def substituted(text: str, rng: random.Random) -> str:
    """One content word replaced by an unrelated one (its punctuation kept)."""
    words = _words(text)
    i = rng.choice(_content_positions(words))
    replacement = rng.choice([u for u in UNRELATED if u != _bare(words[i])])
    words[i] = re.sub(r"[A-Za-z']+", replacement, words[i], count=1)
    return " ".join(words)


def deleted(text: str, rng: random.Random) -> str:
    """Long sentences: a run of 2-4 words (a clause) left out, else one content word."""
    words = _words(text)
    if len(words) >= 8 and rng.random() < 0.5:
        size = rng.randint(2, 4)
        start = rng.randint(1, len(words) - size - 1)
        return " ".join(words[:start] + words[start + size :])
    i = rng.choice(_content_positions(words))
    return " ".join(words[:i] + words[i + 1 :])


def repeated(text: str, rng: random.Random) -> str:
    """A phrase of 1-3 words said three times mid-sentence."""
    words = _words(text)
    size = min(len(words) - 1, rng.randint(1, 3)) or 1
    start = rng.randint(0, max(0, len(words) - size - 1))
    phrase = [re.sub(r"[^\w']", "", w) for w in words[start : start + size]]
    return " ".join(words[: start + size] + phrase * 2 + words[start + size :])


def halves(text: str) -> tuple[str, str]:
    words = _words(text)
    middle = max(1, len(words) // 2)
    return " ".join(words[:middle]), " ".join(words[middle:])


Maker = Callable[[str, Voice, "Context"], np.ndarray]


@dataclass
class Context:
    speaker: Speaker
    rng: random.Random
    other: str  # another sentence of the corpus (babble, insertions)
    seed: int

    def say(self, text: str, voice: Voice) -> np.ndarray:
        return self.speaker.speak(text, voice)


def _pause(text: str, voice: Voice, ctx: Context) -> np.ndarray:
    first, second = halves(text)
    if not second:
        return ctx.say(text, voice)
    rate = ctx.speaker.rate
    return np.concatenate(
        [
            ctx.say(first, voice),
            silence(2.0, rate),
            speech_only(ctx.say(second, voice), rate),
            silence(0.2, rate),
        ]
    )


def _insert(text: str, voice: Voice, ctx: Context) -> np.ndarray:
    rate = ctx.speaker.rate
    speech = speech_only(ctx.say(text, voice), rate)
    other = speech_only(ctx.say(ctx.other, voice), rate)
    start = ctx.rng.randint(0, max(0, len(other) - int(0.6 * rate)))
    piece = other[start : start + int(0.6 * rate)]
    at = ctx.rng.randint(int(0.3 * len(speech)), int(0.7 * len(speech)))
    return np.concatenate([silence(0.2, rate), speech[:at], piece, speech[at:], silence(0.2, rate)])


def _truncated(text: str, voice: Voice, ctx: Context) -> np.ndarray:
    rate = ctx.speaker.rate
    speech = speech_only(ctx.say(text, voice), rate)
    return np.concatenate([silence(0.2, rate), speech[: int(0.6 * len(speech))]])


def _babble_tail(text: str, voice: Voice, ctx: Context) -> np.ndarray:
    rate = ctx.speaker.rate
    other = speech_only(ctx.say(ctx.other + " " + ctx.other, voice), rate)[: 3 * rate]
    return np.concatenate([ctx.say(text, voice), other])


def _noise_alone(text: str, voice: Voice, ctx: Context) -> np.ndarray:
    seconds = 0.5 + 0.08 * len(text)
    noise = np.random.default_rng(ctx.seed).standard_normal(int(seconds * ctx.speaker.rate))
    return (noise * 0.1).astype(np.float32)


def _breath_tail(text: str, voice: Voice, ctx: Context) -> np.ndarray:
    rate = ctx.speaker.rate
    speech = speech_only(ctx.say(text, voice), rate)
    level = 0.25 * float(np.abs(speech).max(initial=0.1))  # 12 dB under the speech's peak
    return np.concatenate(
        [
            silence(0.15, rate),
            speech,
            silence(0.15, rate),
            breath(0.8, rate, ctx.seed, level),
            silence(0.1, rate),
        ]
    )


def _quiet(text: str, voice: Voice, ctx: Context) -> np.ndarray:
    audio = ctx.say(text, voice)
    return audio * (10 ** (-30 / 20) / max(float(np.abs(audio).max()), 1e-6))


CORRUPTIONS: dict[str, Maker] = {
    "substitution": lambda t, v, c: c.say(substituted(t, c.rng), v),
    "deletion": lambda t, v, c: c.say(deleted(t, c.rng), v),
    "insertion 0.6 s": _insert,
    "repeat mid-sentence": lambda t, v, c: c.say(repeated(t, c.rng), v),
    "truncated at 60 %": _truncated,
    "babble tail 3 s": _babble_tail,
    "wrong sentence": lambda t, v, c: c.say(c.other, v),
    "noise alone": _noise_alone,
    "silence alone": lambda t, v, c: silence(0.5 + 0.08 * len(t), c.speaker.rate),
}
CLEAN: dict[str, Maker] = {
    "clean": lambda t, v, c: c.say(t, v),
    "breath tail 0.8 s": _breath_tail,
    "quiet (peak -30 dBFS)": _quiet,
    "noise 10 dB SNR": lambda t, v, c: with_noise(c.say(t, v), 10.0, c.seed, c.speaker.rate),
    "stretched 1.3x": lambda t, v, c: stretched(c.say(t, v), 1.3, c.speaker.rate),
    "pause 2.0 s": _pause,
}


def is_short(text: str) -> bool:
    return 2 <= len(_words(text)) <= 4


def trials(
    sentences: list[str],
    voices_per_sentence: int = 2,
    kinds: list[str] | None = None,
    seed: int = 0,
) -> list[Trial]:
    """Every kind (clean variants and corruptions) of each sentence, in
    `voices_per_sentence` voices taken in turn from VOICES."""
    everything = {**CLEAN, **CORRUPTIONS}
    chosen = kinds or list(everything)
    corpus = prose()  # other speech (babble, insertions) comes from any sentence of it
    held_out = set(split(corpus)[1])
    found: list[Trial] = []
    rng = random.Random(seed)
    turn = 0
    for index, text in enumerate(sentences):
        for _ in range(voices_per_sentence):
            voice = VOICES[turn % len(VOICES)]
            turn += 1
            others = [s for s in corpus if s != text and len(_words(s)) >= 6]
            ctx = Context(speaker(), rng, rng.choice(others), seed=index * 101 + turn)
            for kind in chosen:
                audio = everything[kind](text, voice, ctx).astype(np.float32)
                found.append(Trial(kind, text, audio, voice, is_short(text), text in held_out))
    return found
