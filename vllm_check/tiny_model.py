"""Build two tiny Llama checkpoints that vLLM serves, for the checks in vllm_check/ (CPU or GPU).

No hub and no download: the tokenizer is a byte-level BPE trained here on the
repository's own text, with Llama 3's special tokens and chat template, and the weights
are made, not learned. Attention and MLP outputs are zero, so each layer passes its input
through and the next token depends only on the current one (a bigram table,
logits = W @ norm(embedding[token])); that makes the two behaviours below exact.

- `tiny-chat`: random bigram logits (std about 1.5 over the vocabulary), special
  tokens never sampled: high-entropy text, which a green-list watermark needs.
- `tiny-guard`: answers the Llama Guard prompt with `safe` then `<|eot_id|>`, and puts
  `unsafe` second in the first token's log-probabilities (P(unsafe) about 0.12).

Usage: python vllm_check/tiny_model.py OUT_DIR   (writes OUT_DIR/tiny-chat, OUT_DIR/tiny-guard)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
           "<|end_header_id|>", "<|eot_id|>"]
WORDS = ["safe", "unsafe"]  # one token each, so the guard's first token is the verdict
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
    "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% endif %}")
HIDDEN = 256
BIAS_DIM = 0  # every embedding holds a constant here, so W[:, 0] acts as a logit bias


def corpus(root: Path) -> list[str]:
    """The repository's own prose and code: enough for a 4k-token byte-level BPE."""
    paths = [p for pattern in ("**/*.md", "**/*.py", "**/*.yaml") for p in root.glob(pattern)
             if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(paths)]


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL[0],
                                   eos_token="<|eot_id|>", pad_token=SPECIAL[1])
    fast.add_tokens(WORDS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _embeddings(vocab: int, gen: torch.Generator) -> torch.Tensor:
    emb = torch.randn(vocab, HIDDEN, generator=gen)
    emb[:, BIAS_DIM] = 4.0
    return emb


def _normed(emb: torch.Tensor) -> torch.Tensor:
    """What the final RMSNorm (weight 1) makes of an embedding row."""
    return emb * torch.rsqrt(emb.pow(2).mean(-1, keepdim=True) + 1e-5)


def chat_head(tok: PreTrainedTokenizerFast, emb: torch.Tensor,
              gen: torch.Generator) -> torch.Tensor:
    head = torch.randn(emb.shape[0], HIDDEN, generator=gen) * (1.5 / HIDDEN ** 0.5)
    bias_scale = float(_normed(emb)[:, BIAS_DIM].mean())
    for token in SPECIAL:  # a bias of about -30: never sampled
        head[tok.convert_tokens_to_ids(token), BIAS_DIM] = -30.0 / bias_scale
    return head


def guard_head(tok: PreTrainedTokenizerFast, emb: torch.Tensor) -> torch.Tensor:
    """After the generation prompt: `safe` (logit about 14), `unsafe` (about 12); after
    `safe`: `<|eot_id|>`. Every other row is zero: a flat distribution elsewhere."""
    ids = tok.convert_tokens_to_ids
    text = tok.apply_chat_template([{"role": "user", "content": "x"}],
                                   add_generation_prompt=True, tokenize=False)
    prompt = tok(str(text), add_special_tokens=False)["input_ids"]
    last = _normed(emb)[int(prompt[-1])]
    after_safe = _normed(emb)[ids("safe")]
    head = torch.zeros(emb.shape[0], HIDDEN)
    head[ids("safe")] = last * (14.0 / float(last @ last))
    head[ids("unsafe")] = last * (12.0 / float(last @ last))
    head[ids("<|eot_id|>")] = after_safe * (16.0 / float(after_safe @ after_safe))
    return head


def build(out: Path, name: str, tok: PreTrainedTokenizerFast, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    vocab = len(tok)
    config = LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=512,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=8192, rms_norm_eps=1e-5,
                         tie_word_embeddings=False, torch_dtype="bfloat16",
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    emb = _embeddings(vocab, gen)
    head = chat_head(tok, emb, gen) if name == "tiny-chat" else guard_head(tok, emb)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(emb)
        model.lm_head.weight.copy_(head)
        model.model.norm.weight.fill_(1.0)
        for layer in model.model.layers:  # each layer passes its input through
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    target = out / name
    model.to(dtype=torch.bfloat16).save_pretrained(target, safe_serialization=True)
    tok.save_pretrained(target)
    (target / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}))


def main() -> None:
    out = Path(sys.argv[1])
    tok = build_tokenizer(corpus(Path(__file__).resolve().parent.parent))
    build(out, "tiny-chat", tok, seed=1)
    build(out, "tiny-guard", tok, seed=2)
    print(f"built tiny-chat and tiny-guard in {out} (vocabulary {len(tok)})")


if __name__ == "__main__":
    main()
