"""Arithmetic cost of MFT, FFT and generation on a decoder LM, from its config alone (no weights, no torch).

    shape = ModelShape.of(config)                        # a transformers PretrainedConfig
    shape.params()                                       # every parameter, embeddings included
    step = TrainShape(micro_batch=2, seq=4096, checkpointing=True)
    train_flops_per_token(shape, masked_blocks=(20, 21, 22, 23), kinds=None, step=step)
    train_memory(shape, masked, step, dtype_bytes=2, shards=1)   # bytes on one worker, by part

The model, stated once (docs/design.md, "The cost model"):
- FLOPs: a matmul with P weights costs 2P FLOPs per token forward. Its backward costs 2P for
  the input's gradient and 2P more for the weight's gradient, the latter only where a weight
  is trained. Attention scores and their weighted sum cost 2 * seq * d_attn per token and block
  forward (causal: the average token attends to half the sequence), twice that backward.
  FFT: every block's backward, input and weight grads (6N per token, the usual rule). MFT: the
  weights are frozen, so weight-shaped gradients exist only for the masked modules (the scores'
  dL/dS = dL/d(W*M) * W costs as much as a weight gradient), and nothing below the lowest
  masked block needs a backward at all; the LM head still passes input grads down. Activation
  checkpointing recomputes the forward of every block that runs a backward. Elementwise work
  (norms, SiLU, the mask's top-k once per step) is left out: small against the matmuls.
- Memory on one worker: frozen weights in their dtype; MFT adds fp32 scores, their fp32
  gradients and AdamW's two fp32 moments for the masked group only (16 bytes per masked weight,
  plus a 1-byte cached mask and the step's W*M and W*sign(S) in the weights' dtype); FFT
  trains fp32 masters (weights, grads, two moments: 16 bytes
  per parameter). FSDP2 divides all of these by the trial's workers and adds the gathered
  working set (two blocks in flight, and the root's embeddings). Activations per micro-batch,
  for memory-efficient attention (SDPA/flash: no seq x seq tensor), per token and block that
  runs a backward: the two RMSNorms' fp32 inputs and outputs, q/k/v/attention output, the
  o_proj input and the MLP's four intermediates; with checkpointing only each block's input
  and one block's full set. The LM head's logits dominate at large vocabularies: bf16 logits,
  their fp32 copy and log-softmax kept, and the fp32 gradient in backward.
- Generation: 2N per token of prompt and of answer, attention over the whole context so far,
  and a KV cache of 2 * blocks * kv_dim values per token of context in the weights' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mft_search.core.architectures import layout_for, model_depth, resolve_kinds

GB = 1e9
MASK_BYTES = 1  # the cached bool mask of a masked weight
FP32 = 4


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder LM that its costs depend on."""

    model_type: str
    hidden: int
    layers: int
    vocab: int
    intermediate: int
    q_dim: int  # heads x head_dim
    kv_dim: int  # kv heads x head_dim
    tied: bool
    positions: int = 0  # learned position embeddings (GPT-2)
    biases: tuple[str, ...] = ()  # kinds whose modules carry a bias

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        """From a transformers PretrainedConfig (Llama-like or GPT-2)."""
        layout_for(config.model_type)  # an unsupported architecture fails here, naming what is
        if config.model_type == "gpt2":
            h = config.n_embd
            return cls("gpt2", h, model_depth(config), config.vocab_size, config.n_inner or 4 * h, h, h,
                       True, config.n_positions, ("q", "o", "up", "down"))
        h, heads = config.hidden_size, config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or h // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(config.model_type, h, model_depth(config), config.vocab_size, config.intermediate_size,
                   heads * head_dim, kv_heads * head_dim, bool(getattr(config, "tie_word_embeddings", False)),
                   biases=_llama_biases(config))

    def module_params(self, kind: str) -> int:
        """Weights (and bias) of one block's module of `kind`; 0 for the kinds a fused module
        already counts (GPT-2's k and v live in c_attn, counted under q)."""
        h, i = self.hidden, self.intermediate
        if self.model_type == "gpt2":
            sizes = {"q": h * 3 * h, "k": 0, "v": 0, "o": h * h, "up": h * i, "down": i * h}
            bias = {"q": 3 * h, "o": h, "up": i, "down": h}
        else:
            sizes = {"q": h * self.q_dim, "k": h * self.kv_dim, "v": h * self.kv_dim, "o": self.q_dim * h,
                     "gate": h * i, "up": h * i, "down": i * h}
            bias = {"q": self.q_dim, "k": self.kv_dim, "v": self.kv_dim, "o": h, "gate": i, "up": i, "down": h}
        return sizes.get(kind, 0) + (bias.get(kind, 0) if kind in self.biases else 0)

    def kinds(self) -> tuple[str, ...]:
        return resolve_kinds(self.model_type, None)

    def adapter_params(self, rank: int) -> int:
        """LoRA adapters of rank `rank` on every block's linear modules: rank x (in + out) each."""
        h, i = self.hidden, self.intermediate
        if self.model_type == "gpt2":
            sides = {"q": h + 3 * h, "o": 2 * h, "up": h + i, "down": i + h}
        else:
            sides = {"q": h + self.q_dim, "k": h + self.kv_dim, "v": h + self.kv_dim, "o": self.q_dim + h,
                     "gate": h + i, "up": h + i, "down": i + h}
        return self.layers * rank * sum(sides.get(kind, 0) for kind in self.kinds())

    def block_linear(self) -> int:
        return sum(self.module_params(k) for k in self.kinds())

    def block_params(self) -> int:
        norms = 4 * self.hidden if self.model_type == "gpt2" else 2 * self.hidden  # GPT-2's LayerNorms have biases
        return self.block_linear() + norms

    def head_params(self) -> int:
        """The LM head's own weights: none when tied to the input embeddings."""
        return 0 if self.tied else self.vocab * self.hidden

    def embedding_params(self) -> int:
        return (self.vocab + self.positions) * self.hidden

    def params(self) -> int:
        final_norm = 2 * self.hidden if self.model_type == "gpt2" else self.hidden
        return self.embedding_params() + self.layers * self.block_params() + final_norm + self.head_params()

    def matmul_params(self) -> int:
        """Weights every token multiplies by (not the embedding lookup): the N of 2N FLOPs."""
        return self.layers * self.block_linear() + self.vocab * self.hidden

    def masked_params(self, blocks: tuple[int, ...], kinds: tuple[str, ...] | None) -> int:
        """Scores MFT learns: one per weight of the masked modules (biases are never masked).
        GPT-2's k and v weigh 0 here: its fused c_attn, all or none of q/k/v, counts under q."""
        chosen = resolve_kinds(self.model_type, kinds)
        return len(blocks) * sum(self.module_params(k) - self._bias(k) for k in chosen)

    def _bias(self, kind: str) -> int:
        if kind not in self.biases:
            return 0
        h, i = self.hidden, self.intermediate
        if self.model_type == "gpt2":
            return {"q": 3 * h, "o": h, "up": i, "down": h}[kind]
        return {"q": self.q_dim, "k": self.kv_dim, "v": self.kv_dim, "o": h, "gate": i, "up": i, "down": h}[kind]


