"""Does narrate's frame loop compute what transformers' CSM computes, at CSM-1B's real shape?

A random CSM of CSM-1B's full configuration (16 x 2048 backbone, 4 x 1024 depth decoder, 32
codebooks, 128,256 text tokens, llama3 rotary scaling as sesame/csm-1b: `narrate.synth.tiny`),
with the three special codes' head columns zeroed so that greedy decoding over all 2051 codes
(transformers) and over the 2048 real ones (narrate) agree on what may be chosen. Both sides
get the same prompt embeddings: B=1 with a voice prompt (a text turn, audio frames and an end
frame, then the turn to speak), and B=3 rows of mixed lengths (40 / 8 / 42 positions).

1. fp32, greedy: narrate's `FrameLoop` against transformers' `generate` (do_sample=False):
   the fraction of codes equal (must be 1.0), and the largest difference between narrate's
   logits and transformers' own forwards (teacher-forced on narrate's codes), with the smallest
   top-two gap of the reference logits (a difference below it cannot flip a code).
2. bf16, teacher-forced on the fp32 codes: how often each side's argmax agrees with the fp32
   argmax, narrate beside transformers' sdpa and eager attention; and narrate against sdpa
   beside eager against sdpa (how much two bf16 implementations of the same model differ).

The last line printed is one JSON object; `codes_equal_fp32` is the fraction of codes equal.
Runs on the CPU (2 frames a row by default, 64 codes: minutes on 2 cores) or on a GPU
(`--device cuda`, 32 frames).

    python bench/fidelity.py [--frames N] [--device cpu|cuda] [--tiny]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from narrate.synth.frames import FrameLoop, Row
from narrate.synth.mimi import CODEBOOK_SIZE, NUM_CODEBOOKS
from narrate.synth.tiny import CSM_1B, Sizes, csm_config

TEXT_VOCAB = 128_256  # CSM-1B's Llama-3 tokenizer


@dataclass
class Case:
    name: str
    embeds: list[torch.Tensor]  # one prompt [positions, hidden] a row


def build_model(sizes: Sizes, device: torch.device):  # -> CsmForConditionalGeneration (fp32)
    from transformers import CsmConfig, CsmForConditionalGeneration

    torch.manual_seed(0)
    config = CsmConfig(**csm_config(sizes, TEXT_VOCAB, pad_id=4))
    with torch.device(device):
        model = CsmForConditionalGeneration(config).eval()
    del model.codec_model  # neither side decodes audio here
    with torch.no_grad():  # a zero column gives logit 0: below the best of 2048 random logits
        model.lm_head.weight[CODEBOOK_SIZE:] = 0
        model.depth_decoder.codebooks_head.weight[:, :, CODEBOOK_SIZE:] = 0
    return model


@torch.inference_mode()
def cases(model, generator: torch.Generator) -> list[Case]:
    device = model.lm_head.weight.device

    def text(n: int) -> torch.Tensor:
        ids = torch.randint(5, TEXT_VOCAB, (n,), generator=generator)
        return model.embed_text_tokens(ids.to(device))

    def audio(frames: int) -> torch.Tensor:
        codes = torch.randint(1, CODEBOOK_SIZE, (frames, NUM_CODEBOOKS), generator=generator)
        codes = torch.cat([codes, torch.zeros(1, NUM_CODEBOOKS, dtype=torch.long)])  # end frame
        return model.backbone_model.embed_tokens(codes[None].to(device))[0]

    voice = torch.cat([text(12), audio(24), text(10)])  # voice turn + its audio, then the text
    return [Case("B=1 voice prompt", [voice]), Case("B=3 mixed", [text(40), text(8), text(42)])]


class Tap:
    """Stands in for a loop's sampler: records every logits row block it is given and returns
    either the loop's own greedy code or the code forced from `forced` [rows, frames, 32]."""

    def __init__(self, loop: FrameLoop, forced: torch.Tensor | None) -> None:
        self.loop, self.forced, self.calls = loop, forced, 0
        self.logits: list[torch.Tensor] = []
        self.own = loop._sample
        loop._sample = self  # type: ignore[method-assign]

    def __call__(self, logits: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        self.logits.append(logits[:, :CODEBOOK_SIZE].float().cpu())
        frame, codebook = divmod(self.calls, NUM_CODEBOOKS)
        self.calls += 1
        if self.forced is None:
            return self.own(logits, key)
        frame = min(frame, self.forced.shape[1] - 1)  # steps past the cap compute garbage
        return self.forced[:, frame, codebook].to(logits.device)

    def by_frame(self, frames: int) -> torch.Tensor:
        """[rows, frames, 32, 2048]"""
        stacked = torch.stack(self.logits[: frames * NUM_CODEBOOKS], 1)
        return stacked.view(stacked.shape[0], frames, NUM_CODEBOOKS, -1)


def narrate_run(model, case: Case, frames: int, forced: torch.Tensor | None):
    """narrate's loop, greedy (or forced to `forced`): codes [rows, frames, 32] and logits."""
    rows = len(case.embeds)
    loop = FrameLoop(  # every row runs `frames` frames: one check at the end, no wasted step
        model,
        rows,
        temperature=0.0,
        top_k=1,
        codebook_size=CODEBOOK_SIZE,
        repeat_limit=10**6,
        check_every=frames,
    )
    tap = Tap(loop, forced)
    dtype = model.lm_head.weight.dtype
    queue = deque(Row(n, e.to(dtype), frames, seed=n) for n, e in enumerate(case.embeds))
    codes = {f.key: f.codes for group in loop.run(queue) for f in group}
    stacked = torch.stack([torch.from_numpy(codes[n][:frames]) for n in range(rows)])
    return stacked, tap.by_frame(frames)


@torch.inference_mode()
def transformers_generate(model, case: Case, frames: int) -> torch.Tensor:
    """transformers' `generate`, greedy, on the same (left-padded) embeddings: [rows, frames,
    32]."""
    longest = max(len(e) for e in case.embeds)
    hidden = case.embeds[0].shape[1]
    embeds = case.embeds[0].new_zeros(len(case.embeds), longest, hidden)
    mask = torch.zeros(len(case.embeds), longest, dtype=torch.long, device=embeds.device)
    for n, e in enumerate(case.embeds):
        embeds[n, longest - len(e) :] = e
        mask[n, longest - len(e) :] = 1
    out = model.generate(
        inputs_embeds=embeds,
        attention_mask=mask,
        do_sample=False,
        depth_decoder_do_sample=False,
        max_new_tokens=frames,
        min_new_tokens=frames,
    )
    return out[:, -frames:].cpu()


@torch.inference_mode()
def transformers_logits(model, case: Case, codes: torch.Tensor) -> torch.Tensor:
    """transformers' own forwards, teacher-forced on `codes` [rows, frames, 32], one row at a
    time: logits [rows, frames, 32, 2048]."""
    frames, out = codes.shape[1], []
    dtype, device = model.lm_head.weight.dtype, model.lm_head.weight.device
    for prompt, row_codes in zip(case.embeds, codes.to(device), strict=True):
        audio = model.backbone_model.embed_tokens(row_codes[None, :-1])[0]
        states = model.backbone_model(inputs_embeds=torch.cat([prompt.to(dtype), audio])[None])
        hidden = states.last_hidden_state[0, len(prompt) - 1 :]  # the state before each frame
        first = model.lm_head(hidden)[:, None]
        ids = torch.cat([torch.zeros_like(row_codes[:, :1]), row_codes[:, :-1]], 1)
        depth = model.depth_decoder(
            input_ids=ids,
            backbone_last_hidden_state=hidden,
            cache_position=torch.arange(NUM_CODEBOOKS, device=device),
        )
        # the depth decoder gives no logits for its position 0 (the backbone's state)
        logits = torch.cat([first, depth.logits], 1)[..., :CODEBOOK_SIZE][..., :CODEBOOK_SIZE]
        out.append(logits.float().cpu())
        assert len(out[-1]) == frames
    return torch.stack(out)


def attend(model, implementation: str) -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()  # it warns that the deleted codec's config has no module
    model.set_attn_implementation(implementation)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float((a.argmax(-1) == b.argmax(-1)).float().mean()), 4)


