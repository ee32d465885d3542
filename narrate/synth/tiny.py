"""A tiny CSM + Mimi for tests and offline runs (`narrate dev tiny-model DIR`).

It is saved like the real model (`save_pretrained` for the CSM, processor and tokenizer;
`mimi.safetensors` + `mimi_config.json` for the codec) and the engine loads it through the same
`from_pretrained` path. Its weights are random except for a few hand-set ones, so that it
behaves like a trained CSM in the one way the engine relies on: it speaks for about as long as
its text calls for (~14 characters a second), then emits the all-zero end frame.

How: the first attention layer attends uniformly to every position and reads one "length"
channel, where each text token carries its character count and each audio frame carries minus
the characters a frame of speech covers (1.12). Their average turns negative once enough frames
follow the text, and the head then favours code 0. The depth decoder copies a code 0 into every
later codebook (and never emits 0 after another code), so that frame is the end frame. Every
other weight is random: the codes in between are noise, as with any untrained model.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from narrate.atomic import write_atomic
from narrate.config import FRAME_RATE, SAMPLE_RATE
from narrate.synth.mimi import CODEBOOK_SIZE, LOCAL_CONFIG, LOCAL_WEIGHTS, NUM_CODEBOOKS

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>", "<|pad|>"]
CHAT_TEMPLATE = (  # the prompt format of sesame/csm-1b: `<bos>[speaker]text<eos>` + audio
    "{%- for message in messages -%}"
    "{{ bos_token }}[{{ message['role'] }}]"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{ item['text'] }}"
    "{%- endfor -%}{{ eos_token }}"
    "{%- for item in message['content'] if item['type'] == 'audio' -%}<|AUDIO|><|audio_eos|>"
    "{%- endfor -%}"
    "{%- endfor -%}"
)
# enough English for a byte-level BPE that merges common words; any text still tokenizes
CORPUS = """The river ran past the old mill at dawn, and the miller's daughter watched it from
the bridge. Mr. Hale wrote to his sister every evening about the weather, the harvest and the
people of the village. Nobody had seen the captain since spring; some said he had sailed north,
others that he was living quietly in a house by the sea. She opened the letter, read it twice,
and laughed. Rain fell softly on the harbour while the bells rang out across the valley at noon.
It was a long time before anyone spoke again. "Where are you going?" he asked. "Home," she said,
"where the light is always on and the door is never locked." They walked together through the
forest, over the hills and down to the shore, counting the stars one by one until morning came.
Chapter one. Chapter two. Yes, no, perhaps; first, second, third; one, two, three, four, five."""

# the hidden channels the hand-set weights use (every other channel is random)
LENGTH, TEXT, AVERAGE, CODE, ZERO = range(5)
CHARS_PER_FRAME = 14.0 / FRAME_RATE  # the speaking rate the model imitates
AUDIO_MARK = 1.0  # per codebook, in CODE or ZERO: a frame sums 32 of them
EOS_SHARPNESS = 800.0  # logit change per unit of the average length signal


@dataclass(frozen=True)
class Sizes:
    """Transformer sizes of a random CSM: the tiny test model by default (CSM-1B: 2048 x 16
    backbone, 1024 x 4 depth decoder)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    depth_hidden: int = 64
    depth_layers: int = 1
    depth_heads: int = 4


# sesame/csm-1b's llama3 rotary scaling (transformers' conversion script). The depth decoder's
# values are the original 8192 / 32 positions rescaled to its 16: the same frequencies.
BACKBONE_ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 0.125,
    "high_freq_factor": 0.5,
    "original_max_position_embeddings": 1024,
}
DEPTH_ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1 / 512,
    "high_freq_factor": 1 / 128,
    "original_max_position_embeddings": 16,
}
CSM_1B = Sizes(hidden=2048, layers=16, heads=32, depth_hidden=1024, depth_layers=4, depth_heads=8)