def _llama_biases(config: Any) -> tuple[str, ...]:
    if config.model_type == "qwen2":
        return ("q", "k", "v")  # Qwen2's attention always has q/k/v biases
    biases = ("q", "k", "v", "o") if getattr(config, "attention_bias", False) else ()
    return biases + (("gate", "up", "down") if getattr(config, "mlp_bias", False) else ())


@dataclass(frozen=True)
class TrainShape:
    """What one micro-batch of a training step looks like."""

    micro_batch: int
    seq: int
    checkpointing: bool


# ---------------------------------------------------------------- FLOPs


def attention_flops(shape: ModelShape, context: float) -> float:
    """Scores and weighted sum of one token over `context` tokens, in one block, forward."""
    return 4 * context * shape.q_dim


def forward_flops_per_token(shape: ModelShape, seq: int) -> float:
    return 2 * shape.matmul_params() + shape.layers * attention_flops(shape, seq / 2)


def train_flops_per_token(shape: ModelShape, masked_blocks: tuple[int, ...] | None, kinds: tuple[str, ...] | None,
                          checkpointing: bool, seq: int) -> float:
    """Forward + backward (+ recompute) FLOPs per trained token; `masked_blocks` None = FFT."""
    head = 2 * shape.vocab * shape.hidden
    attn = attention_flops(shape, seq / 2)
    block = 2 * shape.block_linear() + attn  # one block's forward
    if masked_blocks is None:
        backward_blocks = shape.layers
        weight_grads = 2 * shape.matmul_params()
    else:
        backward_blocks = shape.layers - min(masked_blocks)
        weight_grads = 2 * shape.masked_params(masked_blocks, kinds)
    backward = head + backward_blocks * (2 * shape.block_linear() + 2 * attn) + weight_grads
    recompute = backward_blocks * block if checkpointing else 0
    return forward_flops_per_token(shape, seq) + backward + recompute


def lora_flops_per_token(shape: ModelShape, rank: int, checkpointing: bool, seq: int) -> float:
    """LoRA's forward + backward per token: the backward runs through every block for the input
    gradients, as FFT's does, but forms no weight gradient but the adapters' (each adapter costs
    2 FLOPs per parameter forward, 4 backward)."""
    adapters = shape.adapter_params(rank)
    fft = train_flops_per_token(shape, None, None, checkpointing, seq)
    return fft - 2 * shape.matmul_params() + 6 * adapters


