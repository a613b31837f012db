"""The linear scan: a time-invariant linear cell over a whole sequence, forward and adjoint backward."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from statesim.fastpath.forms import LinearForm


def _mask(lengths: Tensor, steps: int) -> Tensor:
    from statesim.engine import lengths_to_mask  # the engine imports this module

    return lengths_to_mask(lengths, steps)


def _block_size(steps: int, batch: int, size: int) -> int:
    """Steps per block: about sqrt(T) sequential steps each way, unless the H^3 powers would dominate."""
    block = math.isqrt(max(steps - 1, 0)) + 1
    return max(1, min(block, (steps * batch) // max(size, 1)))


def scan_linear_(x: Tensor, M: Tensor, *, reverse: bool = False) -> Tensor:
    """In place over ``x [T, N, H]``: ``x_t <- x_t + x_{t-1} M`` in time order (``x_{t+1}`` when ``reverse``).

    Blocked scan without a T-step loop: the sequence is cut into ``K`` blocks of ``L ~ sqrt(T)`` steps
    that run side by side (L short steps, each one product over every block), the states carried
    between blocks follow ``c_k = e_k + c_{k-1} M^L`` (K short steps), and step ``l`` of block ``k`` then
    gains ``c_{k-1} M^{l+1}`` (one product for all). Work stays in the caller's time-major layout, so
    the whole scan reads and writes ``x`` about three times.
    """
    steps, batch, size = x.shape
    block = _block_size(steps, batch, size)
    blocks = steps // block
    rest = steps - blocks * block  # the last (or, reversed, first) steps, done one by one
    body = (x[rest:] if reverse else x[:blocks * block]).view(blocks, block, batch, size)
    for j in (range(block - 2, -1, -1) if reverse else range(1, block)):
        body[:, j] += body[:, j + 1 if reverse else j - 1] @ M
    if blocks > 1:
        powers = [M]
        for _ in range(1, block):
            powers.append(powers[-1] @ M)
        carry = x.new_zeros(blocks, batch, size)  # the state entering block k from its neighbour
        for k in (range(blocks - 2, -1, -1) if reverse else range(1, blocks)):
            src = k + 1 if reverse else k - 1
            torch.addmm(body[src, 0 if reverse else block - 1], carry[src], powers[-1], out=carry[k])
        # position l of a block gains carry M^(l+1) (M^(L-l) reversed): [K * N, H] @ [H, L * H]
        kernel = torch.cat(powers[::-1] if reverse else powers, dim=1)
        body += (carry.view(-1, size) @ kernel).view(blocks, batch, block, size).transpose(1, 2)
    for t in (range(rest - 1, -1, -1) if reverse else range(blocks * block, steps)):
        x[t].addmm_(x[t + 1 if reverse else t - 1], M)
    return x


class _LinearSystem(torch.autograd.Function):
    """The whole linear cell over a sequence, with a hand-written adjoint backward (few full-size passes).

    Forward: ``u_t = C x_t (+ D h0 at t = 0)``, ``h = scan(u)``, ``y_t = A x_t + B h_{t-1}``. Backward:
    ``lam_t = g_t + lam_{t+1} D`` (a reverse scan) where ``g_t`` gathers the gradients reaching ``h_t``
    directly and through ``y_{t+1}``; every parameter gradient is then one matrix product.
    """

    @staticmethod
    def forward(ctx: Any, inputs: Tensor, h0: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor
                ) -> tuple[Tensor, Tensor]:
        steps, batch, features = inputs.shape
        size, out = D.shape[0], A.shape[0]
        x2 = inputs.reshape(-1, features)
        u = (x2 @ C.T).view(steps, batch, size)
        u[0].addmm_(h0, D.T)
        h = scan_linear_(u, D.T)  # u is this function's own temporary: scan it in place
        y = (x2 @ A.T).view(steps, batch, out)
        y[0].addmm_(h0, B.T)
        y.view(-1, out)[batch:].addmm_(h[:-1].reshape(-1, size), B.T)
        ctx.save_for_backward(inputs, h0, h, A, B, C, D)
        return y, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: Tensor | None, gh: Tensor | None) -> tuple[Tensor | None, ...]:
        inputs, h0, h, A, B, C, D = ctx.saved_tensors
        steps, batch, features = inputs.shape
        size, out = D.shape[0], A.shape[0]
        g = torch.empty_like(h).copy_(gh) if gh is not None else torch.zeros_like(h)  # contiguous, ours
        gy2 = None
        if gy is not None:
            gy2 = gy.reshape(-1, out)
            g.view(-1, size)[:-batch].addmm_(gy2[batch:], B)  # h_t feeds y_{t+1}
        lam = scan_linear_(g, D, reverse=True)
        x2, lam2, prev = inputs.reshape(-1, features), lam.reshape(-1, size), h[:-1].reshape(-1, size)
        need = ctx.needs_input_grad
        gx = gh0 = gA = gB = gC = gD = None
        if need[0]:
            gx = lam2 @ C
            if gy2 is not None:
                gx.addmm_(gy2, A)
            gx = gx.view(steps, batch, features)
        if need[1]:
            gh0 = lam[0] @ D
            if gy2 is not None:
                gh0.addmm_(gy2[:batch], B)
        if need[2] and gy2 is not None:
            gA = gy2.T @ x2
        if need[3] and gy2 is not None:
            gB = gy2[:batch].T @ h0 + gy2[batch:].T @ prev
        if need[4]:
            gC = lam2.T @ x2
        if need[5]:
            gD = lam[0].T @ h0 + lam2[batch:].T @ prev
        return gx, gh0, gA, gB, gC, gD


def run_linear(form: LinearForm, inputs: Tensor, h0: Tensor, lengths: Tensor | None,
               return_states: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """The linear cell over ``inputs [T, B, F]`` from ``h0``: outputs, final h, and every h if asked."""
    steps = inputs.shape[0]
    outputs, h = _LinearSystem.apply(inputs, h0, form.A, form.B, form.C, form.D)
    if lengths is None:
        return outputs, h[-1], h if return_states else None
    lengths = lengths.to(device=inputs.device, dtype=torch.long).clamp(0, steps)
    batch = inputs.shape[1]
    history = torch.cat([h0.unsqueeze(0), h])  # history[t] = h_{t-1}
    final = history[lengths, torch.arange(batch, device=inputs.device)]
    keep = _mask(lengths, steps)
    outputs = outputs * keep.unsqueeze(-1).to(outputs.dtype)
    states = None
    if return_states:  # a finished sequence keeps its last state
        index = torch.minimum(torch.arange(1, steps + 1, device=inputs.device).unsqueeze(1), lengths.unsqueeze(0))
        states = history.gather(0, index.unsqueeze(-1).expand(steps, batch, h.shape[-1]))
    return outputs, final, states
