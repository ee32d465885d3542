"""The frame loop on a GPU: CSM-1B's full architecture (random weights), bf16, B = 1, 16, 64.

transformers' `CsmConfig()` defaults are CSM-1B's shape (backbone: Llama-1B, 16 layers, hidden
2048, 32 heads / 8 key-value heads; depth decoder: 4 layers, hidden 1024; 32 codebooks of
2048 + 3 codes; 128,256 text tokens). Random weights never emit the end frame, so every row
runs exactly `--frames` frames after a `--prompt`-position prompt (about a voice prompt and a
sentence), and every slot stays busy. For each batch size, eager and with the frame step
captured as CUDA graphs (`--compile` in narrate): audio frames per second (prefill included),
x real time (12.5 frames per second of audio), the steady frame step's time, peak device
memory. Writes one JSON object (stdout, and `--out FILE`).

    python bench/gpu_synth.py [--out gpu_synth.json] [--frames 128] [--prompt 320]
    python bench/gpu_synth.py --dry-run   # the tiny model on the CPU: checks the script only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from pathlib import Path

import torch
from transformers import CsmConfig

from narrate.config import FRAME_RATE
from narrate.synth.frames import FrameLoop, Row
from narrate.synth.mimi import CODEBOOK_SIZE


def build(dry_run: bool, device: torch.device, dtype: torch.dtype):
    from transformers import CsmForConditionalGeneration

    if dry_run:
        from narrate.synth.tiny import Sizes, csm_config

        config = CsmConfig(**csm_config(Sizes(), text_vocab_size=700, pad_id=4))
    else:
        config = CsmConfig()  # CSM-1B's shape
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = CsmForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    del model.codec_model  # the engine decodes with moshi's Mimi
    return model.eval(), config


def shape(config) -> dict:
    depth = config.depth_decoder_config
    return {
        "backbone": f"{config.num_hidden_layers} layers x {config.hidden_size}, "
        f"{config.num_attention_heads}/{config.num_key_value_heads} heads",
        "depth_decoder": f"{depth.num_hidden_layers} layers x {depth.hidden_size}, "
        f"{depth.num_attention_heads}/{depth.num_key_value_heads} heads",
        "codebooks": config.num_codebooks,
        "audio_vocab": config.vocab_size,
        "text_vocab": config.text_vocab_size,
    }


def measure(model, batch: int, graphs: bool, args: argparse.Namespace) -> dict:
    device = model.lm_head.weight.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    loop = FrameLoop(
        model, batch, temperature=0.9, top_k=50, codebook_size=CODEBOOK_SIZE, graphs=graphs
    )
    sync()
    built = time.perf_counter() - started
    generator = torch.Generator(device="cpu").manual_seed(batch)
    with torch.inference_mode():
        ids = torch.randint(
            0, model.config.text_vocab_size, (batch, args.prompt), generator=generator
        )
        embeds = model.embed_text_tokens(ids.to(device))
    rows = [Row(n, embeds[n], args.frames, seed=n) for n in range(batch)]
    for _ in loop.run(deque(rows[:1])):  # warm-up (kernels, allocator)
        pass
    sync()
    started = time.perf_counter()
    finished = [f for group in loop.run(deque(rows)) for f in group]
    sync()
    seconds = time.perf_counter() - started
    frames = sum(len(f.codes) for f in finished)
    span = next(s for s in loop.spans if s >= args.prompt + args.frames)
    for _ in range(2):
        loop.graphs[span].replay() if graphs else loop.step(span)
    sync()
    started = time.perf_counter()
    for _ in range(args.steps):
        loop.graphs[span].replay() if graphs else loop.step(span)
    sync()
    step_ms = (time.perf_counter() - started) / args.steps * 1000
    result = {
        "batch": batch,
        "mode": "cuda-graphs" if graphs else "eager",
        "frames": frames,
        "seconds": round(seconds, 3),
        "frames_per_s": round(frames / seconds, 1),
        "x_real_time": round(frames / seconds / FRAME_RATE, 1),
        "step_ms": round(step_ms, 2),
        "steady_x_real_time": round(batch / (step_ms / 1000) / FRAME_RATE, 1),
        "build_s": round(built, 2),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(result), file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--frames", type=int, default=128, help="frames per row")
    parser.add_argument("--prompt", type=int, default=320, help="prompt positions per row")
    parser.add_argument("--steps", type=int, default=20, help="frame steps timed on their own")
    parser.add_argument(
        "--dry-run", action="store_true", help="the tiny model on the CPU, eager, 4 frames"
    )
    args = parser.parse_args()
    if args.dry_run:
        device, dtype, modes = torch.device("cpu"), torch.float32, [False]
        args.frames, args.prompt, args.steps, args.batches = 4, 16, 2, "1,2"
    elif not torch.cuda.is_available():
        sys.exit(
            "bench/gpu_synth.py needs a CUDA GPU (none is visible); --dry-run checks it on CPU"
        )
    else:
        device, dtype, modes = torch.device("cuda"), torch.bfloat16, [False, True]
    model, config = build(args.dry_run, device, dtype)
    results = [
        measure(model, int(batch), graphs, args)
        for batch in args.batches.split(",")
        for graphs in modes
    ]
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "model": shape(config),
        **({"full_model_config": shape(CsmConfig())} if args.dry_run else {}),
        "prompt_positions": args.prompt,
        "frames_per_row": args.frames,
        "results": results,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