# A random CSM wide enough that synthesis, not per-frame overhead, dominates a CPU run: what the
# run benchmarks (bench-run, bench-quality) use to make a run synthesis-bound, as on a GPU.
SYNTH_BOUND = Sizes(hidden=512, layers=4, heads=8, depth_hidden=256, depth_layers=2, depth_heads=4)


def csm_config(sizes: Sizes, text_vocab_size: int, pad_id: int) -> dict:
    """The CsmConfig arguments (32 codebooks of 2048 codes + 3 specials and CSM-1B's rotary
    scaling; `CSM_1B` sizes give its full shape)."""
    full = sizes == CSM_1B
    return dict(
        num_codebooks=NUM_CODEBOOKS,
        vocab_size=CODEBOOK_SIZE + 3,
        text_vocab_size=text_vocab_size,
        hidden_size=sizes.hidden,
        intermediate_size=8192 if full else 2 * sizes.hidden,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        num_key_value_heads=8 if full else max(1, sizes.heads // 2),
        head_dim=64 if full else sizes.hidden // sizes.heads,
        max_position_embeddings=2048,
        rope_scaling=dict(BACKBONE_ROPE_SCALING),
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=pad_id,
        audio_token_id=2,
        audio_eos_token_id=3,
        codebook_pad_token_id=CODEBOOK_SIZE + 2,
        codebook_eos_token_id=0,
        depth_decoder_config=dict(
            num_codebooks=NUM_CODEBOOKS,
            backbone_hidden_size=sizes.hidden,
            vocab_size=CODEBOOK_SIZE + 3,
            hidden_size=sizes.depth_hidden,
            intermediate_size=8192 if full else 2 * sizes.depth_hidden,
            num_hidden_layers=sizes.depth_layers,
            num_attention_heads=sizes.depth_heads,
            num_key_value_heads=2 if full else max(1, sizes.depth_heads // 2),
            head_dim=128 if full else sizes.depth_hidden // sizes.depth_heads,
            max_position_embeddings=NUM_CODEBOOKS + 1,
            rope_scaling=dict(DEPTH_ROPE_SCALING),
        ),
        codec_config=dict(  # transformers' own Mimi inside CSM (unused here: moshi decodes)
            model_type="mimi",
            audio_channels=1,
            hidden_size=32,
            num_filters=8,
            num_residual_layers=1,
            upsampling_ratios=[8, 4],
            codebook_size=64,
            vector_quantization_hidden_dimension=64,
            upsample_groups=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            sliding_window=4,
            codebook_dim=64,
            use_cache=False,
        ),
    )


def build_tokenizer():  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.split("\n"), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|pad|>",
        padding_side="left",
    )


@torch.no_grad()
def build_csm(
    tokenizer, sizes: Sizes = Sizes(), seed: int = 0, *, end_frames: bool = True
):  # -> CsmForConditionalGeneration
    """`end_frames=False`: once its text is spoken the model holds a silence (codebook 0 stays
    at code 0, the other codebooks random and never 0) instead of emitting the end frame, as
    CSM-1B does on most rows."""
    from transformers import CsmConfig, CsmForConditionalGeneration

    torch.manual_seed(seed)
    config = CsmConfig(**csm_config(sizes, len(tokenizer), tokenizer.pad_token_id))
    model = CsmForConditionalGeneration(config).eval()
    special = set(tokenizer.all_special_ids) | {config.audio_token_id, config.audio_eos_token_id}
    hidden = config.hidden_size
    frame_mark = AUDIO_MARK * NUM_CODEBOOKS  # every position has one channel of this size

    # nothing but the hand-set weights below writes the five channels
    for name, param in model.named_parameters():
        if name.startswith(("backbone_model.", "depth_decoder.")) and name.endswith(
            ("o_proj.weight", "down_proj.weight")
        ):
            param[:5] = 0
    text = model.embed_text_tokens.weight
    text[:, :5] = 0
    text[:, TEXT] = frame_mark
    for token_id in range(len(tokenizer)):
        if token_id not in special:
            text[token_id, LENGTH] = len(tokenizer.convert_ids_to_tokens(token_id))
    audio = model.backbone_model.embed_tokens.embed_audio_tokens.weight  # shared with depth
    audio[:, :5] = 0
    codes = audio.view(NUM_CODEBOOKS, config.vocab_size, hidden)
    codes[:, 0, ZERO] = AUDIO_MARK
    codes[:, 1:, CODE] = AUDIO_MARK
    codes[0, 1:, LENGTH] = -CHARS_PER_FRAME

    # backbone layer 0: one head attends uniformly (q = k = 0) and averages LENGTH into AVERAGE
    attention = model.backbone_model.layers[0].self_attn
    attention.q_proj.weight.zero_()
    attention.k_proj.weight.zero_()
    attention.v_proj.weight.zero_()
    attention.v_proj.weight[0, LENGTH] = 1.0
    attention.o_proj.weight[AVERAGE, 0] = 1.0
    # RMSNorm scales each position by ~sqrt(hidden) / frame_mark, before attention and after
    scale = hidden / frame_mark**2
    model.lm_head.weight[0] = 0
    model.lm_head.weight[0, AVERAGE] = -EOS_SHARPNESS / scale

    # depth decoder: code 0 in, code 0 out; any other code in, never 0 out
    depth = model.depth_decoder
    depth.model.inputs_embeds_projector.weight.copy_(torch.eye(sizes.depth_hidden, hidden))
    head = depth.codebooks_head.weight  # [codebooks - 1, hidden, vocab]
    head[:, :, 0] = 0
    head[:, ZERO, 0] = 10.0 if end_frames else -10.0
    head[:, CODE, 0] = -10.0
    return model


def tiny_mimi_config() -> dict:
    """moshi's Mimi architecture shrunk (same 24 kHz, 12.5 Hz, 32 x 2048 codebooks)."""
    from moshi.models import loaders

    config = copy.deepcopy(loaders._mimi_config)
    config["seanet"].update(n_filters=4, dimension=32)
    config["quantizer"].update(dimension=16, input_dimension=32, output_dimension=32)
    config["transformer"].update(
        d_model=32,
        num_heads=2,
        num_layers=1,
        dim_feedforward=64,
        input_dimension=32,
        output_dimensions=[32],
    )
    return config


@torch.no_grad()
def build_mimi(config: dict, seed: int = 0):  # -> moshi MimiModel
    from moshi.models import loaders
    from moshi.quantization.core_vq import EuclideanCodebook

    torch.manual_seed(seed)
    mimi = loaders.get_mimi(None, config, device="cpu", num_codebooks=NUM_CODEBOOKS)
    for module in mimi.modules():
        # untrained codebooks are all zeros (k-means fills them on the first training batch),
        # which would make every code sound the same
        if isinstance(module, EuclideanCodebook):
            module.embedding_sum.normal_(std=4.0)
            module.cluster_usage.fill_(1.0)
            module._initialized.fill_(1.0)
            module._embedding = None
    return mimi


def build_tiny_model(
    folder: Path, seed: int = 0, sizes: Sizes = Sizes(), *, end_frames: bool = True
) -> Path:
    """Write the tiny model (or a random one of other `sizes`; `end_frames` as for
    `build_csm`) into `folder`; returns it."""
    from safetensors.torch import save_file
    from transformers import CsmProcessor, EncodecFeatureExtractor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    build_csm(tokenizer, sizes, seed, end_frames=end_frames).save_pretrained(folder)
    features = EncodecFeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE)
    CsmProcessor(features, tokenizer, chat_template=CHAT_TEMPLATE).save_pretrained(folder)
    config = tiny_mimi_config()
    state = {k: v.contiguous() for k, v in build_mimi(config, seed).state_dict().items()}
    save_file(state, str(folder / LOCAL_WEIGHTS))
    write_atomic(folder / LOCAL_CONFIG, json.dumps(config, indent=2) + "\n")
    return folder