def generation_flops(shape: ModelShape, prompt: int, new_tokens: int) -> float:
    """One answer: the prompt's forward, then each new token over the context so far."""
    prefill = prompt * forward_flops_per_token(shape, prompt)
    contexts = prompt * new_tokens + new_tokens * (new_tokens - 1) / 2  # sum of each new token's context
    return prefill + new_tokens * 2 * shape.matmul_params() + shape.layers * attention_flops(shape, 1) * contexts


# ---------------------------------------------------------------- memory


@dataclass(frozen=True)
class Memory:
    """Bytes on one worker, by part."""

    weights: float
    trainable: float  # fp32 scores (MFT) or fp32 masters (FFT), with the cached masks
    gradients: float
    optimizer: float  # AdamW's two fp32 moments
    activations: float  # peak of one micro-batch, or the KV cache of generation
    working: float = 0.0  # FSDP2's gathered units; DDP's gradient buckets

    def total(self) -> float:
        return self.weights + self.trainable + self.gradients + self.optimizer + self.activations + self.working

    def gb(self) -> dict[str, float]:
        parts = ("weights", "trainable", "gradients", "optimizer", "activations", "working")
        return {**{p: round(getattr(self, p) / GB, 3) for p in parts}, "total": round(self.total() / GB, 3)}


def block_activation_bytes(shape: ModelShape, dtype_bytes: int) -> float:
    """Saved for backward per token in one block (memory-efficient attention)."""
    h = shape.hidden
    in_dtype = 2 * h + 3 * shape.q_dim + 2 * shape.kv_dim + 4 * shape.intermediate
    return dtype_bytes * in_dtype + 2 * FP32 * h  # the RMSNorms keep their fp32 input


def logits_bytes(shape: ModelShape, dtype_bytes: int) -> float:
    """Per token at the loss: logits, their fp32 copy, the kept log-softmax and its fp32 gradient."""
    return shape.vocab * (2 * dtype_bytes + 3 * FP32)


def activation_bytes(shape: ModelShape, backward_blocks: int, step: TrainShape, dtype_bytes: int) -> float:
    """Peak activations of one micro-batch when `backward_blocks` blocks run a backward."""
    tokens = step.micro_batch * step.seq
    per_block = block_activation_bytes(shape, dtype_bytes)
    if step.checkpointing:
        stored = backward_blocks * shape.hidden * dtype_bytes + (per_block if backward_blocks else 0)
    else:
        stored = backward_blocks * per_block
    return tokens * (stored + logits_bytes(shape, dtype_bytes))


def train_memory(shape: ModelShape, masked: int | None, backward_blocks: int, step: TrainShape, dtype_bytes: int,
                 shards: int = 1) -> Memory:
    """One worker's memory: MFT with `masked` scores, or FFT (masked None, fp32 masters);
    `shards` > 1 is FSDP2 over that many workers, 1 is DDP or a lone worker."""
    params = shape.params()
    if masked is None:
        weights, trainable, grads, moments = 0.0, params * FP32, params * FP32, 2.0 * params * FP32
        unit = shape.block_params() * dtype_bytes  # FSDP2 gathers the compute copy of a block
    else:
        # the step cache: the bool mask, W*M and W*sign(S) (core.masking), whole on every worker
        # (formed from gathered weights), counted here with the scores for simplicity
        weights, trainable = params * dtype_bytes, masked * (FP32 + MASK_BYTES + 2 * dtype_bytes)
        grads, moments = masked * FP32, 2.0 * masked * FP32
        unit = shape.block_params() * dtype_bytes + shape.block_linear() * FP32  # with its scores, at most
    if shards > 1:  # two blocks in flight (prefetch) and the root's embeddings and head
        working = 2 * unit + (shape.embedding_params() + shape.head_params()) * dtype_bytes
    else:
        working = grads  # DDP's gradient buckets (a lone worker has none: a small overestimate)
    activations = activation_bytes(shape, backward_blocks, step, dtype_bytes)
    return Memory(weights / shards, trainable / shards, grads / shards, moments / shards, activations, working)


def generation_memory(shape: ModelShape, batch: int, context: int, dtype_bytes: int) -> Memory:
    """Evaluation on one worker: the whole model (evaluations are never sharded) and the KV cache."""
    kv_cache = batch * context * 2 * shape.layers * shape.kv_dim * dtype_bytes
    logits = batch * shape.vocab * (dtype_bytes + FP32)  # the last position's, per step
    return Memory(shape.params() * dtype_bytes, 0.0, 0.0, 0.0, kv_cache + logits)


def loss_memory(shape: ModelShape, micro_batch: int, seq: int, dtype_bytes: int) -> Memory:
    """Validation loss on one worker: a forward without grad, logits of a micro-batch."""
    tokens = micro_batch * seq
    transient = tokens * (block_activation_bytes(shape, dtype_bytes) + shape.vocab * (dtype_bytes + 2 * FP32))
    return Memory(shape.params() * dtype_bytes, 0.0, 0.0, 0.0, transient)
