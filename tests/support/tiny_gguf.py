"""Write a tiny llama-architecture GGUF model that llama.cpp can load and run on a CPU.

The weights are random (f32, about 0.6 MB), so the output is gibberish, but tokenization,
prompt processing, generation, token counts and timing are all real. The file is
deterministic given the seed.

Layout (see llama.cpp's `LLM_ARCH_LLAMA` loader): vocab 512, 64-dim embeddings, 2 blocks,
4 heads (head dim 16), feed-forward 128, context 2048. The tokenizer is a SentencePiece-style
("llama") vocabulary: <unk>/<s>/</s>, the chat markers <|im_start|>/<|im_end|> as control
tokens, the 256 byte tokens <0x00>..<0xFF> (so any text tokenizes by byte fallback) and
word pieces to fill the rest. Every token string is unique: llama.cpp's vocabulary loader
asserts on a duplicate.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

VOCAB_SIZE = 512
EMBED_DIM = 64
N_BLOCKS = 2
N_HEADS = 4
N_KV_HEADS = 4
HEAD_DIM = EMBED_DIM // N_HEADS
FFN_DIM = 128
CONTEXT_LENGTH = 2048
RMS_EPS = 1e-5
ROPE_FREQ_BASE = 10000.0

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# The usual ChatML template (the same text as llama-cpp-python's CHATML_CHAT_TEMPLATE).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Most useful first: only as many fit as the vocabulary has room for.
_WORDS_TEXT = (
    "hello world user assistant system model token chat stream answer "
    "the be to of and a in that have it for not on with he as you do at this but his by "
    "from they we say her she or an will my one all would there their what so up out if "
    "about who get which go me when make can like time no just him know take people into "
    "year your good some could them see other than then now look only come its over think "
    "also back after use two how our work first well way even new want because any these "
    "give day most us"
)
_WORDS = _WORDS_TEXT.split()

_SPM_SPACE = "\u2581"  # "▁", SentencePiece's word-start marker


def _vocabulary(size: int) -> tuple[list[str], list[float], list[int]]:
    """Token strings, scores and token types (gguf.TokenType values), `size` of each."""
    tokens: list[str] = []
    types: list[int] = []
    seen: set[str] = set()

    def add(text: str, kind: gguf.TokenType) -> None:
        if text not in seen and len(tokens) < size:
            seen.add(text)
            tokens.append(text)
            types.append(int(kind))

    add("<unk>", gguf.TokenType.UNKNOWN)
    add("<s>", gguf.TokenType.CONTROL)
    add("</s>", gguf.TokenType.CONTROL)
    add(IM_START, gguf.TokenType.CONTROL)
    add(IM_END, gguf.TokenType.CONTROL)
    for byte in range(256):
        add(f"<0x{byte:02X}>", gguf.TokenType.BYTE)
    # Word pieces: single characters, then "▁x", then every prefix of "▁word" so the SPM
    # merge (which only joins pairs that are themselves tokens) can reach whole words.
    singles = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()"
    add(_SPM_SPACE, gguf.TokenType.NORMAL)
    for ch in singles:
        add(ch, gguf.TokenType.NORMAL)
    for ch in "abcdefghijklmnopqrstuvwxyz":
        add(_SPM_SPACE + ch, gguf.TokenType.NORMAL)
    for word in _WORDS:
        piece = _SPM_SPACE + word
        for end in range(3, len(piece) + 1):
            add(piece[:end], gguf.TokenType.NORMAL)
    # Fill any remainder with unique two-letter pieces.
    letters = "abcdefghijklmnopqrstuvwxyz"
    for first in letters:
        for second in letters:
            add(first + second, gguf.TokenType.NORMAL)
    if len(tokens) != size:
        raise ValueError(f"could not build a vocabulary of {size} tokens (got {len(tokens)})")
    # SPM scores: longer pieces win merges; ties broken by order. Specials/bytes score 0.
    scores = [
        0.0 if kind != int(gguf.TokenType.NORMAL) else -1000.0 + len(text) * 10.0 - i * 1e-3
        for i, (text, kind) in enumerate(zip(tokens, types, strict=True))
    ]
    return tokens, scores, types


def write_tiny_llama(path: Path, *, seed: int = 0) -> Path:
    """Write the tiny model to `path` (parents created) and return `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        # numpy shape is (rows, cols) = ggml's ne reversed, as gguf-py expects.
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    tokens, scores, types = _vocabulary(VOCAB_SIZE)
    control_ids = [i for i, t in enumerate(types) if t != int(gguf.TokenType.NORMAL)]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("hearth-tiny-llama")
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    writer.add_vocab_size(VOCAB_SIZE)
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(EMBED_DIM)
    writer.add_block_count(N_BLOCKS)
    writer.add_feed_forward_length(FFN_DIM)
    writer.add_head_count(N_HEADS)
    writer.add_head_count_kv(N_KV_HEADS)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(ROPE_FREQ_BASE)

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_unk_token_id(UNK_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    writer.add_tensor("token_embd.weight", weight(VOCAB_SIZE, EMBED_DIM))
    writer.add_tensor("output_norm.weight", ones(EMBED_DIM))
    output = weight(VOCAB_SIZE, EMBED_DIM)
    # Zero rows for <unk>, <s>, </s>, the chat markers and the byte tokens: their logit is
    # always 0 while some word piece's is positive, so greedy decoding never ends early on
    # an end-of-generation token and always emits printable text.
    output[control_ids] = 0.0
    writer.add_tensor("output.weight", output)
    for i in range(N_BLOCKS):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", ones(EMBED_DIM))
        writer.add_tensor(f"{blk}.attn_q.weight", weight(N_HEADS * HEAD_DIM, EMBED_DIM))
        writer.add_tensor(f"{blk}.attn_k.weight", weight(N_KV_HEADS * HEAD_DIM, EMBED_DIM))
        writer.add_tensor(f"{blk}.attn_v.weight", weight(N_KV_HEADS * HEAD_DIM, EMBED_DIM))
        writer.add_tensor(f"{blk}.attn_output.weight", weight(EMBED_DIM, N_HEADS * HEAD_DIM))
        writer.add_tensor(f"{blk}.ffn_norm.weight", ones(EMBED_DIM))
        writer.add_tensor(f"{blk}.ffn_gate.weight", weight(FFN_DIM, EMBED_DIM))
        writer.add_tensor(f"{blk}.ffn_up.weight", weight(FFN_DIM, EMBED_DIM))
        writer.add_tensor(f"{blk}.ffn_down.weight", weight(EMBED_DIM, FFN_DIM))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
