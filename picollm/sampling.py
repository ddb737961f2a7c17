"""Text generation: greedy, temperature, top-k and top-p sampling; a model's cache makes each new token cheap."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from picollm.errors import ConfigError


@dataclass
class Sampling:
    max_new_tokens: int = 40
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    use_cache: bool = True


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Mask to -inf everything outside the top-k and outside the smallest set with mass >= top_p."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def pick_next(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids (B, 1) from last-position logits (B, V)."""
    if s.greedy or s.temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    probs = filter_logits(logits.float() / s.temperature, s.top_k, s.top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate(
    model: nn.Module, prompt_ids: list[int], s: Sampling, generator: torch.Generator | None = None
) -> list[int]:
    """Continue ``prompt_ids`` by ``s.max_new_tokens`` tokens; returns only the new ids."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    block = model.block_size
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    out: list[int] = []
    cache = model.new_cache() if s.use_cache else None
    feed = ids[:, -block:]
    for _ in range(s.max_new_tokens):
        if cache is not None and cache.get("pos", 0) + feed.shape[1] > block:
            cache = model.new_cache()  # a position-limited cache is full: restart from half a block
            feed = ids[:, -(block // 2 or 1) :]
        hidden = model(feed if cache is not None else ids[:, -block:], cache)
        nxt = pick_next(model.head(hidden[:, -1]), s, generator)
        ids = torch.cat([ids, nxt], dim=1)
        out.append(int(nxt))
        feed = nxt
    model.train(was_training)
    return out


def generate_text(model: nn.Module, tokenizer, prompt: str, s: Sampling, seed: int = 0) -> str:
    """Prompt in, continuation out; a fixed-seed generator leaves the training RNG untouched."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    prompt_ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
    return tokenizer.decode(generate(model, prompt_ids, s, generator))


def check_sampling(s: Sampling) -> None:
    """Refuse settings that cannot sample anything (``--top-k 0`` keeps no token) with one line."""
    checks = (
        (s.max_new_tokens >= 1, f"max_new_tokens (--max-new-tokens) must be >= 1, got {s.max_new_tokens}"),
        (s.top_k is None or s.top_k >= 1, f"top_k (--top-k) must be >= 1 (leave it out for no limit), got {s.top_k}"),
        (s.top_p is None or 0 < s.top_p <= 1, f"top_p (--top-p) must be in (0, 1], got {s.top_p}"),
    )
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
