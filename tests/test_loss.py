"""The fused head + loss under bf16 autocast, run on the CPU so the GPU path's dtype logic is exercised.

Under autocast the head's matmuls must take bf16 inputs and accumulate and return float32: the result then
equals float32 cross-entropy computed on the bf16-rounded inputs (tight tolerance), and plain float32
cross-entropy within bf16's tolerance. A path that silently stayed in float32, or rounded the logits to
bf16, fails one of the two.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from picollm.models.loss import compute_dtype, linear_cross_entropy, mm_f32, token_losses

BF16 = torch.bfloat16


def _case(bias: bool, hidden_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    hidden = (3 * torch.randn(4, 19, 32)).to(hidden_dtype).requires_grad_(True)
    head = torch.nn.Linear(32, 500, bias=bias)
    targets = torch.randint(0, 500, (4, 19))
    return hidden, head, targets


def _reference(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, round_to_bf16: bool) -> list:
    """float32 F.cross_entropy and its gradients; optionally on bf16-rounded hidden states and weight."""
    h = hidden.detach().float().requires_grad_(True)
    w = head.weight.detach().clone().requires_grad_(True)
    b = None if head.bias is None else head.bias.detach().clone().requires_grad_(True)
    h_in, w_in = (h.to(BF16).float(), w.to(BF16).float()) if round_to_bf16 else (h, w)
    loss = F.cross_entropy(F.linear(h_in, w_in, b).flatten(0, 1), targets.flatten())
    loss.backward()
    return [loss.detach(), h.grad, w.grad] + ([] if b is None else [b.grad])


def _ours_under_autocast(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, chunk: int) -> list:
    with torch.autocast("cpu", dtype=BF16):
        loss = linear_cross_entropy(hidden, head, targets, chunk)
    loss.backward()
    return [loss.detach(), hidden.grad, head.weight.grad] + ([] if head.bias is None else [head.bias.grad])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk_rows", [5, 1000])
def test_bf16_autocast_matches_float32_math_on_bf16_inputs(bias: bool, chunk_rows: int) -> None:
    hidden, head, targets = _case(bias)
    ours = _ours_under_autocast(hidden, head, targets, chunk_rows)
    exact = _reference(hidden, head, targets, round_to_bf16=True)
    plain = _reference(hidden, head, targets, round_to_bf16=False)
    assert ours[0].dtype == torch.float32  # the loss itself never passes through bf16
    assert ours[0].item() == pytest.approx(exact[0].item(), rel=1e-5)
    assert ours[0].item() == pytest.approx(plain[0].item(), rel=2e-2)  # bf16 inputs: ~3 significant digits
    assert ours[0].item() != pytest.approx(plain[0].item(), rel=1e-6)  # ...so autocast did take effect
    # the weight gradient is accumulated in float32 from bf16 products: close to float32 math on bf16 inputs
    torch.testing.assert_close(ours[2], exact[2], rtol=2e-2, atol=2e-4)
    torch.testing.assert_close(ours[2], plain[2], rtol=5e-2, atol=1e-3)
    torch.testing.assert_close(ours[1], plain[1], rtol=5e-2, atol=1e-3)  # rounded to bf16 once, at the end
    if bias:
        torch.testing.assert_close(ours[3], exact[3], rtol=1e-5, atol=1e-6)  # float32 softmax, no bf16


def test_gradients_come_back_in_each_inputs_dtype() -> None:
    """bf16 activations (what autocast's Linear layers produce) get a bf16 gradient; the weight keeps float32."""
    hidden, head, targets = _case(bias=True, hidden_dtype=BF16)
    ours = _ours_under_autocast(hidden, head, targets, 7)
    assert ours[1].dtype == BF16 and ours[2].dtype == torch.float32 and ours[3].dtype == torch.float32
    exact = _reference(hidden, head, targets, round_to_bf16=True)
    assert ours[0].item() == pytest.approx(exact[0].item(), rel=1e-5)


def test_evaluation_under_autocast_needs_no_gradient() -> None:
    hidden, head, targets = _case(bias=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        loss = linear_cross_entropy(hidden, head, targets)
    assert loss.dtype == torch.float32 and not loss.requires_grad
    assert loss.item() == pytest.approx(_reference(hidden, head, targets, round_to_bf16=True)[0].item(), rel=1e-5)


def test_per_token_losses_under_autocast_are_float32_math_on_bf16_inputs() -> None:
    hidden, head, targets = _case(bias=True)
    with torch.autocast("cpu", dtype=BF16):
        ours = token_losses(hidden, head, targets, chunk_rows=9)
    h, w = hidden.detach().to(BF16).float(), head.weight.detach().to(BF16).float()
    exact = F.cross_entropy(F.linear(h, w, head.bias.detach()).flatten(0, 1), targets.flatten(), reduction="none")
    assert ours.dtype == torch.float32 and ours.shape == (4 * 19,)
    torch.testing.assert_close(ours, exact, rtol=1e-5, atol=1e-5)


def test_compute_dtype_follows_autocast() -> None:
    x = torch.zeros(2, 2)
    assert compute_dtype(x) == torch.float32
    with torch.autocast("cpu", dtype=BF16):
        assert compute_dtype(x) == BF16
    with torch.autocast("cpu", enabled=False):
        assert compute_dtype(x.to(torch.float64)) == torch.float64


def test_mm_f32_accumulates_in_float32() -> None:
    """100 products of 1 + 2**-7 sum to 100.78125: exact in float32, not representable in bf16 (step 0.5)."""
    a = torch.full((1, 100), 1 + 2**-7, dtype=BF16)
    b = torch.ones(100, 1, dtype=BF16)
    out = mm_f32(a, b)
    assert out.dtype == torch.float32 and out.item() == 100.78125
    assert (a @ b).item() != 100.78125  # what a bf16 result loses