def top_two_gap(logits: torch.Tensor) -> float:
    top = logits.topk(2, -1).values
    return float((top[..., 0] - top[..., 1]).min())


def timed(label: str, fn: Callable, *args):
    started = time.perf_counter()
    result = fn(*args)
    print(f"  {label}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return result


def compare(fp32, bf16, case: Case, frames: int) -> dict:
    print(f"{case.name} ({[len(e) for e in case.embeds]} prompt positions):", file=sys.stderr)
    codes, logits = timed("narrate fp32", narrate_run, fp32, case, frames, None)
    expected = timed("transformers generate fp32", transformers_generate, fp32, case, frames)
    attend(fp32, "sdpa")
    reference = timed("transformers forwards fp32", transformers_logits, fp32, case, codes)
    _, narrate16 = timed("narrate bf16", narrate_run, bf16, case, frames, codes)
    bf16_logits = {}
    for attention in ("sdpa", "eager"):
        attend(bf16, attention)
        bf16_logits[attention] = timed(
            f"transformers forwards bf16 {attention}", transformers_logits, bf16, case, codes
        )
    equal = float((codes == expected).float().mean())
    result = {
        "case": case.name,
        "codes_equal_fp32": round(equal, 6),
        "max_logit_diff_fp32": float((logits - reference).abs().max()),
        "min_top_two_gap_fp32": round(top_two_gap(reference), 6),
        "bf16_argmax_vs_fp32": {
            "narrate": agreement(narrate16, reference),
            "transformers_sdpa": agreement(bf16_logits["sdpa"], reference),
            "transformers_eager": agreement(bf16_logits["eager"], reference),
        },
        "bf16_argmax_vs_transformers_sdpa": {
            "narrate": agreement(narrate16, bf16_logits["sdpa"]),
            "transformers_eager": agreement(bf16_logits["eager"], bf16_logits["sdpa"]),
        },
    }
    print(json.dumps(result), file=sys.stderr)
    return result


def summary(results: list[dict]) -> dict:
    def mean(path: tuple[str, ...]) -> float:
        values = []
        for result in results:
            value = result
            for key in path:
                value = value[key]
            values.append(value)
        return round(sum(values) / len(values), 4)

    return {
        "codes_equal_fp32": min(r["codes_equal_fp32"] for r in results),
        "max_logit_diff_fp32": max(r["max_logit_diff_fp32"] for r in results),
        "min_top_two_gap_fp32": min(r["min_top_two_gap_fp32"] for r in results),
        "bf16_argmax_vs_fp32_narrate": mean(("bf16_argmax_vs_fp32", "narrate")),
        "bf16_argmax_vs_fp32_transformers_sdpa": mean(("bf16_argmax_vs_fp32", "transformers_sdpa")),
        "bf16_argmax_vs_fp32_transformers_eager": mean(
            ("bf16_argmax_vs_fp32", "transformers_eager")
        ),
        "bf16_narrate_vs_sdpa": mean(("bf16_argmax_vs_transformers_sdpa", "narrate")),
        "bf16_eager_vs_sdpa": mean(("bf16_argmax_vs_transformers_sdpa", "transformers_eager")),
    }


def run(frames: int, device: torch.device, sizes: Sizes) -> dict:
    """Every figure of this bench as one dict (bench/gpu_synth.py reports it too)."""
    started = time.perf_counter()
    fp32 = build_model(sizes, device)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)  # before the loop fuses fp32's projections
    print(f"built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    generator = torch.Generator().manual_seed(1)
    results = [compare(fp32, bf16, case, frames) for case in cases(fp32, generator)]
    parameters = sum(p.numel() for p in fp32.parameters())
    del fp32, bf16
    return {
        **summary(results),
        "frames": frames,
        "parameters": parameters,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "seconds": round(time.perf_counter() - started, 1),
        "cases": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--frames", type=int, default=0, help="frames generated per row (0: 2 on the CPU, 32)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's)")
    parser.add_argument("--tiny", action="store_true", help="the tiny shape: checks the script")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/fidelity.py: --device cuda but no CUDA GPU is visible")
    frames = args.frames or (32 if device.type == "cuda" else 2)
    print(json.dumps(run(frames, device, Sizes() if args.tiny else CSM_1B)))


if __name__ == "__main__":
    main()
