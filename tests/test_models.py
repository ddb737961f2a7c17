"""Models: the fused loss equals plain cross-entropy; cached generation equals recomputation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from picollm.models import MODELS, build_model, context_size
from picollm.models.config import ModelConfig
from picollm.models.loss import linear_cross_entropy
from picollm.sampling import Sampling, filter_logits, generate

SMALL = {"block_size": 16, "embed_size": 32, "hidden_size": 32, "n_heads": 4, "num_layers": 2, "k": 3}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 10_000])
def test_chunked_loss_and_gradients_match_cross_entropy(bias: bool, chunk_rows: int) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(3, 21, 16, requires_grad=True)
    head = torch.nn.Linear(16, 300, bias=bias)
    targets = torch.randint(0, 300, (3, 21))
    ours = linear_cross_entropy(hidden, head, targets, chunk_rows)
    ours.backward()
    mine = [hidden.grad.clone(), head.weight.grad.clone()] + ([head.bias.grad.clone()] if bias else [])
    hidden.grad = None
    head.zero_grad()
    ref = F.cross_entropy(head(hidden).flatten(0, 1), targets.flatten())
    ref.backward()
    theirs = [hidden.grad, head.weight.grad] + ([head.bias.grad] if bias else [])
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("model_type", sorted(MODELS))
@pytest.mark.parametrize("k", [1, 4])
def test_the_context_size_from_the_config_is_what_the_model_reads(model_type: str, k: int) -> None:
    cfg = ModelConfig(**{**SMALL, "type": model_type, "k": k})
    assert context_size(cfg) == (k - 1 if model_type == "kgram" else None)
    if context_size(cfg) is None:
        return
    torch.manual_seed(0)
    model, last = build_model(cfg, 50).eval(), SMALL["block_size"] - 1
    x = torch.randint(0, 50, (1, SMALL["block_size"]))

    def changed(position: int) -> bool:  # does the last prediction move when one earlier token changes?
        y = x.clone()
        y[0, position] = (y[0, position] + 1) % 50
        return not torch.allclose(model(x)[0, last], model(y)[0, last])

    assert changed(last - context_size(cfg)) and not changed(last - context_size(cfg) - 1)


def test_chunked_loss_with_tied_weights_matches() -> None:
    torch.manual_seed(0)
    model = build_model({"type": "transformer", **SMALL}, 120)
    x, y = torch.randint(0, 120, (2, 16)), torch.randint(0, 120, (2, 16))
    linear_cross_entropy(model(x), model.head, y, 5).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    F.cross_entropy(model.head(model(x)).flatten(0, 1), y.flatten()).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(ours[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


CACHED_MODELS = [("kgram", "learned"), ("lstm", "learned"), ("transformer", "learned"), ("transformer", "rotary")]


@pytest.mark.parametrize(("model_type", "positions"), CACHED_MODELS)
def test_cached_steps_give_the_hidden_states_of_one_full_pass(model_type: str, positions: str) -> None:
    """Feeding a prompt, then one token at a time through the cache, equals one pass over the whole sequence."""
    torch.manual_seed(0)
    model = build_model({"type": model_type, **SMALL, "positions": positions}, 50).eval()
    ids = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        steps = [model(ids[:, :5], cache)] + [model(ids[:, t : t + 1], cache) for t in range(5, 16)]
        alone = model(ids[:, 10:11])  # the same token with no cache: what a broken cache would give
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alone[:, 0], full[:, 10], atol=1e-3)  # so the comparison above can fail


@pytest.mark.parametrize(("model_type", "positions"), CACHED_MODELS)
def test_cached_generation_equals_recomputation(model_type: str, positions: str) -> None:
    torch.manual_seed(0)
    model = build_model({"type": model_type, **SMALL, "positions": positions}, 50)
    prompt = torch.randint(0, 50, (5,)).tolist()
    sampled = Sampling(max_new_tokens=11, temperature=1.0)  # 16 tokens: one block, the same context both ways
    with_cache = generate(model, prompt, sampled, torch.Generator().manual_seed(1))
    no_cache = Sampling(max_new_tokens=11, temperature=1.0, use_cache=False)
    without = generate(model, prompt, no_cache, torch.Generator().manual_seed(1))
    assert with_cache == without
    assert len(set(with_cache)) >= 4  # a varied sequence, not a constant one that matches by luck


def test_kgram_sees_only_its_k_previous_tokens() -> None:
    torch.manual_seed(0)
    model = build_model({"type": "kgram", **SMALL}, 50).eval()
    a = torch.randint(0, 50, (1, 10))
    b = a.clone()
    b[0, :6] = (b[0, :6] + 1) % 50  # change everything more than k=3 tokens before the last position
    assert torch.equal(model(a)[0, -1], model(b)[0, -1])
    assert not torch.equal(model(a)[0, 5], model(b)[0, 5])


def test_transformer_is_causal() -> None:
    torch.manual_seed(0)
    model = build_model({"type": "transformer", **SMALL}, 50).eval()
    a = torch.randint(0, 50, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 50
    torch.testing.assert_close(model(a)[0, :8], model(b)[0, :8])


def test_top_k_and_top_p_filters() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 2, None)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, None, 0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, None, 0.85)).tolist() == [[False, False, False, True]]
