"""The whole HALS iteration of ``nmf(update=hals)`` (rank >= 2) as one autograd node.

The general loop records every update as a few autograd nodes, each with its own temporaries of
X's size; on small matrices the time goes to allocations, page faults and passes over memory,
not to arithmetic. Here the forward runs without a graph, in place, on cache-sized sub-chunks of
the batch, in the ``(batch, R, P)`` *rows* layout of :mod:`lowrank.solvers._sweep` (row r =
column r of a factor, contiguous), and saves only the factors (the U_j, the V_j) and the small
Gram matrices and guarded reciprocals; the backward is written by hand.

Notation (one matrix, ``s = 1/max|X|`` the detached inverse scale, ``Ut: (R, M)``,
``Vt: (R, N)``). One update of W given H and the data ``Xp`` (``X`` for U, ``Xᵀ`` for V) is

    B = H Hᵀ,  C = s·H Xpᵀ − triu(B, 1) W,   W'_r = relu((C_r − Σ_{l<r} B_lr W'_l) · inv_r)

with ``inv_r = 1/B_rr`` (0 when ``B_rr <= eps·max_l B_ll``: a collapsed column). The iteration:
``V_1`` from ``V_0 = 0`` and ``U_0``; then for j = 1..T: ``U_j`` from ``(U_{j-1}, V_j)`` and
``V_{j+1}`` from ``(V_j, U_j)``; the output is ``Ut_Tᵀ V_{T+1} / s``. From a given state
``(U_0, V_1)`` (the recomputed tail of ``grad_steps=k``) the first V update is skipped.

Backward of one update, given ``G = dL/dW'``: the reverse sweep (as in :mod:`._sweep`)
``g_r = G_r − Σ_{r'>r} B_{r r'} ĝ_{r'}``, ``ĝ_r = g_r · [W'_r > 0] · inv_r``; then

    dW   = −triu(B, 1)ᵀ ĝ,     dXp += s · ĝᵀ H,
    dB   = −triu(W' ĝᵀ) − triu(ĝ Wᵀ, 1)      (upper triangle; the diagonal is the inv_r path:
                                               −inv_r² Σ g_r φ' num_r = −Σ ĝ_r W'_r),
    dH  += s · ĝ Xp + (dB + dBᵀ) H.

The relu mask is read from W' (``W'_r > 0`` iff ``num_r · inv_r > 0``), so no pre-activation is
saved. ``dX`` is accumulated per update into the sub-chunk's slice (as fast here as one product
over a stack of all gradients, and it needs no stack of them). Masked columns need no special
case: X is zero there and V's rows stay exactly 0 (relu(0) with a zero relu derivative), so the
result equals the general loop's, which multiplies V by the mask.

Passes over V-sized tensors are what costs, so: the rows of C are multiplied by ``inv`` inside
the small factor of the product that forms C, and the sweep's coefficients are ``inv_r B_lr``
(no multiply per row); in the backward, ``dL/dV`` is kept with its rows times the ``inv`` of the
update that consumes it (folded the same way), and all gradients are carried times ``s`` (those
of the scaled problem), so a product with the unscaled X never overflows (X up to ~1e30 or down
to ~1e-30 in float32): the scale always goes on the small factor first.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ...solvers._sweep import substitute_
from ...solvers.updates import kept_columns

__all__ = ["hals_fused", "sub_rows"]

#: the batch is processed in sub-chunks whose X slice holds about this many bytes, so the ~50
#: passes of one update over its V-sized tensors hit the cache (tuned on (4096, 8, 512) fp32).
SUB_BYTES = 2 << 20


def sub_rows(m: int, n: int, itemsize: int) -> int:
    """Matrices per sub-chunk for ``(M, N)`` matrices of ``itemsize`` bytes."""
    return max(1, SUB_BYTES // max(m * n * itemsize, 1))


def _guarded_inv(b: Tensor, eps: float, out: Tensor) -> Tensor:
    """``1/B_rr`` into ``out: (n, R, 1)``; 0 for a collapsed column (:func:`kept_columns`; no graph
    here, so the unselected ``1/0`` of a zero column is harmless)."""
    d = torch.diagonal(b, dim1=-2, dim2=-1)
    torch.where(kept_columns(d, eps), d.reciprocal(), torch.zeros((), dtype=d.dtype), out=out.squeeze(-1))
    return out


def _sweep_(c: Tensor, b: Tensor, inv: Tensor) -> None:
    """The Gauss–Seidel sweep in place on ``c: (n, R, P)`` whose rows are already multiplied by
    ``inv`` (rows become the new factor rows): ``W'_r = relu(c_r − Σ_{l<r} inv_r B_lr W'_l)``."""
    substitute_(c, (b * inv.mT).unsqueeze(-1), lambda r: c[:, r].relu_())


_relu_mask = torch.ops.aten.threshold_backward.grad_input


def _reverse_sweep_(g: Tensor, w: Tensor, b: Tensor, inv: Tensor, prescaled: bool = False) -> None:
    """The reverse sweep in place: ``g = dL/dW'`` becomes ``ĝ = dL/dC`` (``w`` is W').

    ``prescaled``: the rows of ``g`` are already multiplied by ``inv`` (folded into the small
    factors of the products that formed it), so ``ĝ_r = [W'_r > 0] (g_r − Σ_{q>r} inv_r B_rq ĝ_q)``.
    """

    def finish(r: int) -> Tensor:
        g_r = _relu_mask(g[:, r], w[:, r], 0.0, grad_input=g[:, r])
        return g_r if prescaled else g_r.mul_(inv[:, r])

    substitute_(g, (b * inv if prescaled else b).mT.unsqueeze(-1), finish, reverse=True)


class _Slots:
    """The per-update tensors of one sub-chunk ``sl``: U_j, V_j (V_{T+1} is ``vlast``) and the
    (Gram, inv) pair of update i (``2j`` for the V update from U_j, ``2j − 1`` for the U update
    from V_j). Saved stacks when ``save``, else ping-pong buffers of the sub-chunk's size."""

    def __init__(self, sl: slice, t: int, vlast: Tensor, store: dict[str, object], save: bool):
        self.sl, self.k, self.t, self.vlast, self.save = sl, sl.stop - sl.start, t, vlast, save
        self.us, self.vs, self.grams, self.invs = (store[key] for key in ("us", "vs", "grams", "invs"))
        self.ulast = store.get("ulast")

    def u(self, j: int) -> Tensor:
        if self.save:
            return self.us[j, self.sl]
        return self.ulast[self.sl] if j == self.t else self.us[j % 2, : self.k]

    def v(self, j: int) -> Tensor:
        if j == self.t + 1:
            return self.vlast[self.sl]
        return self.vs[j - 1][self.sl] if self.save else self.vs[j % 2][: self.k]

    def gram_inv(self, i: int) -> tuple[Tensor, Tensor]:
        if self.save:
            return self.grams[i, self.sl], self.invs[i, self.sl]
        return self.grams[0, : self.k], self.invs[0, : self.k]


def _forward(
    x: Tensor, u0: Tensor, v0: Tensor | None, s: Tensor, iters: int, eps: float, save: bool, need_out: bool
):
    """Run the iterations on ``x: (B, M, N)`` from ``u0: (B, R, M)`` (and ``v0: (B, R, N)``).

    Per sub-chunk, ``z = [X; V_j]`` (rows) serves both products that read V_j: ``V_j zᵀ`` gives
    the U update's ``V_j Xᵀ`` and Gram ``V_j V_jᵀ`` in one product, and ``[s·U_j, −triu(B, 1)] z``
    the V update's numerators.

    Returns ``(out (B, M, N) or None, U_T (B, R, M), V_{T+1} (B, R, N), saved)`` with ``saved``
    the factor stacks, Grams and reciprocals when ``save``.
    """
    nb, m, n = x.shape
    rank = u0.shape[-2]
    t = iters
    first = 0 if v0 is None else 1  # the first V update (index j) that runs
    vlast = x.new_empty(nb, rank, n)
    out = x.new_empty(nb, m, n) if need_out else None
    step = min(sub_rows(m, n, x.element_size()), nb)
    z = x.new_empty(step, m + rank, n)
    if save:  # U_0..U_T; V_1..V_T as separate tensors (each a few MiB: recycled by the heap)
        store = {
            "us": x.new_empty(t + 1, nb, rank, m),
            "vs": [x.new_empty(nb, rank, n) for _ in range(t)],
            "grams": x.new_empty(2 * t + 1, nb, rank, rank),
            "invs": x.new_empty(2 * t + 1, nb, rank, 1),
        }
    else:
        store = {
            "us": x.new_empty(2, step, rank, m),
            "vs": [x.new_empty(step, rank, n) for _ in range(2)],
            "grams": x.new_empty(1, step, rank, rank),
            "invs": x.new_empty(1, step, rank, 1),
            "ulast": x.new_empty(nb, rank, m),
        }
    for c0 in range(0, nb, step):
        sl = slice(c0, min(c0 + step, nb))
        at = _Slots(sl, t, vlast, store, save)
        xc, sc, zc = x[sl], s[sl], z[: at.k]
        zc[:, :m].copy_(xc)
        at.u(0).copy_(u0[sl])
        if v0 is not None:
            zc[:, m:].copy_(at.v(1).copy_(v0[sl]))
        for j in range(first, t + 1):
            if j >= 1:  # U_j from (U_{j-1}, V_j); z holds [X; V_j]
                prod = torch.bmm(at.v(j), zc.mT)  # [V_j Xᵀ, V_j V_jᵀ]
                b, inv = at.gram_inv(2 * j - 1)
                b.copy_(prod[..., m:])
                u, inv = at.u(j), _guarded_inv(b, eps, inv)
                torch.mul(prod[..., :m], sc, out=u).baddbmm_(torch.triu(b, 1), at.u(j - 1), alpha=-1.0)
                _sweep_(u.mul_(inv), b, inv)
            h = at.u(j)  # V_{j+1} from (V_j, U_j); the rows of C scaled by inv in the small factor
            b, inv = at.gram_inv(2 * j)
            torch.bmm(h, h.mT, out=b)
            inv = _guarded_inv(b, eps, inv)
            v = at.v(j + 1)
            if j >= 1:
                torch.bmm(torch.cat([h * sc, torch.triu(b, 1).neg_()], -1).mul_(inv), zc, out=v)
            else:
                torch.bmm(h * (sc * inv), xc, out=v)
            _sweep_(v, b, inv)
            if j < t:
                zc[:, m:].copy_(v)
        if need_out:
            torch.bmm((at.u(t) / sc).mT, vlast[sl], out=out[sl])
    if save:
        return out, store["us"][t].clone(), vlast, (store["us"], store["vs"], store["grams"], store["invs"])
    return out, store["ulast"], vlast, None


class _DX:
    """``dX`` of one sub-chunk, accumulated product by product (``None``: not needed)."""

    def __init__(self, dxc: Tensor | None):
        self.dxc, self.started = dxc, False

    def add(self, a: Tensor, b: Tensor) -> None:
        """``dX += aᵀ b`` (``a`` a gradient, carried times s)."""
        if self.dxc is None:
            return
        if self.started:
            self.dxc.baddbmm_(a.mT, b)
        else:
            torch.bmm(a.mT, b, out=self.dxc)
            self.started = True

    def finish(self) -> None:
        if self.dxc is not None and not self.started:
            self.dxc.zero_()


def _backward(ctx, g_out: Tensor | None, g_u: Tensor | None, g_v: Tensor | None):
    """The reverse pass (see the module docstring); ``(dX, dU0, dV0)`` in the rows layout.

    Per sub-chunk, from the last update to the first, with two ping-pong buffers for each of
    ``dL/dV`` and ``dL/dU``; every operand of a product is contiguous (the saved slots), since
    batched products on strided batches copy.
    """
    x, s, vlast, us, grams, invs, *vs = ctx.saved_tensors
    t, first = ctx.iters, ctx.first
    need_x, need_u0, need_v0 = ctx.needs_input_grad[:3]
    nb, m, n = x.shape
    rank = us.shape[-2]
    dx = x.new_empty(x.shape) if need_x else None
    du0 = x.new_zeros(nb, rank, m) if need_u0 else None
    dv0 = x.new_empty(nb, rank, n) if need_v0 else None
    step = min(sub_rows(m, n, x.element_size()), nb)
    gvb = [x.new_empty(step, rank, n) for _ in range(2)]
    gub = [x.new_empty(step, rank, m) for _ in range(2)]
    store = {"us": us, "vs": vs, "grams": grams, "invs": invs}
    for c0 in range(0, nb, step):
        sl = slice(c0, min(c0 + step, nb))
        at = _Slots(sl, t, vlast, store, True)
        xc, sc = x[sl], s[sl]
        gv, gv_next = gvb[0][: at.k], gvb[1][: at.k]  # dL/dV_{j+1}, then dL/dV_j
        gu, gu_next = gub[0][: at.k], gub[1][: at.k]  # dL/dU_j, then dL/dU_{j-1}
        # gradients are carried times s (those of the scaled problem), and dL/dV_{j+1} with its
        # rows times the inv of the V update that made it
        inv_v = invs[2 * t, sl]
        if g_out is not None:  # out = Ut_Tᵀ V_{T+1} / s
            go = g_out[sl].contiguous()  # e.g. the expanded ones of a .sum(): one copy, not two
            torch.bmm(at.u(t) * inv_v, go, out=gv)
            torch.bmm(vlast[sl], go.mT, out=gu)
        else:
            gv.zero_()
            gu.zero_()
        if g_v is not None:
            gv.addcmul_(g_v[sl], inv_v * sc)
        if g_u is not None:
            gu.addcmul_(g_u[sl], sc)
        dxc = _DX(None if dx is None else dx[sl])
        for j in range(t, first - 1, -1):
            # ---- V_{j+1} from (V_j, U_j): gv = dL/dV_{j+1} becomes ĝ
            w, h = at.v(j + 1), at.u(j)
            b, inv = at.gram_inv(2 * j)
            _reverse_sweep_(gv, w, b, inv, prescaled=True)
            dxc.add(h, gv)
            db = torch.triu(torch.bmm(w, gv.mT))
            if j >= 1:  # into dL/dV_j (rows times the inv of the V update before, if one ran)
                inv_v = invs[2 * j - 2, sl] if j > first else torch.ones_like(inv)
                torch.bmm(torch.triu(b, 1).mT.mul(inv_v).neg_(), gv, out=gv_next)
                db += torch.triu(torch.bmm(gv, at.v(j).mT), 1)
            target = gu if j >= 1 else (None if du0 is None else du0[sl])  # dL/dU_j
            if target is not None:
                target.addcmul_(torch.bmm(gv, xc.mT), sc)
                target.baddbmm_(db + db.mT, h, alpha=-1.0)
            if j == 0:
                break
            # ---- U_j from (U_{j-1}, V_j): gu = dL/dU_j becomes ĝ
            w, h = at.u(j), at.v(j)
            b, inv = at.gram_inv(2 * j - 1)
            _reverse_sweep_(gu, w, b, inv)
            dxc.add(gu, h)
            db = torch.triu(torch.bmm(w, gu.mT)) + torch.triu(torch.bmm(gu, at.u(j - 1).mT), 1)
            if j - 1 >= 1 or du0 is not None:  # dL/dU_{j-1}
                torch.bmm(torch.triu(b, 1).mT, gu, out=gu_next).neg_()
                if j - 1 == 0:
                    du0[sl] += gu_next
            gv_next.baddbmm_(gu * (sc * inv_v), xc).baddbmm_((db + db.mT).mul_(inv_v), h, alpha=-1.0)
            gv, gv_next = gv_next, gv
            gu, gu_next = gu_next, gu
            if j == first and dv0 is not None:  # the start state V_1
                torch.div(gv, sc, out=dv0[sl])
        dxc.finish()
        if du0 is not None:
            du0[sl] /= sc
    return dx, du0, dv0


class _FusedHALS(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, u0, v0, s, iters, eps, need_out):
        out, ulast, vlast, (us, vs, grams, invs) = _forward(x, u0, v0, s, iters, eps, True, need_out)
        ctx.set_materialize_grads(False)
        ctx.iters, ctx.first, ctx.device_type = iters, 0 if v0 is None else 1, x.device.type
        ctx.save_for_backward(x, s, vlast, us, grams, invs, *vs)
        return out, ulast, vlast

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_u, g_v):
        with torch.autocast(ctx.device_type, enabled=False):
            dx, du0, dv0 = _backward(ctx, g_out, g_u, g_v)
        return dx, du0, dv0, None, None, None, None


