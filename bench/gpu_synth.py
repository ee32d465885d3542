"""The whole CSM engine on a GPU: CSM-1B's shape (random weights), bf16, B = 1, 16, 64.

`CsmEngine` end to end, as a run uses it: a voice prompt (encoded once by moshi's Mimi of its
real architecture, random weights), sampling (top-k 50, temperature 0.9), per-row stops (the
rows' frame caps differ: random weights never emit the end frame), slot refill (2 x B rows
through B slots), Mimi decoding of the finished rows, the guards (set to keep capped rows).
The model is CSM-1B's configuration with its llama3 rotary scaling (narrate.synth.tiny.CSM_1B).
For each batch size, eager and with the frame step captured as CUDA graphs (`--compile`):
x real time (audio seconds per second, prefill and decoding included), the steady frame step's
time, the share of the time spent in Mimi, peak device memory. Then bench/fidelity.py's figures
on the same GPU. The last line printed is one JSON object.

    python bench/gpu_synth.py [--batches 1,16,64] [--frames 128] [--out gpu_synth.json]
    python bench/gpu_synth.py --dry-run   # the tiny model on the CPU: checks the script only

On a machine that has only torch 2.9 (and numpy, which torch's images carry), bring these
wheels and install them without their dependencies, then run from a checkout of narrate (no
build needed: PYTHONPATH=.):

    pip install --no-deps transformers==4.57.6 tokenizers==0.22.2 huggingface-hub==0.36.2 \\
        safetensors==0.7.0 regex pyyaml moshi==0.2.13 einops==0.8.2 sentencepiece==0.2.3 \\
        soundfile requests urllib3 idna charset-normalizer certifi tqdm packaging
    PYTHONPATH=. python bench/gpu_synth.py --out gpu_synth.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

# what the bench imports beyond torch, and the wheel that brings each
NEEDED = {
    "numpy": "numpy",
    "transformers": "transformers==4.57.6",
    "tokenizers": "tokenizers",
    "huggingface_hub": "huggingface-hub",
    "safetensors": "safetensors",
    "regex": "regex",
    "yaml": "pyyaml",
    "moshi": "moshi==0.2.13",
    "einops": "einops",
    "sentencepiece": "sentencepiece",
    "soundfile": "soundfile",
    "requests": "requests (urllib3, idna, charset-normalizer, certifi)",
    "tqdm": "tqdm",
    "packaging": "packaging",
    "narrate": "narrate (run from the repository with PYTHONPATH=.)",
}


def missing_modules() -> list[str]:
    missing = []
    for module, wheel in NEEDED.items():
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{module} ({wheel}): {exc}")
    return missing


def check_environment(dry_run: bool) -> None:
    """Exit with a clear message where something this bench needs is missing."""
    try:
        import torch
    except ImportError:
        sys.exit("bench/gpu_synth.py needs torch (2.9): none is installed")
    missing = missing_modules()
    if missing:
        sys.exit(
            "bench/gpu_synth.py cannot run: missing Python packages:\n  "
            + "\n  ".join(missing)
            + "\ninstall them with pip install --no-deps (the wheels are listed at the top "
            "of bench/gpu_synth.py) and run from the repository root with PYTHONPATH=."
        )
    if not dry_run and not torch.cuda.is_available():
        sys.exit("bench/gpu_synth.py needs a CUDA GPU (none is visible); --dry-run checks it")


def build(dry_run: bool, device, folder: Path):
    """(model, processor, codec, voices): random CSM (CSM-1B's shape unless a dry run), the
    tiny tokenizer, moshi's Mimi with random weights, a library with one voice."""
    import numpy as np
    import soundfile as sf
    import torch
    from moshi.models import loaders
    from transformers import (
        CsmConfig,
        CsmForConditionalGeneration,
        CsmProcessor,
        EncodecFeatureExtractor,
    )

    from narrate.synth.mimi import Codec
    from narrate.synth.tiny import (
        CHAT_TEMPLATE,
        CSM_1B,
        Sizes,
        build_mimi,
        build_tokenizer,
        csm_config,
        tiny_mimi_config,
    )
    from narrate.synth.voices import VoiceLibrary

    tokenizer = build_tokenizer()
    sizes = Sizes() if dry_run else CSM_1B
    text_vocab = len(tokenizer) if dry_run else 128_256
    config = CsmConfig(**csm_config(sizes, text_vocab, tokenizer.pad_token_id))
    dtype = torch.float32 if dry_run else torch.bfloat16
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = CsmForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    del model.codec_model  # the engine decodes with moshi's Mimi
    features = EncodecFeatureExtractor(feature_size=1, sampling_rate=24_000)
    processor = CsmProcessor(features, tokenizer, chat_template=CHAT_TEMPLATE)
    mimi_config = tiny_mimi_config() if dry_run else loaders._mimi_config
    codec = Codec(build_mimi(mimi_config).to(device).eval(), "random", device)
    t = np.arange(2 * 24_000) / 24_000  # a 2 s voice prompt: 25 frames
    sf.write(folder / "voice.wav", (0.3 * np.sin(2 * np.pi * 140 * t)).astype(np.float32), 24_000)
    voices = VoiceLibrary(folder / "voices")
    voices.add("bench", folder / "voice.wav", "A calm and clear voice.", speaker=0)
    return model.eval(), processor, codec, voices


def chunks(rows: int, frames: int, salt: str) -> list:
    """`rows` chunks of the voice, their caps cycling through frames, 3/4 and 1/2 of it."""
    from narrate.records import Chunk

    text = "The river ran past the old mill at dawn, and the miller's daughter watched it."
    caps = [frames, frames * 3 // 4, frames // 2]
    return [
        Chunk(f"{salt}-{n}", "bench", n, text, voice="bench", max_frames=caps[n % 3])
        for n in range(rows)
    ]


def measure(parts, batch: int, graphs: bool, args: argparse.Namespace) -> dict:
    import torch

    from narrate.config import FRAME_RATE, EngineConfig
    from narrate.records import Batch
    from narrate.synth.csm import CsmEngine
    from narrate.synth.guards import GuardConfig

    model, processor, codec, voices = parts
    device = model.lm_head.weight.device
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    guard = GuardConfig(min_trailing_silence_s=0.0, min_duration_ratio=0.0)  # keep capped rows
    engine = CsmEngine(
        EngineConfig(model="random csm-1b"),
        model=model,
        processor=processor,
        codec=codec,
        voices=voices,
        guard=guard,
        graphs=graphs,
    )
    engine.max_slots = batch  # 2 x B rows run through B slots: refill
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    engine.synthesize(Batch(tuple(chunks(batch, 4, f"warm-{batch}-{graphs}"))))
    sync()
    warm_s = time.perf_counter() - started  # the loop's build (and captures), the voice
    decode_s = [0.0]
    decode_rows = codec.decode_rows

    def timed_decode(rows):
        sync()
        begun = time.perf_counter()
        audio = decode_rows(rows)
        sync()
        decode_s[0] += time.perf_counter() - begun
        return audio

    codec.decode_rows = timed_decode
    try:
        rows = chunks(2 * batch, args.frames, f"run-{batch}-{graphs}")
        sync()
        started = time.perf_counter()
        results = engine.synthesize(Batch(tuple(rows)))
        sync()
        seconds = time.perf_counter() - started
    finally:
        del codec.decode_rows
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} rows failed: {failed[0]}")
    frames = sum(r.frames for r in results)
    loop = engine.loops.get(batch)
    span = next(s for s in loop.spans if s >= args.frames + 64)
    step_s = []
    for _ in range(args.repeats):
        for _ in range(2):
            loop.graphs[span].replay() if graphs else loop.step(span)
        sync()
        started = time.perf_counter()
        for _ in range(args.steps):
            loop.graphs[span].replay() if graphs else loop.step(span)
        sync()
        step_s.append((time.perf_counter() - started) / args.steps)
    step_ms = statistics.median(step_s) * 1000
    result = {
        "batch": batch,
        "mode": "cuda-graphs" if graphs else "eager",
        "rows": len(rows),
        "frames": frames,
        "seconds": round(seconds, 3),
        "x_real_time": round(frames / FRAME_RATE / seconds, 1),
        "step_ms": round(step_ms, 2),
        "step_ms_min_max": [round(min(step_s) * 1000, 2), round(max(step_s) * 1000, 2)],
        "steady_x_real_time": round(batch / (step_ms / 1000) / FRAME_RATE, 1),
        "mimi_share": round(decode_s[0] / seconds, 3),
        "warm_up_s": round(warm_s, 2),
    }
    if cuda:
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    engine.loops.clear()
    print(json.dumps(result), file=sys.stderr)
    return result


def shape(config) -> dict:
    depth = config.depth_decoder_config
    return {
        "backbone": f"{config.num_hidden_layers} layers x {config.hidden_size}, "
        f"{config.num_attention_heads}/{config.num_key_value_heads} heads",
        "depth_decoder": f"{depth.num_hidden_layers} layers x {depth.hidden_size}, "
        f"{depth.num_attention_heads}/{depth.num_key_value_heads} heads",
        "rope_scaling": config.rope_scaling,
        "codebooks": config.num_codebooks,
        "text_vocab": config.text_vocab_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--frames", type=int, default=128, help="the longest rows' frame cap")
    parser.add_argument("--steps", type=int, default=20, help="frame steps timed on their own")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the step timing")
    parser.add_argument("--fidelity-frames", type=int, default=32, help="0: skip fidelity")
    parser.add_argument(
        "--dry-run", action="store_true", help="the tiny model on the CPU, eager, few frames"
    )
    args = parser.parse_args()
    check_environment(args.dry_run)
    import torch

    if args.dry_run:
        device, modes = torch.device("cpu"), [False]
        args.frames, args.steps, args.repeats, args.batches = 8, 2, 1, "1,2"
        args.fidelity_frames = min(args.fidelity_frames, 2)
    else:
        device, modes = torch.device("cuda"), [False, True]
    with tempfile.TemporaryDirectory() as folder:
        parts = build(args.dry_run, device, Path(folder))
        config = parts[0].config
        results = [
            measure(parts, int(batch), graphs, args)
            for batch in args.batches.split(",")
            for graphs in modes
        ]
    del parts
    fidelity = None
    if args.fidelity_frames:
        sys.path.insert(0, str(Path(__file__).parent))
        from fidelity import run as fidelity_run

        from narrate.synth.tiny import CSM_1B, Sizes

        figures = fidelity_run(args.fidelity_frames, device, Sizes() if args.dry_run else CSM_1B)
        fidelity = {key: value for key, value in figures.items() if key != "cases"}
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "dtype": "float32" if args.dry_run else "bfloat16",
        "model": shape(config),
        "frames_per_row": args.frames,
        "results": results,
        "fidelity": fidelity,
    }
    text = json.dumps(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
