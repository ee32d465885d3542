"""The CSM engine with the tiny random CSM + Mimi, loaded through the real from_pretrained path.

The tiny model ends each row with CSM's all-zero end frame after about as many frames as its
text calls for (see narrate.synth.tiny), so frame counts follow text length as with CSM-1B.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from narrate.config import SAMPLES_PER_FRAME, ChunkingConfig, EngineConfig
from narrate.errors import EngineError, ModelError
from narrate.records import Batch, Chunk
from narrate.synth import BatchTask, Turn, chunk_seed, load_engine
from narrate.synth.csm import MAX_ATTEMPTS, MAX_SLOTS
from narrate.synth.frames import FrameLoop
from narrate.synth.voices import VoiceLibrary

# the tiny model is all per-step overhead: extra threads would only spin on a shared CPU
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

CHUNKING = ChunkingConfig()
LONG_TEXT = "Mr. Hale wrote to his sister every evening about the weather and the harvest."


def chunk(text: str, salt: str = "", **fields: object) -> Chunk:
    """A chunk as the planner makes it: hex id from its content, frame cap from its length."""
    chunk_id = hashlib.sha256(f"{salt}|{text}|{fields}".encode()).hexdigest()[:24]
    defaults = {"max_frames": CHUNKING.max_frames(len(text))}
    return Chunk(chunk_id, "book", 0, text, **{**defaults, **fields})


def voice_audio(seconds: float) -> np.ndarray:
    """A voiced, syllable-like test signal: harmonics of 140 Hz, modulated at 4 Hz."""
    t = np.arange(int(seconds * 24_000)) / 24_000
    voiced = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 6))
    return (0.2 * voiced * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> VoiceLibrary:
    import soundfile as sf

    folder = tmp_path_factory.mktemp("voices")
    sf.write(folder / "calm.wav", voice_audio(1.6), 24_000)
    library = VoiceLibrary(folder / "library")
    library.add("calm", folder / "calm.wav", "A calm and clear voice.", speaker=0)
    return library


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, voices: VoiceLibrary):
    loaded = load_engine(EngineConfig(model=str(tiny_model_dir)), device="cpu", voices=voices)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def greedy(tiny_model_dir: Path, voices: VoiceLibrary):
    config = EngineConfig(model=str(tiny_model_dir), temperature=0.0)
    loaded = load_engine(config, device="cpu", voices=voices)
    yield loaded
    loaded.close()


def test_batch_of_different_lengths_gives_one_waveform_per_chunk(engine) -> None:
    texts = ["Rain fell.", "She opened the letter and laughed.", "At noon the bells rang."]
    chunks = [chunk(t) for t in texts]
    results = engine.synthesize(Batch(tuple(chunks)))

    assert [r.chunk_id for r in results] == [c.chunk_id for c in chunks]
    for result, source in zip(results, chunks, strict=True):
        assert result.ok, result.error
        assert result.audio.dtype == np.float32 and result.audio.ndim == 1
        assert len(result.audio) == result.frames * SAMPLES_PER_FRAME  # 24 kHz, 80 ms frames
        assert 0 < result.frames <= source.max_frames
        assert result.stop_reason == "eos"
        assert result.seed == chunk_seed(source.chunk_id) and result.attempts == 1
        assert np.sqrt(np.mean(result.audio**2)) > 1e-3  # not silence
    frames = [r.frames for r in results]
    assert frames[0] < frames[2] < frames[1]  # duration follows the text


def test_same_seed_reproduces_audio_whatever_the_batch_and_another_seed_differs(engine) -> None:
    target = chunk("The river ran past the mill.")
    alone = engine.synthesize(Batch((target,)))[0]
    with_others = engine.synthesize(Batch((chunk("Rain fell softly."), target)))[1]
    reseeded = engine.synthesize(Batch((chunk(target.text, salt="other id"),)))[0]

    np.testing.assert_allclose(with_others.audio, alone.audio, atol=1e-5)
    assert alone.seed != reseeded.seed
    n = min(len(alone.audio), len(reseeded.audio))
    assert not np.allclose(alone.audio[:n], reseeded.audio[:n], atol=1e-3)


def test_batched_and_one_at_a_time_give_the_same_frame_counts_under_greedy(greedy) -> None:
    chunks = [chunk(t) for t in ["Yes.", "Mr. Hale wrote every evening.", "Where are you going?"]]
    batched = greedy.synthesize(Batch(tuple(chunks)))
    single = [greedy.synthesize(Batch((c,)))[0] for c in chunks]

    assert [r.frames for r in batched] == [r.frames for r in single]
    for b, s in zip(batched, single, strict=True):
        np.testing.assert_allclose(b.audio, s.audio, atol=1e-5)


def test_a_row_still_speaking_at_its_cap_is_retried_then_failed_whatever_its_batch(
    engine, monkeypatch
) -> None:
    # the capped row would end (end frame) after ~50 frames: within its batch-mate's cap, not
    # within its own; an end frame found beyond its cap must not mark it ended
    capped = chunk("Nobody in the village had seen the captain since spring.", max_frames=25)
    longer = chunk("Mr. Hale wrote to his sister every evening about the weather and the harvest.")
    prefills = spy_prefill(monkeypatch)

    capped_result, longer_result = engine.synthesize(Batch((capped, longer)))

    assert longer_result.ok and longer_result.attempts == 1
    assert not capped_result.ok and capped_result.stop_reason == "failed"
    assert "frame cap" in capped_result.error and capped_result.attempts == MAX_ATTEMPTS
    assert len(capped_result.audio) == 0
    # each retry rejoins the queue with the next seed while the other row goes on
    tries = [(attempt.chunk.chunk_id, attempt.attempt) for attempt, _ in prefills]
    assert sorted(tries) == sorted(
        [(capped.chunk_id, n) for n in range(3)] + [(longer.chunk_id, 0)]
    )


class ListFeed:
    """Batches as a worker's task queue hands them over: every one already waiting."""

    def __init__(self, *batches: Batch) -> None:
        self.tasks = [BatchTask(n, batch) for n, batch in enumerate(batches, 1)]

    def next(self, *, wait: bool) -> BatchTask | None:
        return self.tasks.pop(0) if self.tasks else None


