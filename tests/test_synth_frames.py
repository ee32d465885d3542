"""The frame loop (narrate.synth.frames) against a plain per-row reference loop.

The reference runs one row at a time through transformers' own CSM modules (backbone and depth
decoder forwards with their dynamic caches, as `generate` does) and draws its codes with the
same seeded sampler; the loop must give exactly its codes, whatever the row's slot, its
batch-mates and the slot refills around it (tiny random CSM, fp32, CPU).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from narrate.synth.frames import FrameLoop, Row
from narrate.synth.mimi import CODEBOOK_SIZE
from narrate.synth.sampling import frame_keys, sample
from narrate.synth.tiny import build_csm, build_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

TEMPERATURE, TOP_K = 0.9, 50


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    return tokenizer, build_csm(tokenizer)


def row(tiny, key: str, text: str, cap: int, seed: int) -> Row:
    tokenizer, model = tiny
    ids = tokenizer(f"<|begin_of_text|>[0]{text}<|end_of_text|>")["input_ids"]
    with torch.inference_mode():
        return Row(key, model.embed_text_tokens(torch.tensor(ids)), cap, seed)


@torch.inference_mode()
def reference(model, row: Row, repeat_limit: int) -> np.ndarray:
    """One row, frame by frame, through the model's own forwards (transformers' caches)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    out = model.backbone_model(inputs_embeds=row.embeds[None], past_key_values=cache)
    hidden, seed = out.last_hidden_state[:, -1], torch.tensor([row.seed])
    frames, last, repeats = [], -1, 0
    for frame in range(row.cap):
        keys = frame_keys(seed, torch.tensor([frame]), 32)

        def draw(logits: torch.Tensor, codebook: int, keys: torch.Tensor = keys) -> torch.Tensor:
            return sample(
                logits,
                key=keys[:, codebook],
                temperature=TEMPERATURE,
                top_k=TOP_K,
                codebook_size=CODEBOOK_SIZE,
            )

        codes = [draw(model.lm_head(hidden), 0)]
        depth_cache = DynamicCache()
        ids, position = torch.stack([torch.zeros_like(codes[0]), codes[0]], 1), torch.arange(2)
        depth = model.depth_decoder(
            input_ids=ids,
            backbone_last_hidden_state=hidden,
            past_key_values=depth_cache,
            cache_position=position,
            logits_to_keep=1,
        )
        for codebook in range(1, 32):
            codes.append(draw(depth.logits[:, -1], codebook))
            if codebook < 31:
                depth = model.depth_decoder(
                    input_ids=codes[-1][:, None],
                    past_key_values=depth_cache,
                    cache_position=torch.tensor([codebook + 1]),
                    logits_to_keep=1,
                )
        frame_codes = torch.stack(codes, 1)
        frames.append(frame_codes[0].numpy())
        first = int(frame_codes[0, 0])
        repeats, last = (repeats + 1 if first == last else 1), first
        if (frame_codes[0, :-1] == 0).all() or repeats >= repeat_limit:
            break
        embeds = model.backbone_model.embed_tokens(frame_codes[:, None])
        out = model.backbone_model(inputs_embeds=embeds, past_key_values=cache)
        hidden = out.last_hidden_state[:, -1]
    return np.stack(frames)


def run(model, rows: list[Row], slots: int, **options) -> tuple[dict, FrameLoop]:
    loop = FrameLoop(
        model,
        slots,
        temperature=TEMPERATURE,
        top_k=TOP_K,
        codebook_size=CODEBOOK_SIZE,
        **options,
    )
    codes = {}
    for finished in loop.run(deque(rows)):
        codes.update((f.key, f.codes) for f in finished)
    return codes, loop


def test_the_loop_gives_the_reference_codes_alone_and_among_rows_of_other_lengths(tiny) -> None:
    _, model = tiny
    target = row(tiny, "target", "Rain fell softly all night.", cap=30, seed=11)
    short = row(tiny, "short", "Yes.", cap=4, seed=12)  # cut by its cap
    other = row(tiny, "other", "At noon the bells rang.", cap=30, seed=13)
    expected = reference(model, target, repeat_limit=38)
    assert 5 < len(expected) < 30 and (expected[-1, :-1] == 0).all()  # ended by its end frame

    alone, _ = run(model, [target], slots=1)
    np.testing.assert_array_equal(alone["target"], expected)

    # two slots: `short` frees its slot early and `target` is prefilled into it mid-run
    batched, loop = run(model, [other, short, target], slots=2)
    np.testing.assert_array_equal(batched["target"], expected)
    np.testing.assert_array_equal(batched["other"], reference(model, other, repeat_limit=38))
    assert len(batched["short"]) == 4
    assert loop.frames_kept == sum(len(c) for c in batched.values())
    assert loop.frames_kept <= loop.frames_computed < loop.frames_kept + 2 * 2 * loop.check_every


