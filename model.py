"""
One decoder-only transformer for two checkpoint families, written from scratch:
- GPT-2: learned positions, LayerNorm, tanh-GELU MLP, biases everywhere, tied lm_head.
- Llama (also Mistral without sliding window, Qwen2, Qwen3): RMSNorm, rotate-half RoPE (optionally Llama 3.1 scaled),
  SwiGLU MLP, grouped-query attention, optional q/k/v bias (Qwen2), optional per-head q/k RMSNorm (Qwen3), tied or
  untied lm_head.
Plus KV-cached batched generation. Loading checkpoints and exporting them is checkpoints.py's.
"""
import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cpu import Linear, packed_weights


@dataclass
class Config:
    arch: str = "llama"  # "gpt2" or "llama"
    vocab_size: int = 49152
    n_layer: int = 30
    n_head: int = 9
    n_kv_head: int = 3
    n_embd: int = 576
    head_dim: int = 0  # 0 means n_embd // n_head
    intermediate_size: int = 1536
    block_size: int = 8192
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_embeddings: bool = True
    qkv_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over each head's q and k, before RoPE
    bos_id: int | None = None
    eos_id: int | None = None

    def __post_init__(self):
        if self.arch not in ("gpt2", "llama"):
            raise ValueError(f"unknown arch {self.arch!r}: use 'gpt2' or 'llama'")
        self.head_dim = self.head_dim or self.n_embd // self.n_head


# -----------------------------------------------------------------------------
# The model

def rope_frequencies(cfg):
    """Inverse frequencies of rotate-half RoPE, with Llama 3.1's long-context rescaling when configured."""
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim)
    s = cfg.rope_scaling
    if not s:
        return inv_freq
    # Llama 3.1/3.2: keep high frequencies, divide low ones by `factor`, interpolate smoothly in between.
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
    scaled = ((1 - smooth) / s["factor"] + smooth) * inv_freq
    scaled = torch.where(wavelen > old_len / s["low_freq_factor"], inv_freq / s["factor"], scaled)
    return torch.where(wavelen < old_len / s["high_freq_factor"], inv_freq, scaled)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class KVCache:
    """Preallocated keys/values of one layer. Each call writes at cache slots `slots` (the same for every row), and
    attention reads as many slots as the mask covers, the mask hiding padding and slots not yet written. A compiled
    decode step passes a mask over the whole cache, so that its shapes never change and it can be replayed as a
    CUDA graph."""

    def __init__(self, batch, n_kv_head, length, head_dim, device, dtype):
        self.k = torch.zeros(batch, n_kv_head, length, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)

    def update(self, slots, k, v):
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)
        return self.k, self.v

    def view(self, rows):
        """This cache restricted to the batch rows of the slice `rows`: a view, so that writes reach this cache."""
        part = copy.copy(self)
        part.k, part.v = self.k[rows], self.v[rows]
        return part

    def move(self, src, dst):
        """Copy batch rows `src` over rows `dst` (index lists)."""
        self.k[dst], self.v[dst] = self.k[src], self.v[src]


FOLD_MAX_T = 512  # the longest sequence whose attention folds query heads on the CPU (Attention.forward)
PREFILL_CHUNK, PREFILL_ROWS = 256, 8  # prompt tokens and batch rows per prefill pass in generate()


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.qkv = Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim,
                          bias=cfg.qkv_bias or cfg.arch == "gpt2")
        self.proj = Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=cfg.arch == "gpt2")
        if cfg.qk_norm:
            self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
            self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps)

    def forward(self, x, rope, mask, cache):
        cfg, (B, T, _) = self.cfg, x.shape
        q, k, v = self.qkv(x).split([cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim,
                                     cfg.n_kv_head * cfg.head_dim], dim=-1)
        q = q.view(B, T, cfg.n_head, cfg.head_dim).transpose(1, 2)
        k = k.view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
        v = v.view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            kv, slots = cache
            k, v = kv.update(slots, k, v)
            # only the slots the mask covers: none after a prefill chunk, none not yet written while decoding
            k, v = k[:, :, :mask.shape[-1]], v[:, :, :mask.shape[-1]]
        group = cfg.n_head // cfg.n_kv_head
        if group > 1 and (cache is not None and T == 1 or x.device.type == "cpu" and T <= FOLD_MAX_T):
            # The query heads that share a kv head become the rows of one query block (the same keys; each head's
            # rows under the same mask). The CPU kernels run that faster than GQA's one block per query head:
            # decoding 1.2x in fp32 and 4-6x in bf16, a training step's attention up to 1.5x in bf16 (README).
            # Beyond FOLD_MAX_T tokens an explicit mask costs more than the causal kernel's skipped blocks save.
            if mask is None:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, None]
            rows = q.reshape(B, cfg.n_kv_head, group * T, cfg.head_dim)
            y = F.scaled_dot_product_attention(rows, k, v, attn_mask=mask.repeat(1, 1, group, 1))
            y = y.view(B, cfg.n_head, T, cfg.head_dim)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                               enable_gqa=cfg.n_kv_head != cfg.n_head)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gpt2 = cfg.arch == "gpt2"
        # SwiGLU's gate and up projections are fused into one matmul: fc outputs [gate | up].
        self.fc = Linear(cfg.n_embd, cfg.intermediate_size * (1 if self.gpt2 else 2), bias=self.gpt2)
        self.proj = Linear(cfg.intermediate_size, cfg.n_embd, bias=self.gpt2)

    def forward(self, x):
        if self.gpt2:
            return self.proj(F.gelu(self.fc(x), approximate="tanh"))
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