def test_streamed_batches_run_through_one_loop_and_each_chunk_comes_back_when_done(
    engine, monkeypatch
) -> None:
    first = Batch(tuple(chunk(t, salt="s1") for t in ["Rain fell.", LONG_TEXT]))
    second = Batch(tuple(chunk(t, salt="s2") for t in ["Yes.", "The bells rang at noon."]))
    runs = spy_loop_runs(monkeypatch)

    results = list(engine.stream(ListFeed(first, second)))

    assert len(runs) == 1  # the second batch took the slots the first freed
    # the short chunk came back while its batch-mate was still being spoken
    assert (results[0].tag, results[0].finished) == (1, False)
    assert [a.chunk_id for a in results[0].audios] == [first.chunks[0].chunk_id]
    assert sorted(r.tag for r in results if r.finished) == [1, 2]
    streamed = {a.chunk_id: a for r in results for a in r.audios}
    assert len(streamed) == 4
    # each chunk's audio is what it gets alone: neighbours and slots change nothing
    for source in [*first.chunks, *second.chunks]:
        (alone,) = engine.synthesize(Batch((source,)))
        np.testing.assert_allclose(streamed[source.chunk_id].audio, alone.audio, atol=1e-5)
    # every slot-frame computed is counted, idle slots included: 2 slots, 4 frames a check
    assert sum(r.slot_frames for r in results) % (2 * 4) == 0
    assert sum(r.slot_frames for r in results) >= sum(a.frames for a in streamed.values())


def test_a_stream_whose_batches_grow_gets_a_loop_with_slots_for_the_larger_batch(
    engine, monkeypatch
) -> None:
    small = Batch((chunk("Rain fell.", salt="g1"),))
    large = Batch(tuple(chunk(t, salt="g2") for t in ["Yes.", "No.", "The bells rang.", "Hm."]))
    runs = spy_loop_runs(monkeypatch)
    results = list(engine.stream(ListFeed(small, large)))
    assert runs == [1, 4]  # the one-slot loop drained, then four slots for the rest
    assert sorted(r.tag for r in results if r.finished) == [1, 2]
    assert all(a.ok for r in results for a in r.audios)


