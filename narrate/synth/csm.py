"""The CSM-1B engine: the frame loop (frames.py) over a batch's chunks, Mimi decoding, guards.

Model facts and choices (ARCHITECTURE.md: "CSM-1B facts the engine depends on"):
- Loading: `CsmForConditionalGeneration.from_pretrained` + `AutoProcessor.from_pretrained` (a hub
  id or a local folder), bf16 on CUDA and fp32 on CPU. The checkpoint's own Mimi
  (`codec_model`) is dropped before the model moves to the device: moshi's Mimi decodes
  (mimi.py), so the copy inside the checkpoint would only hold device memory.
- Prompt per row, in CSM's own format, built as embeddings: the voice prompt turn
  `<bos>[speaker]transcript<eos>` followed by its audio frames and an end frame, then the
  context turns (each with the audio rendered for it, as CSM requires audio on every turn but
  the last), then the chunk's turn `<bos>[speaker]text<eos>`, spoken by the voice's speaker when
  the chunk has a voice. Book text is tokenized with its special-token strings split, so a
  `<|AUDIO|>` in a book is text, not a frame. The codec encoder runs once per voice.
- Generation: the chunks of a batch go through one `FrameLoop` with B slots, longest first;
  each row stops at its end frame, its own cap or a runaway, and frees its slot for the next.
  A device worker streams batches (`stream`): one loop runs across them, and the next batch's
  rows take the slots the previous one frees, so slots idle only when no batch is waiting.
  A finished row is decoded and judged (guards.py) while the others go on; a row to retry
  rejoins the queue with its next seed, up to `MAX_ATTEMPTS` in all. Sampling noise is a
  function of the chunk's seed, so a chunk's audio does not depend on its batch-mates.
- Memory: the loops (one per slot count) are held within one budget (loops.py). CUDA out of
  memory: the rows in flight rejoin the queue, the other loops are freed and the same slot
  count runs again; only then the loop is rebuilt with half the slots; a row that does not
  fit in a single slot fails alone. Mimi decodes finished rows
  in calls bounded by frames (mimi.py), split down to single rows on out of memory.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch

from narrate.config import FRAME_RATE, SAMPLES_PER_FRAME, WINDOW, EngineConfig
from narrate.errors import EngineError, ModelError, NarrateError, UsageError, first_line
from narrate.records import Batch, Chunk, ChunkAudio, unique_chunks
from narrate.synth import BatchFeed, Engine, Synthesized, Turn, chunk_seed
from narrate.synth.frames import Finished, FrameLoop, Row
from narrate.synth.guards import GuardConfig, end_frame, judge, silent_tail
from narrate.synth.loops import SlotLoops, device_budget, loop_bytes
from narrate.synth.mimi import CODEBOOK_SIZE, Codec, load_codec
from narrate.synth.voices import Voice, VoiceLibrary

if TYPE_CHECKING:
    from transformers import CsmForConditionalGeneration, CsmProcessor

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # the first try and two retries with the next seeds
MAX_SLOTS = 64  # rows generated together, at most (a batch of fewer rows uses fewer)
DECODE_OOM = "decoding ran out of device memory even for this chunk alone"
# takes the rows that finished (codes None: failed with the reason given), the queue for retries
Settle = Callable[[list[Finished], deque[Row], str | None], None]


@dataclass(frozen=True)
class _Failure:
    """A row that produced no usable audio this attempt; `retry` says whether a new seed helps."""

    reason: str
    retry: bool = True


@dataclass(frozen=True)
class _Attempt:
    """What a loop row of a batch stands for: a chunk's attempt (context turns run as rows of
    their own, with no key)."""

    chunk: Chunk
    attempt: int
    embeds: torch.Tensor  # the prompt, kept for a retry
    first: int = 0  # the batch's first attempt of this chunk: MAX_ATTEMPTS count from it


@dataclass(frozen=True)
class _Segment:
    """One turn of a prompt; `codes` [frames, 32] is its audio (None for the turn to speak)."""

    speaker: int
    text: str
    codes: torch.Tensor | None = None


class CsmEngine(Engine):
    def __init__(
        self,
        config: EngineConfig,
        *,
        model: CsmForConditionalGeneration,
        processor: CsmProcessor,
        codec: Codec,
        voices: VoiceLibrary,
        guard: GuardConfig | None = None,
        graphs: bool = False,
        loop_budget: int | None = None,
    ) -> None:
        """`loop_budget`: bytes the frame loops may hold (default: a share of the free device
        memory on CUDA, unbounded on the CPU; loops.py)."""
        self.config = config
        self.model = model
        self.tokenizer = processor.tokenizer
        self.codec = codec
        self.voices = voices
        self.guard = guard or GuardConfig()
        self.graphs = graphs  # capture each loop's frame step as a CUDA graph
        self.device = model.device
        self.bos_id, self.eos_id = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        self.max_slots = MAX_SLOTS  # halved for good on CUDA out-of-memory
        self.loops = SlotLoops(  # by slots: built (and captured) once each, within a budget
            self._build_loop,
            lambda slots: loop_bytes(model, slots),
            loop_budget if loop_budget is not None else device_budget(self.device),
            self.device,
        )
        self.slot_frames = 0  # frame steps x slots computed, idle slots included
        self._voices: dict[str, Voice] = {}  # by name, read once per worker
        self._voice_codes: dict[str, torch.Tensor] = {}  # by voice fingerprint
        self._context_codes: dict[tuple, torch.Tensor] = {}  # by (voice, turns so far)

    @classmethod
    def load(
        cls,
        config: EngineConfig,
        *,
        device: str = "cpu",
        voices: VoiceLibrary | None = None,
        compile: bool = False,
    ) -> CsmEngine:
        from transformers import AutoProcessor, CsmForConditionalGeneration
        from transformers.utils import logging as transformers_logging

        # transformers writes its warnings through its own stderr handler: hand them to the
        # process's logging instead, which a run turns into its JSON events
        transformers_logging.disable_default_handler()
        transformers_logging.enable_propagation()
        torch_device = _check_device(device)
        dtype = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
        try:
            processor = AutoProcessor.from_pretrained(config.model)
            model = CsmForConditionalGeneration.from_pretrained(config.model, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"cannot load the CSM model {config.model!r}: {first_line(exc)}",
                "`narrate doctor` says whether the Hub is unreachable, the model gated (set "
                "HF_TOKEN) or not cached; or pass --model DIR with a local copy "
                "(hf download sesame/csm-1b --local-dir DIR)",
            ) from None
        del model.codec_model  # moshi's Mimi decodes; this copy would only take device memory
        model = model.to(torch_device).eval()
        codec = load_codec(config.model, torch_device)
        voices = voices or VoiceLibrary()
        graphs = compile and torch_device.type == "cuda"
        return cls(
            config, model=model, processor=processor, codec=codec, voices=voices, graphs=graphs
        )

    def close(self) -> None:
        del self.model, self.codec
        self.loops.clear()
        self._voice_codes.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # --- the batch ----------------------------------------------------------------------

    def synthesize(
        self,
        batch: Batch,
        *,
        context: Sequence[Turn] = (),
        attempts: Mapping[str, int] | None = None,
    ) -> list[ChunkAudio]:
        """One waveform per chunk, in order. `context`: turns spoken before every chunk;
        `attempts`: each chunk's first attempt (the Engine protocol)."""
        done: dict[str, ChunkAudio] = {}
        queue = deque(self._rows(batch, context, attempts or {}, done))
        for _ in self._generate(queue, partial(self._settle, done)):
            pass
        return [done[c.chunk_id] for c in batch.chunks]

    def stream(self, feed: BatchFeed) -> Iterator[Synthesized]:
        """The feed's batches through one frame loop: whenever a slot would sit idle, the next
        batch's rows join the queue, so a batch's rows take the slots its predecessor frees
        (a retry goes first: its batch may wait for it alone). Each chunk comes back as soon
        as it is done, with its batch's tag (the Engine protocol)."""
        done: dict[str, ChunkAudio] = {}  # chunks done, not yet handed back
        waiting: dict[int, set[str]] = {}  # by batch tag: its chunks not done yet
        queue: deque[Row] = deque()
        largest, ended, reported = 0, False, self.slot_frames

        def take(wait: bool) -> None:
            nonlocal largest, ended
            task = feed.next(wait=wait)
            if task is None:
                ended = ended or wait
                return
            in_flight = set().union(*waiting.values())  # a chunk in two batches runs once
            waiting[task.tag] = {c.chunk_id for c in task.batch.chunks}
            largest = max(largest, len(task.batch))
            batch = Batch(tuple(c for c in task.batch.chunks if c.chunk_id not in in_flight))
            queue.extend(self._rows(batch, (), task.attempts, done))

        def deliver() -> Iterator[Synthesized]:
            nonlocal reported
            for tag in list(waiting):
                ready = waiting[tag] & done.keys()
                if not ready:
                    continue
                waiting[tag] -= ready
                audios = tuple(done[chunk_id] for chunk_id in sorted(ready))
                finished = not waiting[tag]
                if finished:
                    del waiting[tag]
                yield Synthesized(tag, audios, finished, self.slot_frames - reported)
                reported = self.slot_frames
            for chunk_id in [c for c in done if not any(c in w for w in waiting.values())]:
                del done[chunk_id]

        def more(idle: bool) -> None:
            take(wait=idle and not done)  # with results to hand back first, no waiting

        while not ended:
            if not queue:
                more(idle=True)
            settle = partial(self._settle, done)
            for _ in self._generate(queue, settle, more, wanted=lambda: largest):
                yield from deliver()
            yield from deliver()

    def _rows(
        self,
        batch: Batch,
        context: Sequence[Turn],
        attempts: Mapping[str, int],
        done: dict[str, ChunkAudio],
    ) -> list[Row]:
        """The batch's rows, longest first; a chunk that cannot run fails into `done`."""
        rows: list[Row] = []
        for chunk in unique_chunks(batch.chunks):
            try:
                embeds = self._prompt(chunk, context)
            except NarrateError as exc:  # an unknown voice fails its chunks, not the batch
                done[chunk.chunk_id] = _failed(chunk, exc.message, 0)
                continue
            cap = self._cap(chunk)
            if len(embeds) + cap > WINDOW:
                reason = (
                    f"prompt ({len(embeds)} positions) + frame cap ({cap}) exceed CSM's "
                    f"{WINDOW}-position window; the planner should have split this text"
                )
                done[chunk.chunk_id] = _failed(chunk, reason, 0)
                continue
            first = attempts.get(chunk.chunk_id, 0)
            rows.append(self._row(_Attempt(chunk, first, embeds, first)))
        rows.sort(key=lambda row: len(row.embeds) + row.cap, reverse=True)  # longest first
        return rows

    def _row(self, attempt: _Attempt) -> Row:
        chunk = attempt.chunk
        seed = chunk_seed(chunk.chunk_id, attempt.attempt)
        expected = math.ceil(self.guard.chunking.expected_frames(len(chunk.text)))
        return Row(attempt, attempt.embeds, self._cap(chunk), seed, quiet_after=expected)

    def _slots(self, rows: int) -> int:
        return min(self.max_slots, 1 << (rows - 1).bit_length())

    def _generate(
        self,
        queue: deque[Row],
        settle: Settle,
        more: Callable[[bool], None] | None = None,
        wanted: Callable[[], int] = lambda: 0,
    ) -> Iterator[None]:
        """Run `queue` through a loop, `settle` taking each group of finished rows (yields
        after each); on CUDA out of memory, free the other loops and try again, then go on
        with half the slots (a row that fails alone
        is settled as failed). `more(idle)` may add rows to the queue whenever a slot would sit
        idle (FrameLoop.run); the loop has slots for `wanted()` rows when it can, and is
        drained and rebuilt larger when that grows."""
        while queue:
            slots = self._slots(max(len(queue), wanted()))

            def refill(idle: bool, slots: int = slots) -> bool:
                more(idle)  # type: ignore[misc]
                return self._slots(wanted()) <= slots  # else drain, then a larger loop

            try:
                loop = self.loops.get(slots)
                counted = loop.slot_frames
                try:
                    for finished in loop.run(queue, refill if more else None):
                        self.slot_frames += loop.slot_frames - counted
                        counted = loop.slot_frames
                        settle(finished, queue, None)
                        yield
                finally:
                    self.slot_frames += loop.slot_frames - counted
            except torch.OutOfMemoryError:
                slots = self.loops.last
                if self.loops.recover():
                    continue
                if slots == 1:
                    reason = "does not fit in device memory even alone"
                    settle([Finished(queue.popleft().key, None)], queue, reason)
                    yield
                    continue
                self.max_slots = slots // 2
                log.warning(
                    "out of device memory with %d slots: going on with %d", slots, slots // 2
                )

    def _build_loop(self, slots: int) -> FrameLoop:
        return FrameLoop(
            self.model,
            slots,
            temperature=self.config.temperature,
            silence_limit=self.guard.silence_frames,
            top_k=self.config.top_k,
            codebook_size=CODEBOOK_SIZE,
            graphs=self.graphs,
        )

    def _settle(
        self,
        done: dict[str, ChunkAudio],
        finished: list[Finished],
        queue: deque[Row],
        failure: str | None,
    ) -> None:
        """Decode finished rows and keep, retry or fail each."""
        if failure is None:
            return self._judge(finished, queue, done)
        for attempt in [f.key for f in finished]:
            done[attempt.chunk.chunk_id] = _failed(attempt.chunk, failure, attempt.attempt)

    def _judge(
        self,
        finished: list[Finished],
        queue: deque[Row],
        done: dict[str, ChunkAudio],
    ) -> None:
        attempts: list[_Attempt] = [f.key for f in finished]
        eos = self.model.config.codebook_eos_token_id
        ends = [end_frame(f.codes, eos) for f in finished]
        frames = [
            silent_tail(f.codes, self.guard.silence_frames) if end is None else end
            for f, end in zip(finished, ends, strict=True)
        ]
        audio = self.codec.decode_rows([f.codes[:n] for f, n in zip(finished, frames, strict=True)])
        for attempt, row_audio, end in zip(attempts, audio, ends, strict=True):
            chunk = attempt.chunk
            if row_audio is None:  # Mimi ran out of device memory with this row alone
                done[chunk.chunk_id] = _failed(chunk, DECODE_OOM, attempt.attempt)
                continue
            outcome = self._judged(
                chunk, row_audio, self._cap(chunk), end is not None, attempt.attempt
            )
            if isinstance(outcome, ChunkAudio):
                done[chunk.chunk_id] = outcome
            elif outcome.retry and attempt.attempt + 1 < attempt.first + MAX_ATTEMPTS:
                log.info("retrying chunk %s with its next seed: %s", chunk.chunk_id, outcome.reason)
                retry = _Attempt(chunk, attempt.attempt + 1, attempt.embeds, attempt.first)
                queue.appendleft(self._row(retry))  # first: its batch may wait on it alone
            else:
                done[chunk.chunk_id] = _failed(chunk, outcome.reason, attempt.attempt)

    def _judged(
        self, chunk: Chunk, audio: np.ndarray, cap: int, ended: bool, attempt: int
    ) -> ChunkAudio | _Failure:
        verdict = judge(audio, text=chunk.text, cap=cap, ended=ended, guard=self.guard)
        if verdict.problem:
            return _Failure(verdict.problem)
        return ChunkAudio(
            chunk_id=chunk.chunk_id,
            audio=np.ascontiguousarray(audio[: verdict.frames * SAMPLES_PER_FRAME]),
            frames=verdict.frames,
            stop_reason=verdict.stop_reason,
            seed=chunk_seed(chunk.chunk_id, attempt),
            attempts=attempt + 1,
        )

    # --- prompts ------------------------------------------------------------------------

    def _cap(self, chunk: Chunk) -> int:
        """The chunk's frame cap (the planner's), never above --max-audio-length-ms."""
        limit = int(self.config.max_audio_ms / 1000 * FRAME_RATE)
        planned = chunk.max_frames or self.guard.chunking.max_frames(len(chunk.text))
        return max(1, min(planned, limit))

    def _prompt(self, chunk: Chunk, context: Sequence[Turn]) -> torch.Tensor:
        """The row's prompt embeddings [positions, hidden]."""
        voice = self._voice(chunk.voice) if chunk.voice else None
        segments = (
            [_Segment(voice.speaker, voice.transcript, self.voice_codes(voice))] if voice else []
        )
        segments += self._context(segments, voice.fingerprint if voice else "", context)
        speaker = voice.speaker if voice else chunk.speaker  # the voice speaks the chunk
        return self._embed([*segments, _Segment(speaker, chunk.text)])

    @torch.inference_mode()
    def _embed(self, segments: list[_Segment]) -> torch.Tensor:
        pieces = []
        end_frame_codes = torch.full(
            (1, self.model.config.num_codebooks), self.model.config.codebook_eos_token_id
        )
        for segment in segments:
            # special-token strings in the text stay text: only our own ids are specials
            text = self.tokenizer(
                f"[{segment.speaker}]{segment.text}",
                add_special_tokens=False,
                split_special_tokens=True,
            )["input_ids"]
            ids = torch.tensor([self.bos_id, *text, self.eos_id], device=self.device)
            pieces.append(self.model.embed_text_tokens(ids))
            if segment.codes is not None:
                frames = torch.cat([segment.codes, end_frame_codes]).to(self.device)
                pieces.append(self.model.backbone_model.embed_tokens(frames[None])[0])
        return torch.cat(pieces)

    def _context(
        self, prompt: list[_Segment], voice_key: str, context: Sequence[Turn]
    ) -> list[_Segment]:
        """The context turns with their audio, each rendered (once) after the turns before it:
        CSM expects audio on every turn but the last."""
        segments: list[_Segment] = []
        for n, turn in enumerate(context):
            key = (voice_key, tuple(context[: n + 1]))
            if key not in self._context_codes:
                self._context_codes[key] = self._render(
                    turn, self._embed([*prompt, *segments, _Segment(turn.speaker, turn.text)])
                )
            segments.append(_Segment(turn.speaker, turn.text, self._context_codes[key]))
        return segments

    def _render(self, turn: Turn, embeds: torch.Tensor) -> torch.Tensor:
        """A context turn's codes [frames, 32], up to its end frame or its cap."""
        chunk = Chunk(_turn_id(turn), "context", 0, turn.text, speaker=turn.speaker)
        cap = min(self._cap(chunk), WINDOW - len(embeds) - 1)
        if cap < 1:
            raise UsageError("the context turns do not fit in CSM's 2048-position window")
        rendered: list[np.ndarray] = []
        row = Row(None, embeds, cap, chunk_seed(chunk.chunk_id))
        for _ in self._generate(
            deque([row]), lambda finished, queue, failure: rendered.append(finished[0])
        ):
            pass
        if rendered[0].codes is None:
            raise EngineError("cannot render the context turns: out of device memory")
        codes = rendered[0].codes
        end = end_frame(codes, self.model.config.codebook_eos_token_id)
        return torch.from_numpy(np.clip(codes[:end], 0, CODEBOOK_SIZE - 1))

    def _voice(self, name: str) -> Voice:
        if name not in self._voices:
            self._voices[name] = self.voices.get(name)
        return self._voices[name]

    def voice_codes(self, voice: Voice) -> torch.Tensor:
        """The voice's Mimi codes [frames, 32]: memory, then disk, then the encoder (once)."""
        if voice.fingerprint in self._voice_codes:
            return self._voice_codes[voice.fingerprint]
        path = voice.codes_path(self.codec.key)
        if path.is_file():
            codes = torch.from_numpy(np.load(path).astype(np.int64))
        else:
            import soundfile as sf

            audio, _ = sf.read(str(voice.audio_path), dtype="float32")
            codes = self.codec.encode(torch.from_numpy(audio)).cpu()
            voice.save_codes(self.codec.key, codes.numpy().astype(np.int16))
        self._voice_codes[voice.fingerprint] = codes
        return codes


def _turn_id(turn: Turn) -> str:
    return hashlib.sha256(f"{turn.speaker}|{turn.text}".encode()).hexdigest()[:24]


def _failed(chunk: Chunk, reason: str, attempt: int) -> ChunkAudio:
    tries = f" (after {attempt + 1} attempts)" if attempt else ""
    return ChunkAudio(
        chunk_id=chunk.chunk_id,
        audio=np.zeros(0, np.float32),
        frames=0,
        stop_reason="failed",
        seed=chunk_seed(chunk.chunk_id, attempt),
        attempts=attempt + 1,
        error=reason + tries,
    )


def _check_device(device: str) -> torch.device:
    try:
        torch_device = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}", "use cpu, cuda or cuda:N") from None
    if torch_device.type == "cuda":
        count = torch.cuda.device_count()
        index = torch_device.index or 0
        if index >= count:
            raise EngineError(
                f"device {device} is not available ({count} CUDA device(s) visible)",
                "check nvidia-smi and CUDA_VISIBLE_DEVICES, or use --devices cpu",
            )
        return torch.device("cuda", index)
    return torch_device
