"""A torch Llama in the Hugging Face module layout (model.model.layers[i]
.mlp.gate_proj / up_proj / down_proj, self_attn.q_proj ..., lm_head),
loaded from a llama2.c checkpoint: what sparse_mlp.sparsify meets in a
transformers model, without importing transformers. Full-sequence causal
forward: ``model(ids [B, T]) -> logits [B, T, vocab]``."""

import math
import struct
import types

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight


class LlamaMLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rope(x, head_size):
    """llama2.c's rotary embedding over [B, heads, T, head_size]: pairs
    (2i, 2i + 1)."""
    t = x.shape[-2]
    i = torch.arange(0, head_size, 2).float()
    freq = 1.0 / torch.pow(10000.0, i / head_size)
    angle = torch.arange(t).float()[:, None] * freq[None, :]
    cos, sin = torch.cos(angle), torch.sin(angle)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


class Attention(nn.Module):
    def __init__(self, dim, heads, kv_heads):
        super().__init__()
        self.heads, self.kv_heads, self.head_size = heads, kv_heads, dim // heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_size, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_size, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_size).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_size).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_size).transpose(1, 2)
        q, k = rope(q, self.head_size), rope(k, self.head_size)
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size)
        causal = torch.ones(t, t, dtype=torch.bool).triu(1)
        att = scores.masked_fill(causal, float("-inf")).softmax(-1) @ v
        return self.o_proj(att.transpose(1, 2).reshape(b, t, -1))


class DecoderLayer(nn.Module):
    def __init__(self, dim, hidden, heads, kv_heads):
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = Attention(dim, heads, kv_heads)
        self.post_attention_layernorm = RMSNorm(dim)
        self.mlp = LlamaMLP(dim, hidden)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class Inner(nn.Module):
    def __init__(self, vocab, dim, hidden, layers, heads, kv_heads):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(DecoderLayer(dim, hidden, heads, kv_heads)
                                    for _ in range(layers))
        self.norm = RMSNorm(dim)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        c = config
        self.model = Inner(c.vocab_size, c.hidden_size, c.intermediate_size,
                           c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)

    def forward(self, ids):
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x)
        return self.lm_head(self.model.norm(x))


def from_llama2c(path, **config_extra):
    raw = np.fromfile(path, dtype=np.uint8)
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("7i", raw[:28].tobytes())
    shared = vocab > 0
    vocab = abs(vocab)
    config = types.SimpleNamespace(hidden_size=dim, intermediate_size=hidden,
                                   num_hidden_layers=layers, num_attention_heads=heads,
                                   num_key_value_heads=kv_heads, vocab_size=vocab,
                                   hidden_act="silu", **config_extra)
    model = LlamaForCausalLM(config)
    floats = torch.from_numpy(raw[28:28 + (raw.size - 28) // 4 * 4].view(np.float32).copy())
    offset = 0

    def take(*shape):
        nonlocal offset
        n = math.prod(shape)
        t = floats[offset:offset + n].view(*shape)
        offset += n
        return t

    head_size = dim // heads
    kv_dim = kv_heads * head_size
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(take(vocab, dim))
        L = model.model.layers
        for name, shape in (("input_layernorm", (dim,)), ("self_attn.q_proj", (dim, dim)),
                            ("self_attn.k_proj", (kv_dim, dim)),
                            ("self_attn.v_proj", (kv_dim, dim)),
                            ("self_attn.o_proj", (dim, dim)),
                            ("post_attention_layernorm", (dim,)),
                            ("mlp.gate_proj", (hidden, dim)), ("mlp.down_proj", (dim, hidden)),
                            ("mlp.up_proj", (hidden, dim))):
            for l in range(layers):
                module = L[l].get_submodule(name)
                module.weight.copy_(take(*shape))
        model.model.norm.weight.copy_(take(dim))
        take(seq_len * head_size // 2)
        take(seq_len * head_size // 2)
        model.lm_head.weight.copy_(model.model.embed_tokens.weight if shared else take(vocab, dim))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
