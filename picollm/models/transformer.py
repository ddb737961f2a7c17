"""GPT-style decoder: pre-norm RMSNorm blocks, causal SDPA attention, an MLP, learned or rotary positions.

A KV cache makes generation cost one token's work per new token.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from picollm.models.config import ModelConfig


def rotary_tables(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (T, head_dim/2) for the given absolute positions."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels of x (B, H, T, D) by position-dependent angles."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.embed_size, 3 * cfg.embed_size, bias=False)
        self.proj = nn.Linear(cfg.embed_size, cfg.embed_size, bias=False)
        self.dropout = cfg.dropout

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        layer_cache: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        past = 0
        if layer_cache is not None:
            if "k" in layer_cache:
                past = layer_cache["k"].shape[2]
                k = torch.cat([layer_cache["k"], k], dim=2)
                v = torch.cat([layer_cache["v"], v], dim=2)
            layer_cache["k"], layer_cache["v"] = k, v
        if past == 0:
            mask, causal = None, True
        elif T == 1:
            mask, causal = None, False  # one new query sees every cached key
        else:  # several new queries after a prefix: causal within the new part
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            causal = False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.embed_size)
        self.attn = Attention(cfg)
        self.norm2 = nn.RMSNorm(cfg.embed_size)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.embed_size, cfg.mlp_ratio * cfg.embed_size, bias=False),
            nn.GELU(approximate="tanh"),
            nn.Linear(cfg.mlp_ratio * cfg.embed_size, cfg.embed_size, bias=False),
            nn.Dropout(cfg.dropout),
        )

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        layer_cache: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, layer_cache)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    @staticmethod
    def context_of(cfg: ModelConfig) -> None:
        """None: a prediction uses the whole window it is given."""
        return None

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.block_size = cfg.block_size
        self.context_size = self.context_of(cfg)
        self.embed = nn.Embedding(vocab_size, cfg.embed_size)
        self.pos_embed = nn.Embedding(cfg.block_size, cfg.embed_size) if cfg.positions == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.RMSNorm(cfg.embed_size)
        self.head = nn.Linear(cfg.embed_size, vocab_size, bias=False)
        if cfg.tie_weights:
            self.head.weight = self.embed.weight
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2: scale residual projections by depth
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg.num_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def new_cache(self) -> dict[str, Any]:
        return {"pos": 0, "layers": [{} for _ in self.blocks]}

    def forward(self, idx: torch.Tensor, cache: dict[str, Any] | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, T, C); a cache continues from the positions it holds."""
        start = cache["pos"] if cache is not None else 0
        T = idx.shape[1]
        if self.pos_embed is not None and start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.cfg.block_size}")
        positions = torch.arange(start, start + T, device=idx.device)
        x = self.embed(idx)
        rope = None
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        else:
            rope = rotary_tables(positions, self.cfg.embed_size // self.cfg.n_heads)
        x = self.drop(x)
        layer_caches = cache["layers"] if cache is not None else [None] * len(self.blocks)
        for block, layer_cache in zip(self.blocks, layer_caches, strict=True):
            x = block(x, rope, layer_cache)
        if cache is not None:
            cache["pos"] = start + T
        return self.norm(x)