def test_a_row_that_falls_silent_after_its_text_stops_early_and_keeps_only_its_speech(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # a model that never emits its end frame: it holds a silence (one repeated first code)
    # once its text is said, as CSM-1B does on most rows
    from narrate.synth.tiny import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("silent"), end_frames=False)
    engine = load_engine(EngineConfig(model=str(folder)), device="cpu")
    target = chunk("Rain fell softly on the harbour all night.")
    (result,) = engine.synthesize(Batch((target,)))
    expected = CHUNKING.expected_frames(len(target.text))
    assert result.ok and result.attempts == 1, result.error
    assert expected <= result.frames <= expected + 8  # the held silence is not kept
    # computed: the speech, a second of silence, the frames until the host looked
    assert engine.slot_frames <= result.frames + 13 + 4 < target.max_frames
    engine.close()


def test_voice_prompt_codes_are_computed_once(
    tiny_model_dir: Path, voices: VoiceLibrary, monkeypatch
) -> None:
    def load():
        return load_engine(EngineConfig(model=str(tiny_model_dir)), device="cpu", voices=voices)

    first = load()
    encodes = spy_encoder(first, monkeypatch)
    chunks = [chunk(t, voice="calm") for t in ["Rain fell.", "The bells rang."]]
    results = first.synthesize(Batch(tuple(chunks)))
    first.synthesize(Batch((chunk("Again.", voice="calm"),)))
    assert all(r.ok for r in results), [r.error for r in results]
    assert len(encodes) == 1  # once for three chunks in two batches
    assert encodes[0] == voices.get("calm").frames  # the library's size estimate is exact

    second = load()  # another worker: the codes come from the library's cache on disk
    second_encodes = spy_encoder(second, monkeypatch)
    second.synthesize(Batch((chunks[0],)))
    assert second_encodes == []


def test_a_voice_prompt_changes_the_audio(engine) -> None:
    plain = chunk("The bells rang.")
    voiced = chunk("The bells rang.", voice="calm")
    a, b = engine.synthesize(Batch((plain, voiced)))
    assert a.ok and b.ok
    n = min(len(a.audio), len(b.audio))
    assert not np.allclose(a.audio[:n], b.audio[:n], atol=1e-3)


def test_an_unknown_voice_or_an_overlong_prompt_fails_only_its_row(engine) -> None:
    unknown = chunk("Rain fell.", voice="nobody")
    fine = chunk("Rain fell.")
    bad, good = engine.synthesize(Batch((unknown, fine)))
    assert good.ok
    assert not bad.ok and "nobody" in bad.error and bad.attempts == 1

    overlong = chunk("word " * 3000)  # tokenizes far past the 2048-position window
    (result,) = engine.synthesize(Batch((overlong,)))
    assert not result.ok and "window" in result.error and result.attempts == 1


def test_a_context_turn_is_spoken_first_and_its_audio_is_in_the_prompt(engine, monkeypatch) -> None:
    # CSM expects audio on every turn but the last: a text-only context turn is not its format
    target = chunk("Rain fell.")
    prefills = spy_prefill(monkeypatch)
    (alone,) = engine.synthesize(Batch((target,)))
    (answered,) = engine.synthesize(Batch((target,)), context=[Turn(1, "Where were you?")])
    assert alone.ok and answered.ok

    (_, plain), (turn, context_prompt), (_, with_context) = prefills
    assert turn is None  # the context turn, rendered on its own
    context_frames = with_context - context_prompt - plain
    assert context_frames >= 10  # "Where were you?" spoken: about a second of frames + end frame
    engine.synthesize(Batch((chunk("Yes."),)), context=[Turn(1, "Where were you?")])
    assert len(prefills) == 4  # rendered once, then reused


