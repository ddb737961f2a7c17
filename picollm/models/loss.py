"""Next-token loss without the full logits tensor.

The output projection to a 50257-token vocabulary dominates a small LM's step: its logits for
a 16x128 batch are a 412 MB float32 tensor that is written, read by log-softmax, written again
for the gradient and read back. Here the head and the cross-entropy run together over chunks of
rows, and the gradients are formed in the same pass (the loss is a scalar, so d loss / d logits
is known as soon as the chunk's softmax is): memory holds one chunk's logits, and the result
equals ``F.cross_entropy(hidden @ W.T + b, targets)`` up to float rounding (tested).
"""

from __future__ import annotations

import torch
from torch import nn

# Logits per chunk: 2**25 floats (128 MB, ~670 rows at vocab 50257). Measured on a 2-core CPU, smaller
# chunks are slower: every chunk re-reads the whole head weight (25 MB at 50257 x 128) for three matmuls.
_CHUNK_ELEMENTS = 1 << 25


def default_chunk_rows(vocab_size: int) -> int:
    return max(256, _CHUNK_ELEMENTS // vocab_size)


def _chunk_nll(
    h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row loss of one chunk, plus its exponentiated shifted logits and their row sums (for gradients)."""
    logits = (h @ w.t()).float()
    if bias is not None:
        logits += bias.float()
    target_logit = logits.gather(1, t[:, None]).squeeze(1)
    row_max = logits.amax(dim=1, keepdim=True)
    exps = logits.sub_(row_max).exp_()  # one exp pass, in place of the logits
    row_sum = exps.sum(dim=1, keepdim=True)
    return (row_sum.log() + row_max).squeeze(1) - target_logit, exps, row_sum


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows, with_grad):  # type: ignore[override]
        n_rows = hidden.shape[0]
        w = weight.to(hidden.dtype)
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        if with_grad:
            grad_hidden = torch.empty_like(hidden)
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            grad_bias = None if bias is None else torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        for start in range(0, n_rows, chunk_rows):
            h = hidden[start : start + chunk_rows]
            t = targets[start : start + chunk_rows]
            row_loss, exps, row_sum = _chunk_nll(h, w, bias, t)
            loss_sum += row_loss.sum()
            if with_grad:
                probs = exps.div_(row_sum)  # softmax
                probs[torch.arange(len(t), device=t.device), t] -= 1.0
                g = probs.to(hidden.dtype)
                torch.matmul(g, w, out=grad_hidden[start : start + chunk_rows])
                grad_weight.addmm_(g.t().float(), h.float())
                if grad_bias is not None:
                    grad_bias += probs.sum(0)
        if with_grad:
            ctx.save_for_backward(
                grad_hidden, grad_weight.to(weight.dtype), grad_bias.to(bias.dtype) if grad_bias is not None else None
            )
        ctx.n_rows = n_rows
        return loss_sum / n_rows

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
        )


@torch.no_grad()
def token_losses(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, chunk_rows: int | None = None
) -> torch.Tensor:
    """The loss of each row of ``head(hidden)`` against ``targets`` (float32, no gradient), chunk by chunk.

    Evaluation needs the loss of every token, not only their mean, to give a standard error.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    rows = chunk_rows or default_chunk_rows(head.weight.shape[0])
    w = head.weight.to(h.dtype)
    parts = [_chunk_nll(h[i : i + rows], w, head.bias, t[i : i + rows])[0] for i in range(0, len(t), rows)]
    return torch.cat(parts) if parts else torch.zeros(0, device=h.device)


def linear_cross_entropy(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, chunk_rows: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy of ``head(hidden)`` against ``targets``, computed chunk by chunk.

    ``hidden`` is (..., D) and ``targets`` the matching (...) int64 ids.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    rows = chunk_rows or default_chunk_rows(head.weight.shape[0])
    with_grad = torch.is_grad_enabled() and (h.requires_grad or head.weight.requires_grad)
    return _LinearCrossEntropy.apply(h, head.weight, head.bias, t, rows, with_grad)