def make_norm(cfg):
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps) if cfg.arch == "gpt2" else nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm1, self.attn = make_norm(cfg), Attention(cfg)
        self.norm2, self.mlp = make_norm(cfg), MLP(cfg)

    def forward(self, x, rope, mask, cache):
        x = x + self.attn(self.norm1(x), rope, mask, cache)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.arch == "gpt2" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = make_norm(cfg)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if cfg.arch == "llama":
            freqs = torch.outer(torch.arange(cfg.block_size, dtype=torch.float64), rope_frequencies(cfg))
            freqs = torch.cat((freqs, freqs), dim=-1)
            self.register_buffer("rope_cos", freqs.cos().float(), persistent=False)
            self.register_buffer("rope_sin", freqs.sin().float(), persistent=False)
        self.caches = None  # setup_caches() keeps fixed-size KV caches here for generate()
        self.compiled_step = None  # and, on CUDA, the decode step compiled for them
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        # Only used for models built from scratch (tests); checkpoints overwrite every parameter.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, pos=None, mask=None, caches=None, slots=None, return_hidden=False):
        """idx (B, T) -> logits (B, T, vocab), or the final-normed hidden states with return_hidden.
        pos (B, T), a boolean attention mask (B, 1, T, cache length), caches and the cache slots (T,) to write are only
        needed for generation; without them attention is causal over positions 0..T-1 (right padding needs nothing more)."""
        T = idx.shape[1]
        if pos is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
            pos = torch.arange(T, device=idx.device)
        x = self.tok_emb(idx)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(pos)
        else:
            rope = (self.rope_cos[pos].unsqueeze(-3).to(x.dtype), self.rope_sin[pos].unsqueeze(-3).to(x.dtype))
        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, None if caches is None else (caches[i], slots))
        x = self.norm(x)
        return x if return_hidden else self.lm_head(x)

    def setup_caches(self, batch, length):
        """Keep KV caches for up to `batch` rows of `length` tokens and use them in every generate() call that fits
        (gpt-fast's setup_caches). On CUDA, fixed shapes at fixed addresses let the decode step be compiled once and
        replayed as one recorded CUDA graph; smaller batches are padded to `batch` rows. Elsewhere they only save
        allocating caches per call."""
        dev, dtype = self.tok_emb.weight.device, self.tok_emb.weight.dtype
        cfg = self.config
        self.caches = [KVCache(batch, cfg.n_kv_head, length, cfg.head_dim, dev, dtype) for _ in range(cfg.n_layer)]
        self.compiled_step = None
        if dev.type == "cuda":  # one token per row is launch-bound: replay the whole step as a CUDA graph
            for c in self.caches:  # the graph writes in place at these addresses, as into parameters
                torch._dynamo.mark_static_address(c.k), torch._dynamo.mark_static_address(c.v)
            self.compiled_step = torch.compile(self.decode_step, mode="reduce-overhead", fullgraph=True)

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, eos_id=None, stop=None, seed=None):
        """Batched generation with a KV cache. Prompts are left-padded; each row keeps its own positions and
        ignores its padding. Returns the new tokens of each row, without EOS. `stop(new_tokens)` ends a row, and an
        ended row leaves the batch (except under a compiled step's fixed shapes). Uses the caches of setup_caches()
        when they fit, else allocates caches of exactly this size."""
        cfg, weight = self.config, self.tok_emb.weight
        device, n, P = weight.device, len(prompts), max(len(p) for p in prompts)
        L = P + max_new_tokens
        if min(len(p) for p in prompts) == 0 or L > cfg.block_size:
            raise ValueError(f"prompts must be non-empty and prompt + new tokens ({L}) fit block_size {cfg.block_size}")
        kept = self.caches
        if kept and (kept[0].k.dtype, kept[0].k.device) != (weight.dtype, weight.device):
            raise ValueError(f"the kept KV caches are {kept[0].k.dtype} on {kept[0].k.device}, the model "
                             f"{weight.dtype} on {weight.device}: call setup_caches again after moving or casting it")
        if kept and n <= kept[0].k.shape[0] and L <= kept[0].k.shape[2]:
            caches, step = kept, self.compiled_step or self.decode_step
            B, L = kept[0].k.shape[0], kept[0].k.shape[2]
            prompts = list(prompts) + [[0]] * (B - n)  # filler rows of one token keep the shapes; never returned
        else:
            B, step = n, self.decode_step
            caches = [KVCache(B, cfg.n_kv_head, L, cfg.head_dim, device, weight.dtype) for _ in range(cfg.n_layer)]
        fixed = step is self.compiled_step  # a compiled step replays one set of shapes: the whole cache, all B rows
        idx = torch.zeros(B, P, dtype=torch.long, device=device)
        real = torch.zeros(B, L, dtype=torch.bool, device=device)  # which cache slots hold real tokens
        for i, p in enumerate(prompts):
            idx[i, P - len(p):] = torch.tensor(p, device=device)
            real[i, P - len(p):P] = True
        pos = (real[:, :P].cumsum(1) - 1).clamp(min=0)
        gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        with packed_weights(self, B):  # decoding's few rows: weights in oneDNN's layout on an x86 CPU (cpu.py)
            logits = self.prefill(idx, pos, real[:, :P], caches)
            out, done = [[] for _ in range(n)], [False] * n
            live = list(range(B))  # the prompt of each batch row still decoding (filler rows are >= n)
            for t in range(max_new_tokens):
                nxt = sample(logits.float(), temperature, top_p, gen)
                for i, tok in zip(live, nxt.tolist()):
                    if i >= n or done[i]:
                        continue
                    if tok == eos_id:
                        done[i] = True
                        continue
                    out[i].append(tok)
                    done[i] = stop is not None and stop(out[i])
                if all(done) or t == max_new_tokens - 1:
                    break
                if not fixed and any(i >= n or done[i] for i in live):
                    # Finished rows leave the batch: a decode step reads every row's cache, which at a few-shot
                    # prompt's length costs as much as reading the weights. The rows still decoding become the
                    # first m, and only those beyond m are copied, into the places of rows that left.
                    stay = [r for r, i in enumerate(live) if i < n and not done[i]]
                    m = len(stay)
                    order, holes = list(range(m)), [r for r in range(m) if r not in stay]
                    movers = [r for r in stay if r >= m]
                    for hole, r in zip(holes, movers):
                        order[hole] = r
                    for c in caches:
                        c.move(movers, holes)
                    caches, live = [c.view(slice(0, m)) for c in caches], [live[r] for r in order]
                    order = torch.tensor(order, device=device)
                    nxt, pos, real = nxt[order], pos[order], real[order]
                real[:, P + t] = True
                pos = pos[:, -1:] + 1
                seen = real[:, None, None, :] if fixed else real[:, None, None, :P + t + 1]  # the slots written so far
                logits = step(nxt[:, None], pos, torch.tensor([P + t], device=device), seen, caches)
        return out

    def prefill(self, idx, pos, real, caches):
        """The left-padded prompts idx (B, P), real (B, P) marking their tokens, into the caches -> each row's
        next-token logits (B, vocab). Rows go in groups of PREFILL_ROWS, each from its own longest prompt on (the
        slots before stay unwritten and masked), and in chunks of PREFILL_CHUNK tokens, each attending to the slots
        up to its own end only: under the padding mask the attention kernels would compute the whole P x P square,
        masked upper half and all."""
        B, P = idx.shape
        # Query i sees real keys 0..i; padding slots attend to themselves so they stay finite (0 · NaN would poison
        # the real rows).
        mask = (torch.ones(P, P, dtype=torch.bool, device=idx.device).tril() & real[:, None, None, :]) | \
            torch.eye(P, dtype=torch.bool, device=idx.device)
        last = []
        for first in range(0, B, PREFILL_ROWS):
            rows = slice(first, first + PREFILL_ROWS)
            group = [c.view(rows) for c in caches]
            for s in range(P - int(real[rows].sum(1).max()), P, PREFILL_CHUNK):
                e = min(s + PREFILL_CHUNK, P)
                hidden = self(idx[rows, s:e], pos[rows, s:e], mask[rows, :, s:e, :e], group,
                              torch.arange(s, e, device=idx.device), return_hidden=True)
            last.append(hidden[:, -1])
        # the vocabulary head only where the next token is read: the whole prompt's logits would cost P times more
        return self.lm_head(torch.cat(last))

    def decode_step(self, idx, pos, slots, mask, caches):
        """One new token per row (B, 1) at cache slot `slots` (1,) -> next-token logits (B, vocab). Fixed shapes."""
        return self(idx, pos, mask, caches, slots)[:, -1]


def sample(logits, temperature, top_p, generator):
    """Greedy at temperature 0, else temperature sampling restricted to the top-p nucleus."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = F.softmax(logits / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # tokens after the nucleus is already full
    sorted_probs[outside] = 0.0
    choice = torch.multinomial(sorted_probs, 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)
