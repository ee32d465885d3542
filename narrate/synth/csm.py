"""The CSM-1B engine: one batched `generate` per batch, one batched Mimi decode, stop guards.

Model facts and choices (ARCHITECTURE.md: "CSM-1B facts the engine depends on"):
- Loading: `CsmForConditionalGeneration.from_pretrained` + `AutoProcessor.from_pretrained` (a hub
  id or a local folder), bf16 on CUDA and fp32 on CPU; Mimi from moshi (see mimi.py).
- Prompt per row, in CSM's own format: the voice prompt turn `<bos>[speaker]transcript<eos>`
  followed by its audio frames and an end frame, then optional text-only context turns, then the
  chunk's turn `<bos>[speaker]text<eos>`. Rows are left padded to one batch. Audio frames enter
  as embeddings of the voice's cached Mimi codes, so the codec encoder runs once per voice,
  not once per chunk as with the processor's audio inputs.
- Sampling: per-row generators seeded from the chunk id (sampling.py), so a chunk's audio does
  not depend on its batch-mates and a rerun reproduces it.
- Per-row caps: transformers' CSM `generate` has one length limit for the batch, so the batch
  runs to its largest cap (or until every row has ended) and rows are cut afterwards at their
  end frame or their own cap; guards.py trims and judges them. Rows to retry run again together
  with their next seed, up to `MAX_ATTEMPTS` in all.
- CUDA out of memory: the rows are split in halves and retried; a single row that still does not
  fit fails alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from narrate.config import FRAME_RATE, SAMPLES_PER_FRAME, WINDOW, EngineConfig
from narrate.errors import EngineError, ModelError, UsageError, first_line
from narrate.records import Batch, Chunk, ChunkAudio, unique_chunks
from narrate.synth import Turn, chunk_seed
from narrate.synth.guards import GuardConfig, end_frame, judge
from narrate.synth.mimi import CODEBOOK_SIZE, NUM_CODEBOOKS, Codec, load_codec
from narrate.synth.sampling import RowSampler, attached
from narrate.synth.voices import Voice, VoiceLibrary

if TYPE_CHECKING:
    from transformers import CsmForConditionalGeneration, CsmProcessor

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # the first try and two retries with the next seeds


@dataclass(frozen=True)
class _Failure:
    """A row that produced no usable audio this attempt; `retry` says whether a new seed helps."""

    reason: str
    retry: bool = True


class CsmEngine:
    def __init__(
        self,
        config: EngineConfig,
        *,
        model: CsmForConditionalGeneration,
        processor: CsmProcessor,
        codec: Codec,
        voices: VoiceLibrary,
        guard: GuardConfig | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:  # padded positions are masked: any token will do
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.codec = codec
        self.voices = voices
        self.guard = guard or GuardConfig()
        self.device = model.device
        self.bos, self.eos = self.tokenizer.bos_token, self.tokenizer.eos_token
        self.audio_token, self.audio_token_id = processor.audio_token, processor.audio_token_id
        self.audio_eos_token = processor.audio_eos_token
        self.audio_eos_token_id = processor.audio_eos_token_id
        self._voices: dict[str, Voice] = {}  # by name, read once per worker
        self._voice_codes: dict[str, torch.Tensor] = {}  # by voice fingerprint

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

        torch_device = _check_device(device)
        dtype = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
        try:
            processor = AutoProcessor.from_pretrained(config.model)
            model = CsmForConditionalGeneration.from_pretrained(config.model, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"cannot load the CSM model {config.model!r}: {first_line(exc)}",
                "sesame/csm-1b is gated: accept its terms on huggingface.co and set HF_TOKEN "
                "(or `huggingface-cli login`), or pass --model DIR with a local copy "
                "(huggingface-cli download sesame/csm-1b --local-dir DIR)",
            ) from None
        model = model.to(torch_device).eval()
        # greedy decoding everywhere: the row sampler adds the randomness (sampling.py)
        for generation in (model.generation_config, model.depth_decoder.generation_config):
            generation.update(do_sample=False, temperature=None, top_k=None, top_p=None)
            if compile:  # a static KV cache makes transformers compile the forward on CUDA
                generation.cache_implementation = "static"
        codec = load_codec(config.model, torch_device)
        voices = voices or VoiceLibrary()
        return cls(config, model=model, processor=processor, codec=codec, voices=voices)

    def close(self) -> None:
        del self.model, self.codec
        self._voice_codes.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # --- the batch ----------------------------------------------------------------------

    def synthesize(self, batch: Batch, *, context: Sequence[Turn] = ()) -> list[ChunkAudio]:
        """One waveform per chunk, in order. `context`: text turns spoken before every chunk."""
        done: dict[str, ChunkAudio] = {}
        pending = unique_chunks(batch.chunks)
        for attempt in range(MAX_ATTEMPTS):
            if not pending:
                break
            retry = []
            outcomes = self._fitting(pending, attempt, context)
            for chunk, outcome in zip(pending, outcomes, strict=True):
                if isinstance(outcome, ChunkAudio):
                    done[chunk.chunk_id] = outcome
                elif outcome.retry and attempt + 1 < MAX_ATTEMPTS:
                    retry.append(chunk)
                else:
                    done[chunk.chunk_id] = _failed(chunk, outcome.reason, attempt)
            if retry:
                log.info("retrying %d of %d rows with their next seed", len(retry), len(pending))
            pending = retry
        return [done[c.chunk_id] for c in batch.chunks]

    def _fitting(
        self, chunks: list[Chunk], attempt: int, context: Sequence[Turn]
    ) -> list[ChunkAudio | _Failure]:
        """`_generate`, halving the rows on CUDA out-of-memory until they fit."""
        try:
            return self._generate(chunks, attempt, context)
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(chunks) == 1:
                return [_Failure("does not fit in device memory even alone", retry=False)]
            half = len(chunks) // 2
            log.warning("out of device memory with %d rows: splitting in halves", len(chunks))
            return self._fitting(chunks[:half], attempt, context) + self._fitting(
                chunks[half:], attempt, context
            )

    def _generate(
        self, chunks: list[Chunk], attempt: int, context: Sequence[Turn]
    ) -> list[ChunkAudio | _Failure]:
        outcomes: list[ChunkAudio | _Failure | None] = [None] * len(chunks)
        caps = [self._cap(c) for c in chunks]
        prompts: list[tuple[str, list[torch.Tensor]]] = []
        for i, chunk in enumerate(chunks):
            try:
                prompts.append(self._prompt(chunk, context))
            except UsageError as exc:  # an unknown voice fails its chunks, not the batch
                outcomes[i] = _Failure(exc.message, retry=False)
                prompts.append(("", []))
        texts = [text for text, _ in prompts]
        token_ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        rows = []
        for i, (ids, cap) in enumerate(zip(token_ids, caps, strict=True)):
            if outcomes[i] is not None:
                continue
            if len(ids) + cap > WINDOW:
                outcomes[i] = _Failure(
                    f"prompt ({len(ids)} positions) + frame cap ({cap}) exceed CSM's "
                    f"{WINDOW}-position window; the planner should have split this text",
                    retry=False,
                )
            else:
                rows.append(i)
        if rows:
            codes = self._run(
                [texts[i] for i in rows],
                [prompts[i][1] for i in rows],
                [chunk_seed(chunks[i].chunk_id, attempt) for i in rows],
                max(caps[i] for i in rows),
            )
            eos = self.model.config.codebook_eos_token_id
            ends = [end_frame(row_codes, eos) for row_codes in codes]
            frames = [
                min(caps[i], len(row_codes) if end is None else end)
                for i, row_codes, end in zip(rows, codes, ends, strict=True)
            ]
            audio = self._decode(codes, frames)
            for row, i in enumerate(rows):
                ended = ends[row] is not None
                outcomes[i] = self._judged(chunks[i], audio[row], caps[i], ended, attempt)
        return outcomes  # type: ignore[return-value]

    def _run(
        self,
        texts: list[str],
        audio: list[list[torch.Tensor]],
        seeds: list[int],
        frames: int,
    ) -> np.ndarray:
        """One batched generate; returns codes [rows, frames, codebooks]."""
        padded = self.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        ids = padded["input_ids"].to(self.device)
        mask = padded["attention_mask"].to(self.device)
        sampler = RowSampler(
            seeds,
            temperature=self.config.temperature,
            top_k=self.config.top_k,
            codebook_size=CODEBOOK_SIZE,
            num_codebooks=NUM_CODEBOOKS,
            device=self.device,
        )
        with torch.inference_mode(), attached(self.model, sampler) as backbone_sampler:
            embeds = self._embed(ids, mask, [codes for row in audio for codes in row])
            generated = self.model.generate(
                inputs_embeds=embeds,
                attention_mask=mask,
                max_new_tokens=frames,
                do_sample=False,
                depth_decoder_do_sample=False,
                logits_processor=backbone_sampler,
            )
        return generated.cpu().numpy()

    def _embed(
        self, ids: torch.Tensor, mask: torch.Tensor, audio: list[torch.Tensor]
    ) -> torch.Tensor:
        """Text embeddings, with the prompt audio frames and end frames put in their places."""
        embeds = self.model.embed_text_tokens(ids)
        real = mask.bool()
        frame_embedding = self.model.backbone_model.embed_tokens  # sums the 32 codebooks
        if audio:
            codes = torch.cat(audio).to(self.device)[None]  # row-major order of the positions
            embeds[(ids == self.audio_token_id) & real] = frame_embedding(codes)[0]
        end_codes = torch.full(
            (1, 1, NUM_CODEBOOKS), self.model.config.codebook_eos_token_id, device=self.device
        )
        embeds[(ids == self.audio_eos_token_id) & real] = frame_embedding(end_codes)[0, 0]
        return embeds

    def _decode(self, codes: np.ndarray, frames: list[int]) -> list[np.ndarray]:
        """All rows in one Mimi call, each cut at its own length."""
        longest = max(frames)
        if longest == 0:
            return [np.zeros(0, np.float32) for _ in frames]
        valid = torch.from_numpy(np.clip(codes[:, :longest], 0, CODEBOOK_SIZE - 1))
        audio = self.codec.decode(valid).float().cpu().numpy()
        return [row[: n * SAMPLES_PER_FRAME] for row, n in zip(audio, frames, strict=True)]

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

    def _turn(self, speaker: int, text: str, frames: int | None = None) -> str:
        turn = f"{self.bos}[{speaker}]{text}{self.eos}"
        if frames is not None:
            turn += self.audio_token * frames + self.audio_eos_token
        return turn

    def _prompt(self, chunk: Chunk, context: Sequence[Turn]) -> tuple[str, list[torch.Tensor]]:
        """The row's text (audio frames as placeholders) and the codes of those frames."""
        text, audio = "", []
        if chunk.voice:
            if chunk.voice not in self._voices:
                self._voices[chunk.voice] = self.voices.get(chunk.voice)
            voice = self._voices[chunk.voice]
            codes = self.voice_codes(voice)
            text += self._turn(voice.speaker, voice.transcript, len(codes))
            audio.append(codes)
        text += "".join(self._turn(turn.speaker, turn.text) for turn in context)
        return text + self._turn(chunk.speaker, chunk.text), audio

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
