"""The settings a book was rendered with, as stored with its published file, and how another
run's options differ from them (`narrate status` names the options to repeat)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from narrate.options import RunOptions

SETTINGS_KEY = "renderSettings"  # object metadata: the JSON of `rendered_with`
# a setting -> the option that sets it
OPTIONS = {
    "engine": "--engine",
    "model": "--model",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "max_audio_length_ms": "--max-audio-length-ms",
    "lexicon": "--lexicon",
    "loudness": "--loudness",
    "watermark": "--no-watermark",
    "head_s": "--head-silence",
    "tail_s": "--tail-silence",
}


def model_name(options: RunOptions) -> str:
    """The model named in a file's tags and metadata: the CSM checkpoint, or eSpeak NG."""
    engine = options.catalog.engine
    return engine.model if engine.engine == "csm" else "espeak-ng"


def narrator(options: RunOptions, voice: str | None) -> str:
    """The file's artist tag: says the voice is synthetic, and which model and voice."""
    named = f", voice {voice}" if voice else ""
    return f"synthetic voice ({model_name(options)}{named})"


def rendered_with(options: RunOptions) -> dict[str, object]:
    """What of a run's options shapes its files (and is not in the book's own row)."""
    engine, post = options.catalog.engine, options.outputs.post
    lexicon = options.catalog.chunking.lexicon
    return {
        "engine": engine.engine,
        "model": model_name(options),
        "temperature": engine.temperature,
        "top_k": engine.top_k,
        "max_audio_length_ms": engine.max_audio_ms,
        "lexicon": lexicon.key if lexicon is not None and lexicon.entries else "",
        "loudness": post.loudness_lufs,
        "watermark": post.watermark,
        "head_s": post.head_s,
        "tail_s": post.tail_s,
    }


def settings_metadata(options: RunOptions) -> str:
    return json.dumps(rendered_with(options), separators=(",", ":"), sort_keys=True)


def differing_options(stored: Mapping[str, str], options: RunOptions) -> list[str]:
    """The options whose value differs between a published file's metadata and `options`.

    Files published before the settings were stored carry only `model` and `watermarked`;
    those are compared. Empty: the settings agree, so the book's text, title or voice (or
    the format's mastering) changed since."""
    ours = rendered_with(options)
    try:
        theirs = json.loads(stored.get(SETTINGS_KEY) or "{}")
    except json.JSONDecodeError:
        theirs = {}
    if not isinstance(theirs, dict) or not theirs:
        theirs = {}
        if stored.get("model"):
            theirs["model"] = stored["model"]
            theirs["engine"] = "preview" if stored["model"] == "espeak-ng" else "csm"
        if stored.get("watermarked") in ("true", "false"):
            theirs["watermark"] = stored["watermarked"] == "true"
    differ = [
        name
        for name in OPTIONS
        if name in theirs and theirs[name] != ours[name] and ours[name] is not None
    ]
    if "engine" in differ and "model" in differ:  # the preview engine has no --model
        differ.remove("model")
    return [OPTIONS[name] for name in differ]