def test_a_voice_speaks_the_chunk_whatever_the_rows_speaker(engine) -> None:
    # the voice was registered as speaker 0: a turn for speaker 1 after it would make CSM
    # answer as another speaker, and the voice would be lost
    as_zero, as_one = (chunk("The bells rang.", voice="calm", speaker=n) for n in (0, 1))
    assert torch.equal(engine._prompt(as_one, ()), engine._prompt(as_zero, ()))
    assert not torch.equal(engine._prompt(as_one, ()), engine._prompt(chunk("The bells rang."), ()))


def test_special_token_strings_in_book_text_are_spoken_as_text(engine) -> None:
    text = "She wrote <|AUDIO|> then <|begin_of_text|>[1]hello<|end_of_text|> and <|audio_eos|>."
    (result,) = engine.synthesize(Batch((chunk(text),)))
    assert result.ok, result.error

    # the prompt is one turn: our own <bos> and <eos>, no other special token embedded
    prompt = engine._prompt(chunk(text), ())
    table = engine.model.embed_text_tokens.weight
    specials = {
        name: table[engine.tokenizer.convert_tokens_to_ids(name)]
        for name in ["<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>"]
    }
    found = {name: int((prompt == row).all(-1).sum()) for name, row in specials.items()}
    assert found == {
        "<|begin_of_text|>": 1,
        "<|end_of_text|>": 1,
        "<|AUDIO|>": 0,
        "<|audio_eos|>": 0,
    }


def test_the_checkpoints_own_codec_is_not_kept(engine) -> None:
    # moshi's Mimi decodes; transformers' copy inside the checkpoint would only hold memory
    assert not any(name.startswith("codec_model.") for name, _ in engine.model.named_parameters())


def test_batches_of_other_sizes_and_prompt_lengths_reuse_one_loop(engine, monkeypatch) -> None:
    # one loop (one CUDA graph with --compile) per slot count, whatever the prompts
    engine.loops.clear()
    prefills = spy_prefill(monkeypatch)
    engine.synthesize(Batch(tuple(chunk(t) for t in ["Yes.", "Rain fell.", "The bells rang."])))
    engine.synthesize(Batch(tuple(chunk(t, salt="2") for t in ["No.", "Rain.", "Bells.", "Hm."])))
    assert len(prefills) == 7 and list(engine.loops) == [4]


def test_out_of_memory_halves_the_slots_and_a_row_that_does_not_fit_alone_fails(
    engine, monkeypatch
) -> None:
    # CUDA cannot run here: a frame step that raises torch's OutOfMemoryError above one slot
    # stands in for a GPU that fits one row at a time
    monkeypatch.setattr(engine, "max_slots", engine.max_slots)  # restored afterwards
    engine.loops.clear()
    chunks = [chunk(t, salt="oom") for t in ["Rain fell.", "The bells rang.", "Yes."]]
    slots = spy_step(monkeypatch, fits=1)
    results = engine.synthesize(Batch(tuple(chunks)))
    assert all(r.ok for r in results)
    assert slots[:2] == [4, 2] and set(slots[2:]) == {1}  # 4 fails, 2 fails, 1 fits
    assert engine.max_slots == 1

    spy_step(monkeypatch, fits=0)
    (result,) = engine.synthesize(Batch((chunk("Rain fell.", salt="none fits"),)))
    assert not result.ok and "memory" in result.error and result.attempts == 1


def test_out_of_memory_frees_the_other_loops_and_retries_before_halving_the_slots(
    engine, monkeypatch, caplog
) -> None:
    # a GPU where 4 slots fit only once the loops held from earlier batches are freed
    monkeypatch.setattr(engine, "max_slots", engine.max_slots)
    engine.loops.clear()
    engine.synthesize(Batch((chunk("Yes.", salt="held"),)))  # leaves a 1-slot loop
    real, slots = FrameLoop.step, []

    def step(self, span):
        slots.append(self.slots)
        if len(engine.loops) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, span)

    monkeypatch.setattr(FrameLoop, "step", step)
    chunks = [chunk(t, salt="recover") for t in ["Rain fell.", "The bells rang.", "Yes."]]
    with caplog.at_level(logging.WARNING):
        results = engine.synthesize(Batch(tuple(chunks)))
    assert all(r.ok for r in results)
    assert set(slots) == {4} and engine.max_slots == MAX_SLOTS and list(engine.loops) == [4]
    assert "freed 1 other frame loop(s)" in caplog.text


