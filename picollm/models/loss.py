"""Next-token loss without the full logits tensor, in the precision autocast asks for.

The vocabulary head dominates a small LM's step, so head and cross-entropy run together over chunks of rows, forming the
gradients in the same pass. Under autocast the matmuls accumulate and return float32, so nothing after them passes
through bf16; off CUDA the bf16 inputs are widened first (the same sums), so CPU tests check it (docs/performance.md).
"""

from __future__ import annotations

import torch
from torch import nn

# Logits per chunk: 2**25 floats (128 MB). Smaller chunks are slower: each re-reads the whole head weight.
_CHUNK_ELEMENTS = 1 << 25


def default_chunk_rows(vocab_size: int) -> int:
    return max(256, _CHUNK_ELEMENTS // vocab_size)


def allow_tf32() -> None:
    """Let float32 matmuls on CUDA use TF32 tensor cores (PyTorch's recommendation for training)."""
    torch.set_float32_matmul_precision("high")


def compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype the head's matmuls take their inputs in: autocast's when it is on, else ``hidden``'s."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


def mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` accumulated in float32 and returned as float32, whatever the (equal) input dtype."""
    if a.dtype == torch.float32:
        return a @ b
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
    return a.float() @ b.float()  # exact products, float32 sums: what the CUDA kernel computes


def _mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out = a @ b`` with float32 accumulation; all-float32 writes in place (no temporary)."""
    if a.dtype == out.dtype == torch.float32:
        torch.mm(a, b, out=out)
    else:
        out.copy_(mm_f32(a, b))


def _addmm_f32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` for a float32 ``acc``; off CUDA in place (a temporary of acc's size costs a pass)."""
    if a.is_cuda and a.dtype != torch.float32:
        acc += mm_f32(a, b)
    else:
        acc.addmm_(a.float(), b.float())  # .float() is free for float32 inputs


def _chunk_nll(
    h: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor | None, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row loss of one chunk, its exponentiated shifted logits and their row sums (for the gradients), float32."""
    logits = mm_f32(h, w_t)
    if bias is not None:
        logits += bias.float()
    target_logit = logits.gather(1, t[:, None]).squeeze(1)
    row_max = logits.amax(dim=1, keepdim=True)
    exps = logits.sub_(row_max).exp_()  # one exp pass, in place of the logits
    row_sum = exps.sum(dim=1, keepdim=True)
    return (row_sum.log() + row_max).squeeze(1) - target_logit, exps, row_sum


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows, with_grad, dtype):  # type: ignore[override]
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes below are chosen, not cast
            return _forward(ctx, hidden, weight, bias, targets, chunk_rows, with_grad, dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_out / ctx.n_rows
        return (
            grad_hidden * scale.to(grad_hidden.dtype),
            grad_weight * scale.to(grad_weight.dtype),
            None if grad_bias is None else grad_bias * scale.to(grad_bias.dtype),
            None,
            None,
            None,
            None,
        )


def _forward(ctx, hidden, weight, bias, targets, chunk_rows, with_grad, dtype):  # type: ignore[no-untyped-def]
    """Loss sum over chunks of rows; with ``with_grad`` also the gradients, saved for ``backward``."""
    n_rows = hidden.shape[0]
    w = weight.to(dtype)
    w_t = w.t()
    loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
    if with_grad:
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_bias = None if bias is None else torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
    for start in range(0, n_rows, chunk_rows):
        h = hidden[start : start + chunk_rows].to(dtype)
        t = targets[start : start + chunk_rows]
        row_loss, exps, row_sum = _chunk_nll(h, w_t, bias, t)
        loss_sum += row_loss.sum()
        if with_grad:
            probs = exps.div_(row_sum)  # softmax
            probs[torch.arange(len(t), device=t.device), t] -= 1.0
            if grad_bias is not None:
                grad_bias += probs.sum(0)
            g = probs.to(dtype)
            _mm_into(grad_hidden[start : start + chunk_rows], g, w)
            _addmm_f32(grad_weight, g.t(), h)
    if with_grad:
        ctx.save_for_backward(
            grad_hidden, grad_weight.to(weight.dtype), grad_bias.to(bias.dtype) if grad_bias is not None else None
        )
    ctx.n_rows = n_rows
    return loss_sum / n_rows


@torch.no_grad()
def token_losses(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, chunk_rows: int | None = None
) -> torch.Tensor:
    """The float32 loss of each row of ``head(hidden)``, without gradient: a standard error needs per-token losses."""
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    rows = chunk_rows or default_chunk_rows(head.weight.shape[0])
    dtype = compute_dtype(h)
    with torch.autocast(h.device.type, enabled=False):
        w_t = head.weight.to(dtype).t()
        parts = [
            _chunk_nll(h[i : i + rows].to(dtype), w_t, head.bias, t[i : i + rows])[0] for i in range(0, len(t), rows)
        ]
    return torch.cat(parts) if parts else torch.zeros(0, device=h.device)


def linear_cross_entropy(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, chunk_rows: int | None = None
) -> torch.Tensor:
    """Mean float32 cross-entropy of ``head(hidden)`` against ``targets``, chunk by chunk."""
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    rows = chunk_rows or default_chunk_rows(head.weight.shape[0])
    with_grad = torch.is_grad_enabled() and (h.requires_grad or head.weight.requires_grad)
    return _LinearCrossEntropy.apply(h, head.weight, head.bias, t, rows, with_grad, compute_dtype(h))