def hals_fused(
    x: Tensor, u0: Tensor, v0: Tensor | None, inv: Tensor, iters: int, eps: float, need_out: bool = True
) -> tuple[Tensor | None, Tensor, Tensor]:
    """HALS NMF iterations as one node: ``(U_T V_{T+1}ᵀ / inv, U_T, V_{T+1})``.

    Args:
        x: ``(*batch, M, N)`` the (masked, unscaled) data in the compute dtype.
        u0: ``(*batch, M, R)`` the initial U (non-negative).
        v0: ``None`` (start from ``V_0 = 0`` and run the first V update) or ``(*batch, N, R)``
            the V paired with ``u0`` (a state to continue from).
        inv: ``(*batch, 1, 1)`` the detached inverse scale ``1/max|X|``.
        iters: the number of (U, V) iterations T >= 1.
        eps: the relative collapse threshold.
        need_out: form the reconstruction (``False``: ``None`` in its place).

    Returns:
        ``out (*batch, M, N)`` (or ``None``), ``U (*batch, M, R)``, ``V (*batch, N, R)``; with
        gradients w.r.t. ``x``, ``u0`` and ``v0`` when grad mode is on and they require them.
    """
    batch, (m, n), rank = x.shape[:-2], x.shape[-2:], u0.shape[-1]
    xb = x.reshape(-1, m, n).contiguous()
    ub = u0.mT.reshape(-1, rank, m)
    vb = None if v0 is None else v0.mT.reshape(-1, rank, n)
    sb = inv.reshape(-1, 1, 1).to(x.dtype)
    inputs = (xb, ub) if vb is None else (xb, ub, vb)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        out, ulast, vlast = _FusedHALS.apply(xb, ub, vb, sb, iters, eps, need_out)
    else:
        out, ulast, vlast, _ = _forward(xb, ub, vb, sb, iters, eps, False, need_out)
    u = ulast.reshape(*batch, rank, m).mT
    v = vlast.reshape(*batch, rank, n).mT
    return (None if out is None else out.reshape(*batch, m, n)), u, v
