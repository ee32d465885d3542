"""The voice library: registration, validation, resampling, fingerprints (no model needed)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from narrate.config import SAMPLES_PER_FRAME
from narrate.errors import UsageError
from narrate.synth.voices import VoiceLibrary


def tone(path: Path, seconds: float, rate: int = 24_000, channels: int = 1) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * t)
    sf.write(path, np.stack([wave] * channels, axis=1), rate)
    return path


def test_a_registered_voice_is_stored_as_24k_mono_with_its_transcript(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path / "voices")
    source = tone(tmp_path / "ref.wav", 2.0, rate=44_100, channels=2)
    voice = library.add("narrator", source, "  Hello   from the narrator. ", speaker=3)

    audio, rate = sf.read(voice.audio_path)
    assert rate == 24_000 and audio.ndim == 1
    assert abs(len(audio) - 48_000) <= 2
    assert voice.transcript == "Hello from the narrator." and voice.speaker == 3
    assert voice.frames == math.ceil(len(audio) / SAMPLES_PER_FRAME)
    assert voice.positions == voice.text_tokens + voice.frames + 1
    assert library.get("narrator") == voice
    assert library.names() == ["narrator"]


def test_fingerprint_follows_audio_transcript_and_speaker(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path)
    source = tone(tmp_path / "ref.wav", 1.0)
    first = library.add("v", source, "One two three.").fingerprint
    assert library.add("v", source, "One two three.", replace=True).fingerprint == first
    assert library.add("v", source, "One two four.", replace=True).fingerprint != first
    assert library.add("v", source, "One two three.", 1, replace=True).fingerprint != first
    longer = tone(tmp_path / "longer.wav", 1.5)
    assert library.add("v", longer, "One two three.", replace=True).fingerprint != first


def test_bad_voices_are_rejected_with_the_reason(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path / "voices")
    with pytest.raises(UsageError, match="over 20 s"):
        library.add("long", tone(tmp_path / "long.wav", 21.0), "Too long.")
    with pytest.raises(UsageError, match="transcript is empty"):
        library.add("mute", tone(tmp_path / "a.wav", 1.0), "   ")
    with pytest.raises(UsageError, match="silent"):
        sf.write(tmp_path / "zero.wav", np.zeros(24_000), 24_000)
        library.add("zero", tmp_path / "zero.wav", "Nothing.")
    with pytest.raises(UsageError, match="cannot read audio"):
        (tmp_path / "junk.wav").write_bytes(b"not audio")
        library.add("junk", tmp_path / "junk.wav", "Junk.")
    with pytest.raises(UsageError, match="folder name"):
        library.add("../escape", tone(tmp_path / "b.wav", 1.0), "Escape.")
    library.add("once", tone(tmp_path / "c.wav", 1.0), "Once.")
    with pytest.raises(UsageError, match="already exists"):
        library.add("once", tone(tmp_path / "c.wav", 1.0), "Once.")
    assert library.names() == ["once"]


def test_unknown_voice_names_the_voice_and_the_known_ones(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path)
    library.add("alice", tone(tmp_path / "a.wav", 1.0), "Alice speaking.")
    with pytest.raises(UsageError) as error:
        library.get("bob")
    assert "'bob'" in error.value.message and "alice" in error.value.message
    assert "narrate voice add bob" in error.value.hint


def test_the_library_does_not_import_torch_for_24k_mono_input(tmp_path: Path) -> None:
    source = tone(tmp_path / "v.wav", 1.0)
    code = (
        "import sys; from pathlib import Path; from narrate.synth.voices import VoiceLibrary\n"
        f"VoiceLibrary(Path({str(tmp_path / 'lib')!r})).add('v', Path({str(source)!r}), 'Hi.')\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