def test_a_decode_out_of_memory_fails_no_chunk_that_decodes_alone(engine, monkeypatch) -> None:
    # Mimi on a GPU that holds one row at a time: the rows that finished together are decoded
    # again one by one, and every chunk keeps its audio
    real, calls = engine.codec.model.decode, []

    def decode(codes: torch.Tensor) -> torch.Tensor:
        calls.append(codes.shape[0])
        if codes.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(codes)

    monkeypatch.setattr(engine.codec.model, "decode", decode)
    monkeypatch.setattr(engine.codec, "max_frames", 10_000)
    # the same text: the rows end on the same frame and are decoded together first
    chunks = [chunk("The bells rang at noon.", salt=f"decode oom {n}") for n in range(3)]
    results = engine.synthesize(Batch(tuple(chunks)))
    assert all(r.ok for r in results)
    assert max(calls) > 1


def test_the_codec_encodes_and_decodes_with_moshis_compilation_off(engine, monkeypatch) -> None:
    # on CUDA moshi compiles Mimi on first use, which needs a C compiler the runtime image
    # lacks (on the CPU moshi never compiles, so the switch itself is what can be checked here)
    from moshi.utils import compile as moshi_compile

    switch: list[bool] = []
    for name in ("encode", "decode"):
        real = getattr(engine.codec.model, name)

        def spy(*args, real=real):
            switch.append(moshi_compile._compile_disabled)
            return real(*args)

        monkeypatch.setattr(engine.codec.model, name, spy)
    codes = engine.codec.encode(torch.from_numpy(voice_audio(0.5)))
    engine.codec.decode(codes[None])
    assert switch == [True, True]


def test_missing_model_explains_token_and_local_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as error:
        load_engine(EngineConfig(model=str(tmp_path / "no-such-model")), device="cpu")
    assert "HF_TOKEN" in error.value.hint and "--model DIR" in error.value.hint


def test_a_missing_device_is_reported_before_loading_anything(tiny_model_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(EngineError, match="cuda:0 is not available"):
        load_engine(EngineConfig(model=str(tiny_model_dir)), device="cuda:0")


# --- spies on the loaded model (counting calls; the real methods still run) -------------------


def spy_prefill(monkeypatch) -> list[tuple[object, int]]:
    """Record every row prefilled into a loop slot: (its key, its prompt positions)."""
    rows: list[tuple[object, int]] = []
    real = FrameLoop.prefill

    def prefill(self, slots, batch):
        rows.extend((row.key, len(row.embeds)) for row in batch)
        return real(self, slots, batch)

    monkeypatch.setattr(FrameLoop, "prefill", prefill)
    return rows


def spy_loop_runs(monkeypatch) -> list[int]:
    """Record the slots of every frame loop started."""
    slots: list[int] = []
    real = FrameLoop.run

    def run(self, *args):
        slots.append(self.slots)
        return real(self, *args)

    monkeypatch.setattr(FrameLoop, "run", run)
    return slots


def spy_step(monkeypatch, fits: int) -> list[int]:
    """Record the slots of every frame step; above `fits` slots, raise out-of-memory."""
    slots: list[int] = []
    real = FrameLoop.step

    def step(self, span):
        slots.append(self.slots)
        if self.slots > fits:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, span)

    monkeypatch.setattr(FrameLoop, "step", step)
    return slots


def spy_encoder(engine, monkeypatch) -> list[int]:
    """Record the frames of every Mimi encode."""
    frames: list[int] = []
    real = engine.codec.model.encode

    def encode(audio):
        codes = real(audio)
        frames.append(codes.shape[-1])
        return codes

    monkeypatch.setattr(engine.codec.model, "encode", encode)
    return frames
