"""Tiny backbones and tokenizers built offline from configs, for tests, benchmarks and the demo.

Nothing here touches a hub: the tokenizer is trained on a corpus given by the caller and the
models are randomly initialised from small configs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
DEFAULT_CORPUS = (
    "Question: Tom has 12 apples. He buys 7 more. How many apples does he have?\n"
    "Answer: 12 + 7 = 19. #### 19\n"
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 + - * / = ####\n"
)


def tiny_tokenizer(corpus: Iterable[str] = (DEFAULT_CORPUS,), vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus`, digits split one token per digit."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Digits one by one: arithmetic is learnable only when numbers tokenise uniformly.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_llama(
    vocab_size: int = 400,
    hidden: int = 64,
    layers: int = 4,
    intermediate: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised Llama (GQA when kv_heads < heads), fp32, in eval mode."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(vocab_size: int = 400, hidden: int = 64, layers: int = 4, heads: int = 4, seed: int = 0) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 (Conv1D projections, fused c_attn), in eval mode (no dropout)."""
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_positions=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return GPT2LMHeadModel(cfg).eval()