def test_a_runaway_row_stops_after_its_first_code_repeats(tiny) -> None:
    _, model = tiny
    runaway = row(tiny, "r", "Nobody had seen the captain since spring.", cap=40, seed=5)
    expected = reference(model, runaway, repeat_limit=1)  # every frame counts as a repeat
    codes, _ = run(model, [runaway], slots=1, repeat_limit=1)
    assert len(expected) == 1
    np.testing.assert_array_equal(codes["r"], expected)


def test_a_row_past_its_expected_length_stops_after_a_second_of_silence(tiny) -> None:
    # a model that holds a silence (codebook 0 at one code) once its text is said, as CSM-1B
    # does instead of emitting its end frame on most rows
    tokenizer, _ = tiny
    model = build_csm(tokenizer, end_frames=False)
    text = "Rain fell softly on the harbour all night."
    silent = row((tokenizer, model), "r", text, cap=87, seed=3)
    (codes,) = run(model, [silent], slots=1)[0].values()
    silence = int(np.flatnonzero(codes[1:, 0] != codes[:-1, 0])[-1]) + 1  # where it fell silent
    assert 20 < silence < 60 and len(codes) == silence + 38  # without: the runaway guard

    def stop(quiet_after: int) -> int:
        silent.quiet_after = quiet_after
        return len(run(model, [silent], slots=1)[0]["r"])

    assert stop(silence) == silence + 13  # a second of silence past the expected length
    assert stop(silence + 20) == silence + 20  # silent since before it: stops on reaching it
    assert stop(0) == silence + 13  # never inside the text: the silence must last a second


def test_the_loop_gives_the_reference_codes_whatever_its_fresh_caches_held(tiny) -> None:
    # the backbone caches are allocated uninitialized and zeroed lazily: garbage such as NaN
    # past a row's positions must never reach its attention (0 x NaN is NaN)
    _, model = tiny
    target = row(tiny, "target", "Rain fell softly all night.", cap=30, seed=11)
    loop = FrameLoop(model, 2, temperature=TEMPERATURE, top_k=TOP_K, codebook_size=CODEBOOK_SIZE)
    for keys, values in loop.caches:
        keys.fill_(float("nan"))
        values.fill_(float("nan"))
    codes = [f.codes for group in loop.run(deque([target])) for f in group]
    np.testing.assert_array_equal(codes[0], reference(model, target, repeat_limit=38))


def test_the_loop_runs_on_the_models_own_weights_and_leaves_its_outputs_unchanged() -> None:
    # the loop fuses q/k/v and gate/up projections into one matmul each: the model's own
    # parameters become views of the fused weights, so it holds no second copy, and the
    # model's forward reads the same values as before
    tokenizer = build_tokenizer()
    model = build_csm(tokenizer)  # its own: the fusion changes the model's parameters

    def stored_bytes() -> int:
        storages = {p.untyped_storage().data_ptr(): p.untyped_storage() for p in model.parameters()}
        return sum(storage.nbytes() for storage in storages.values())

    embeds = row((tokenizer, model), "r", "Rain fell softly all night.", cap=8, seed=1).embeds
    with torch.inference_mode():
        before = model.backbone_model(inputs_embeds=embeds[None]).last_hidden_state
        size = stored_bytes()
        loop = FrameLoop(model, 2, temperature=TEMPERATURE, top_k=TOP_K, codebook_size=2048)
        after = model.backbone_model(inputs_embeds=embeds[None]).last_hidden_state
    assert stored_bytes() == size
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    attention = model.depth_decoder.model.layers[0].self_attn
    fused = loop.depth_stack.layers[0].qkv.weight_t
    assert (
        attention.q_proj.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    )
    assert attention.v_proj.weight.data_ptr() > attention.q_proj.weight.data_ptr()


def test_the_tiny_model_turns_positions_with_csm_1bs_llama3_rotary_scaling(tiny) -> None:
    # the loop reads the rotary factors from the model's own modules: the tiny model carries
    # CSM-1B's llama3 scaling, so the reference comparisons above cover it
    from transformers import CsmConfig, CsmForConditionalGeneration

    from narrate.synth.tiny import BACKBONE_ROPE_SCALING, DEPTH_ROPE_SCALING

    _, model = tiny
    assert model.config.rope_scaling["rope_type"] == BACKBONE_ROPE_SCALING["rope_type"] == "llama3"
    assert model.config.depth_decoder_config.rope_scaling == DEPTH_ROPE_SCALING
    plain_config = CsmConfig(**{**model.config.to_dict(), "rope_scaling": None})
    plain = CsmForConditionalGeneration(plain_config).backbone_model.rotary_emb.inv_freq
    scaled = model.backbone_model.rotary_emb.inv_freq
    assert not torch.allclose(scaled, plain)  # the low frequencies are slowed down
