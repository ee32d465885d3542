"""Speak one text with eSpeak NG through its C API (ctypes): `python -m narrate.synth.espeak VOICE`.

Reads UTF-8 text on stdin; writes the sample rate (int32) then int16 samples to stdout.
The preview engine runs this once per chunk in a fresh process: eSpeak NG keeps synthesis state
in globals between utterances (pitch flutter phase, wave phase), so in one long-lived process a
chunk's audio would depend on what was spoken before it, and a resumed run would not reproduce
it. A fresh process costs ~70 ms and makes every chunk's audio a function of its text alone.

The library comes from PyPI `espeakng-loader` (library and data bundled), else the system's
libespeak-ng (`apt-get install espeak-ng`). Only the standard library is imported here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
import sys

AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_Synth returns once the text is spoken
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
ESPEAK_RATE = 1  # espeak_PARAMETER: words per minute
WORDS_PER_MINUTE = 165  # about the 14 characters a second the planner expects
EXIT_UNAVAILABLE = 3

# espeak_Synth(text, size, position, position_type, end_position, flags, unique_id, user_data)
SYNTH_ARGUMENTS = [
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_uint,
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_uint,
    ctypes.c_void_p,
    ctypes.c_void_p,
]
SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def load_library() -> tuple[ctypes.CDLL, bytes | None]:
    """The eSpeak NG library and its data folder (None: the library's own default)."""
    try:
        import espeakng_loader

        path, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path().encode()
    except (ImportError, RuntimeError):
        path, data = ctypes.util.find_library("espeak-ng"), None
    if path is None:
        raise OSError("eSpeak NG is not installed")
    return ctypes.CDLL(path), data


def speak(text: str, voice: str, out) -> None:  # out: binary stream
    library, data = load_library()
    library.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    rate = library.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
    if rate <= 0:
        raise OSError("eSpeak NG failed to initialize (its data files were not found)")
    out.write(struct.pack("<i", rate))

    def collect(samples, count: int, _events: int) -> int:
        if samples and count > 0:
            out.write(ctypes.string_at(samples, count * 2))
        return 0  # 0: go on

    callback = SynthCallback(collect)  # referenced until espeak_Synth returns
    library.espeak_SetSynthCallback(callback)
    library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    if library.espeak_SetVoiceByName(voice.encode()) != 0:
        raise OSError(f"eSpeak NG has no voice {voice!r}")
    library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    library.espeak_SetParameter(ESPEAK_RATE, WORDS_PER_MINUTE, 0)
    encoded = text.encode("utf-8") + b"\0"
    library.espeak_Synth.argtypes = SYNTH_ARGUMENTS
    status = library.espeak_Synth(
        encoded, len(encoded), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None
    )
    if status != 0:
        raise OSError(f"eSpeak NG failed to speak (error {status})")


IPA_PHONEMES = 0x02  # espeak_TextToPhonemes: IPA (UTF-8) rather than eSpeak's ASCII names
PHONEME_SEPARATOR = "_"


class Phonemizer:
    """eSpeak NG's letter-to-sound rules in this process: a word's phonemes as IPA strings.

    Unlike synthesis, phonemization keeps no state that changes its output, so one library
    instance serves every word; it is not thread safe (eSpeak's globals).
    """

    def __init__(self, voice: str = "en-us") -> None:
        library, data = load_library()
        library.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        if library.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0) <= 0:
            raise OSError("eSpeak NG failed to initialize (its data files were not found)")
        library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        if library.espeak_SetVoiceByName(voice.encode()) != 0:
            raise OSError(f"eSpeak NG has no voice {voice!r}")
        library.espeak_TextToPhonemes.restype = ctypes.c_char_p
        library.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
        ]
        self._library = library

    def use_voice(self, voice: str) -> None:
        """Phonemize in another voice's rules from now on (an accent: en-gb, en-029...)."""
        if self._library.espeak_SetVoiceByName(voice.encode()) != 0:
            raise OSError(f"eSpeak NG has no voice {voice!r}")

    def phonemes(self, word: str) -> list[str]:
        """IPA phonemes of `word`, stress marks included (e.g. ["n", "ˈɛ", "ð", "ɚ"])."""
        remaining = ctypes.c_char_p(word.encode("utf-8"))
        mode = IPA_PHONEMES | (ord(PHONEME_SEPARATOR) << 8)
        found: list[str] = []
        while remaining.value:  # one call per clause; the pointer advances past it
            piece = self._library.espeak_TextToPhonemes(
                ctypes.byref(remaining), ESPEAK_CHARS_UTF8, mode
            )
            if not piece:
                break
            found.extend(p for p in piece.decode("utf-8").split(PHONEME_SEPARATOR) if p.strip())
        return [p.strip() for p in found]


def main() -> int:
    try:
        speak(sys.stdin.buffer.read().decode("utf-8"), sys.argv[1], sys.stdout.buffer)
    except OSError as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0


if __name__ == "__main__":
    sys.exit(main())
