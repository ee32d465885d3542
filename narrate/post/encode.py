"""Encoding to WAV (numpy), FLAC (libsndfile) and MP3/Opus (FFmpeg through PyAV), and decoding
back."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

import av
import numpy as np
import soundfile

from narrate.config import PostConfig
from narrate.errors import AudioError

CONTENT_TYPES = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
}
_SOUNDFILE = {"flac": ("FLAC", "PCM_16")}  # WAV: encode_wav
_FFMPEG = {"mp3": ("mp3", "libmp3lame"), "opus": ("ogg", "libopus")}  # container, encoder
_SOUNDFILE_MAGIC = (b"RIFF", b"fLaC")  # how WAV and FLAC files begin
LOSSY = tuple(_FFMPEG)  # formats whose encoder changes the samples
# LAME's quality 7 ("fast") encodes in half the time of its default 3 at the same bitrate: at
# 64 kbps mono speech its slower searches bought nothing the gate or a listener noticed, and
# MP3 encoding was most of what an MP3 run spent beyond a WAV run
_ENCODER_OPTIONS = {"mp3": {"compression_level": "7"}, "opus": {}}


@dataclass(frozen=True, slots=True)
class Tags:
    """What a file says about itself: players show the title and the artist (the synthetic
    narrator: voice and model); the book id traces it back; the comment says, in words a
    person reads in any player, that the voice is synthetic and whether a watermark is in it."""

    book_id: str
    title: str | None = None
    narrator: str | None = None  # e.g. "synthetic voice (sesame/csm-1b)"
    watermarked: bool | None = None  # None: not said (files written outside a run)

    @property
    def comment(self) -> str:
        parts = [f"book_id={self.book_id}"]
        if self.narrator:
            parts.append(f"narrated by a {self.narrator}")
        if self.watermarked is not None:
            parts.append(
                "AudioSeal watermark embedded" if self.watermarked else "no watermark embedded"
            )
        return "; ".join(parts)

    def as_dict(self) -> dict[str, str]:
        tags = {"book_id": self.book_id, "comment": self.comment}
        if self.watermarked is not None:
            tags["watermark"] = "audioseal" if self.watermarked else "none"
        return (
            tags
            | ({"title": self.title} if self.title else {})
            | ({"artist": self.narrator} if self.narrator else {})
        )


@dataclass(frozen=True, slots=True)
class StreamInfo:
    codec: str
    sample_rate: int
    channels: int
    tags: dict[str, str] = field(default_factory=dict)


def encode(audio: np.ndarray, sample_rate: int, config: PostConfig, tags: Tags) -> bytes:
    """Mono float32 audio as a file of `config.format`, tagged."""
    if config.format == "wav":
        return encode_wav(audio, sample_rate, tags)
    if config.format in _SOUNDFILE:
        return _encode_soundfile(audio, sample_rate, config.format, tags)
    bitrate = config.mp3_bitrate if config.format == "mp3" else config.opus_bitrate
    return _encode_ffmpeg(audio, sample_rate, config.format, bitrate, tags)


def _encode_soundfile(audio: np.ndarray, sample_rate: int, fmt: str, tags: Tags) -> bytes:
    container, subtype = _SOUNDFILE[fmt]
    buffer = io.BytesIO()
    with soundfile.SoundFile(
        buffer, "w", samplerate=sample_rate, channels=1, format=container, subtype=subtype
    ) as out:
        out.comment = tags.comment
        if tags.title:
            out.title = tags.title
        if tags.narrator:
            out.artist = tags.narrator
        out.write(np.clip(audio, -1.0, 1.0))
    return buffer.getvalue()


def encode_wav(audio: np.ndarray, sample_rate: int, tags: Tags) -> bytes:
    """16-bit PCM WAV with the tags in a LIST/INFO chunk: the bytes libsndfile writes for the
    same samples and tags, built with numpy in a tenth of the time (libsndfile moves them
    through Python callbacks to write into memory)."""
    scaled = np.floor(np.clip(audio, -1.0, 1.0) * np.float32(32768))  # libsndfile's rounding
    pcm = np.clip(scaled, -32768, 32767).astype("<i2").tobytes()
    texts = [("ICMT", tags.comment), ("INAM", tags.title or ""), ("IART", tags.narrator or "")]
    info = b"".join(_riff_chunk(key, _info_text(text)) for key, text in texts if text)
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, 2 * sample_rate, 2, 16)  # PCM, mono
    body = b"WAVE" + _riff_chunk("fmt ", fmt) + _riff_chunk("LIST", b"INFO" + info)
    return _riff_chunk("RIFF", body + _riff_chunk("data", pcm))


def _riff_chunk(key: str, payload: bytes) -> bytes:
    return key.encode("ascii") + struct.pack("<I", len(payload)) + payload


def _info_text(text: str) -> bytes:
    """An INFO string: NUL-terminated, padded to an even length."""
    data = text.encode() + b"\0"
    return data + b"\0" * (len(data) % 2)


def _decode_wav(data: bytes) -> tuple[np.ndarray, int] | None:
    """Mono 16-bit PCM WAV (what `encode_wav` writes) as float32, scaled as libsndfile reads
    it; None for any other layout."""
    if data[8:12] != b"WAVE":
        return None
    offset, fmt = 12, None
    while offset + 8 <= len(data):
        key, size = data[offset : offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        start = offset + 8
        if key == b"fmt " and size >= 16:
            fmt = struct.unpack_from("<HHIIHH", data, start)
        elif key == b"data":
            if fmt is None or (fmt[0], fmt[1], fmt[5]) != (1, 1, 16):
                return None
            end = min(len(data), start + size) // 2 * 2
            pcm = np.frombuffer(data, dtype="<i2", count=(end - start) // 2, offset=start)
            return pcm.astype(np.float32) * np.float32(1 / 32768), fmt[2]
        offset = start + size + size % 2
    return None


def _encode_ffmpeg(
    audio: np.ndarray, sample_rate: int, fmt: str, bitrate: int, tags: Tags
) -> bytes:
    container_format, codec = _FFMPEG[fmt]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        container.metadata.update(tags.as_dict())
        stream = container.add_stream(
            codec, rate=sample_rate, layout="mono", options=_ENCODER_OPTIONS[fmt]
        )
        stream.bit_rate = bitrate
        if fmt == "opus":  # Ogg keeps tags per stream
            stream.metadata.update(tags.as_dict())
        # the encoder takes its own sample format; the resampler converts and re-frames
        encoder_format = stream.codec_context.codec.audio_formats[0].name
        converter = av.AudioResampler(format=encoder_format, layout="mono", rate=sample_rate)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(audio, dtype=np.float32)[None, :], format="flt", layout="mono"
        )
        frame.sample_rate = sample_rate
        for converted in [*converter.resample(frame), *converter.resample(None)]:
            container.mux(stream.encode(converted))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def _open(data: bytes) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(data), "r")
    except av.FFmpegError as exc:
        raise AudioError(f"encoded audio does not decode: {exc}") from exc


def probe(data: bytes) -> StreamInfo:
    """Codec, rate, channels and tags of an encoded file, without decoding it."""
    with _open(data) as container:
        if not container.streams.audio:
            raise AudioError("encoded file has no audio stream")
        stream = container.streams.audio[0]
        tags = {k.lower(): v for k, v in {**container.metadata, **stream.metadata}.items()}
        context = stream.codec_context
        return StreamInfo(context.name, context.sample_rate, context.channels, tags)


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Any file `encode` writes, as mono float32 at its decoded rate.

    Opus always decodes at 48 kHz, the codec's internal rate, whatever rate went in.
    """
    if data[:4] == b"RIFF" and (wav := _decode_wav(data)) is not None:
        return wav
    if data[:4] in _SOUNDFILE_MAGIC:  # libsndfile reads back what it wrote ~10x faster
        try:
            audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except RuntimeError as exc:  # soundfile.LibsndfileError
            raise AudioError(f"encoded audio does not decode: {exc}") from exc
        return audio.mean(1, dtype=np.float32) if audio.shape[1] > 1 else audio[:, 0], rate
    with _open(data) as container:
        if not container.streams.audio:
            raise AudioError("encoded file has no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        converter = av.AudioResampler(format="flt", layout="mono", rate=rate)
        pieces: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                pieces.extend(f.to_ndarray()[0] for f in converter.resample(frame))
            pieces.extend(f.to_ndarray()[0] for f in converter.resample(None))
        except av.FFmpegError as exc:
            raise AudioError(f"encoded audio does not decode: {exc}") from exc
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    return audio.astype(np.float32, copy=False), rate
