"""Closed-form and convex-optimization classifier heads on support embeddings, batched over tasks (R2-D2, MetaOptNet).

Plain functions of tensors, usable without the trainer; every one takes a batch of T tasks: support embeddings
[T, S, D], support labels [T, S] in 0..N-1 (any order, any counts), query embeddings [T, Q, D].

Ridge regression (`ridge_solve`): W = argmin ||X W - Y||^2 + lam ||W||^2 = (X^T X + lam I_D)^-1 X^T Y, computed in the
form whose system is the smaller: the primal (a D x D system) or, by the Woodbury identity, the dual
X^T (X X^T + lam I_S)^-1 Y (an S x S system; Bertinetto et al. 2019, sec. 3.2).

The Crammer-Singer multi-class SVM (`crammer_singer_dual`), in the dual that MetaOptNet solves (Lee et al. 2019;
their code, models/classification_heads.py, MetaOptNetHead_SVM_CS): with A [S, N] (row i: sample i, column m:
class m), K = X X^T and Y the one-hot labels,

    min_A  1/2 sum_m A_m^T (K + rho I) A_m  -  sum_{i,m} Y_im A_im
    s.t.   A_im <= C Y_im  for all i, m     and     sum_m A_im = 0  for all i,

and the class-m weights are w_m = sum_i A_im x_i, so a query q scores q . w_m = sum_i A_im k(x_i, q). rho = 1 is
what the reference code adds to the block kernel ("to avoid PSD errors"); it keeps the dual strongly convex. The
cost scales with the support size S (kernel S x S), not with the feature dimension.

Solver: a primal-dual interior-point method (Mehrotra predictor-corrector, as OptNet's qpth), batched over tasks, in
float64 by default. Its Newton systems are block-structured, K + diag(rho + d_m) for each class m coupled by the S
equality constraints, so each iteration costs N Cholesky factorizations of S x S plus one S x S Schur complement
instead of one (S N) x (S N) factorization. Once the active set is clear, the solution is "polished": the equality-
constrained QP on the identified free variables is solved exactly (one more such solve) and kept if it satisfies the
optimality conditions better. Convergence is judged by the natural residual of the KKT conditions,
||A - P(A - grad f(A))||_inf, where P is the Euclidean projection onto the feasible set (per sample a shifted, scaled
simplex): it is 0 exactly at the optimum, in the units of the labels. The solver never silently stops short: it
returns the residual of each task, and `svm_head` raises or warns when it exceeds the tolerance.

Gradient: implicit, through the optimality conditions (not by unrolling the iterations): on the active set the
variables sit at their bounds; the free ones solve the linear KKT system [H_FF E_F^T; E_F 0], so the backward pass
solves the same (symmetric) system for the adjoint (u, w) with right-hand side (dL/dA_F, 0) and gives
dL/dK = -sym(U A^T). Differentiable wrt the kernel, hence wrt the support embeddings; the logits add the query
embeddings and the scale by ordinary autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["SVMSolution", "WOODBURY", "crammer_singer_dual", "cs_natural_residual", "metaoptnet_ridge_logits",
           "metaoptnet_ridge_weights", "onehot", "r2d2_logits", "r2d2_weights", "ridge_solve", "svm_logits",
           "svm_weights"]

WOODBURY = ("auto", "always", "never")


def onehot(labels: torch.Tensor, ways: int, dtype: torch.dtype) -> torch.Tensor:
    """[T, S] labels -> [T, S, N] one-hot in `dtype`; a label outside 0..ways-1 is a ValueError naming it."""
    if labels.numel():
        lo, hi = (int(v) for v in torch.stack(torch.aminmax(labels)).tolist())  # one device sync
        if lo < 0 or hi >= ways:
            raise ValueError(f"support labels must lie in 0..{ways - 1} for {ways}-way tasks; got labels from "
                             f"{lo} to {hi}: pass ways = the number of classes")
    return F.one_hot(labels.long(), ways).to(dtype)


def _solve_dtype(*xs: torch.Tensor) -> torch.dtype:
    """float64 stays float64; half and bfloat16 (autocast) are solved in float32."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


# ---------------------------------------------------------------------------------------------------------------
# ridge regression


def ridge_solve(x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor | float, woodbury: str = "auto"
                ) -> torch.Tensor:
    """Ridge weights W [T, D, N] = argmin ||x W - y||^2 + lam ||W||^2 of x [T, S, D], targets y [T, S, N].

    woodbury "always": W = x^T (x x^T + lam I_S)^-1 y; "never": W = (x^T x + lam I_D)^-1 x^T y; "auto": the
    Woodbury form when S <= D (the smaller system). Both are the same W; one batched torch.linalg.solve."""
    if woodbury not in WOODBURY:
        raise ValueError(f"woodbury must be one of {', '.join(WOODBURY)}; got {woodbury!r}")
    s, d = x.shape[-2:]
    use = woodbury == "always" or (woodbury == "auto" and s <= d)
    if use:
        a = x @ x.transpose(-1, -2) + lam * torch.eye(s, dtype=x.dtype, device=x.device)
        return x.transpose(-1, -2) @ torch.linalg.solve(a, y)
    a = x.transpose(-1, -2) @ x + lam * torch.eye(d, dtype=x.dtype, device=x.device)
    return torch.linalg.solve(a, x.transpose(-1, -2) @ y)


def r2d2_weights(support: torch.Tensor, labels: torch.Tensor, ways: int, lam: torch.Tensor | float,
                 normalize: bool = True, woodbury: str = "auto") -> torch.Tensor:
    """R2-D2's base learner: ridge regression from support embeddings [T, S, D] with a column of ones appended
    (the bias) to the one-hot labels; returns [T, D + 1, N] (last row: the bias). `normalize`: X and Y are divided by
    sqrt(S) as in the reference code (github.com/bertinetto/r2d2, fewshots/models/r2d2.py), which is the same as
    regularizing with lam * S."""
    dtype = _solve_dtype(support)
    z = support.to(dtype)
    x = torch.cat([z, torch.ones_like(z[..., :1])], -1)
    y = onehot(labels, ways, dtype)
    if normalize:
        r = math.sqrt(x.shape[-2])
        x, y = x / r, y / r
    lam = lam.to(dtype) if torch.is_tensor(lam) else lam
    return ridge_solve(x, y, lam, woodbury)


def r2d2_logits(query: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor | float,
                bias: torch.Tensor | float) -> torch.Tensor:
    """alpha * (Z_q W + b) + beta for query embeddings [T, Q, D] and `r2d2_weights` [T, D + 1, N] -> [T, Q, N]."""
    q = query.to(weights.dtype)
    out = q @ weights[..., :-1, :] + weights[..., -1:, :]
    return scale * out + bias


def metaoptnet_ridge_weights(support: torch.Tensor, labels: torch.Tensor, ways: int, lam: float,
                             woodbury: str = "auto") -> torch.Tensor:
    """MetaOptNet-RR's classifier (their code: MetaOptNetHead_Ridge): per class the QP min 1/2 a^T (K + lam I) a -
    2 y^T a, i.e. a = 2 (K + lam I)^-1 Y on the kernel K = Z_s Z_s^T, and weights Z_s^T a = 2 W_ridge(lam) -- ridge
    regression without bias, times 2 (the reference's constant, kept so that its scale initialization means the
    same). [T, D, N]."""
    dtype = _solve_dtype(support)
    return ridge_solve(support.to(dtype), 2.0 * onehot(labels, ways, dtype), lam, woodbury)


def metaoptnet_ridge_logits(query: torch.Tensor, support: torch.Tensor, labels: torch.Tensor, ways: int,
                            lam: float, woodbury: str = "auto") -> torch.Tensor:
    """MetaOptNet-RR's scores Z_q Z_s^T a [T, Q, N] (before the scale), see `metaoptnet_ridge_weights`."""
    w = metaoptnet_ridge_weights(support, labels, ways, lam, woodbury)
    return query.to(w.dtype) @ w


# ---------------------------------------------------------------------------------------------------------------
# the Crammer-Singer SVM dual


@dataclass
class SVMSolution:
    """The dual solution A [T, S, N], the KKT (natural) residual of each task [T], the interior-point iterations
    run, and the tolerance asked for."""

    alpha: torch.Tensor
    residual: torch.Tensor
    iterations: int
    tol: float

    @property
    def max_residual(self) -> float:
        return float(self.residual.max()) if self.residual.numel() else 0.0

    @property
    def converged(self) -> bool:
        return self.max_residual <= self.tol


def _project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row (last dim) onto the probability simplex (Duchi et al. 2008)."""
    n = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1.0
    k = torch.arange(1, n + 1, dtype=v.dtype, device=v.device)
    cond = u - css / k > 0
    rho = cond.to(v.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last index where cond holds (cond is a prefix)
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0.0)


def _project_feasible(v: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """Projection onto {A : A <= C Y, sum_m A_im = 0}: per row, A_i = C y_i - C p_i with p_i in the simplex."""
    return c * y - c * _project_simplex((c * y - v) / c)


def cs_natural_residual(alpha: torch.Tensor, kernel: torch.Tensor, y: torch.Tensor, c: float, rho: float
                        ) -> torch.Tensor:
    """||A - P(A - grad f(A))||_inf per task [T]: 0 exactly at the solution of the dual, > 0 at any other A
    (feasible or not)."""
    grad = kernel @ alpha + rho * alpha - y
    return (alpha - _project_feasible(alpha - grad, y, c)).abs().amax((-2, -1))


def _block_solve(kr: torch.Tensor, d: torch.Tensor | None, free: torch.Tensor | None, r: torch.Tensor,
                 b: torch.Tensor, factor: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Solve, per task, the KKT system of the dual restricted to the free entries (mask [T, S, N], None: all):

        [(kr + diag(d_m)) u_m]_i + nu_i = r_im   for free (i, m),    u_im = 0 elsewhere,    sum_m u_im = b_i,

    kr = K + rho I [T, S, S], d [T, S, N] (None: 0), r [T, S, N], b [T, S]. By the block structure (one S x S block
    per class, coupled by the row sums): u_m = B_m^-1 (r_m - nu) on the free set and (sum_m B_m^-1) nu = sum_m
    B_m^-1 r_m - b. Returns (u, nu, factor); `factor` (the inverted blocks and the Schur complement's Cholesky factor)
    can be passed back to solve with another right-hand side."""
    if factor is None:
        t, s, n = r.shape
        blocks = kr.unsqueeze(1).expand(t, n, s, s)
        if d is not None:
            blocks = blocks + torch.diag_embed(d.transpose(1, 2))
        if free is not None:
            p = free.transpose(1, 2).to(kr.dtype)  # [T, N, S]
            blocks = blocks * p.unsqueeze(-1) * p.unsqueeze(-2) + torch.diag_embed(1.0 - p)
        inv = torch.cholesky_inverse(torch.linalg.cholesky(blocks))
        if free is not None:
            inv = inv * p.unsqueeze(-1) * p.unsqueeze(-2)  # P B^-1 P: zero on the fixed entries
        schur = torch.linalg.cholesky(inv.sum(1))
        factor = (inv, schur)
    inv, schur = factor
    br = torch.einsum("tmij,tjm->tim", inv, r)
    nu = torch.cholesky_solve((br.sum(-1) - b).unsqueeze(-1), schur).squeeze(-1)
    u = br - torch.einsum("tmij,tj->tim", inv, nu)
    return u, nu, factor


def _max_step(x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Largest step a <= 1 with x + a dx >= 0, per task [T, 1, 1] (x > 0)."""
    ratio = torch.where(dx < 0, -x / dx, torch.full_like(x, float("inf")))
    return ratio.amin((-2, -1), keepdim=True).clamp(max=1.0)


def _polish(kr: torch.Tensor, y: torch.Tensor, h: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """The exact solution of the dual with the entries outside `free` fixed at their bounds (the equality-constrained
    QP on the free entries)."""
    fixed = h * (~free).to(h.dtype)
    u, _, _ = _block_solve(kr, None, free, y - kr @ fixed, -fixed.sum(-1))
    return u + fixed


def _free_set(s: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Entries off their bound at the interior-point iterate (slack larger than multiplier); at least one per row
    (the row sums must be 0 while the bounds sum to C), else the whole row."""
    free = s >= lam
    return free | ~free.any(-1, keepdim=True)


def _solve_cs_dual(kernel: torch.Tensor, y: torch.Tensor, c: float, rho: float, iters: int, tol: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(A, free mask, residual per task, iterations) of the dual, by Mehrotra's predictor-corrector."""
    t, s_n, n = y.shape
    kr = kernel + rho * torch.eye(s_n, dtype=kernel.dtype, device=kernel.device)
    h = c * y
    # a strictly feasible, centered start: slack C/N everywhere, rows summing to 0
    z = h - c / n
    s = torch.full_like(z, c / n)
    lam = torch.ones_like(z)
    nu = torch.zeros(t, s_n, dtype=z.dtype, device=z.device)
    size = s_n * n
    best = z
    best_res = torch.full((t,), float("inf"), dtype=z.dtype, device=z.device)
    best_free = torch.ones_like(z, dtype=torch.bool)
    prev_free = None
    it = 0
    for it in range(1, iters + 1):
        rd = kr @ z - y + nu.unsqueeze(-1) + lam
        re = z.sum(-1)
        ri = z + s - h
        mu = (s * lam).sum((-2, -1), keepdim=True) / size
        d = lam / s

        def newton(rc: torch.Tensor, factor=None):
            """The Newton direction with lam ds + s dlam = rc as the linearized complementarity, slack and
            multiplier steps eliminated: (K + rho I + diag(lam / s)) dz_m + dnu = rhs_m, sum_m dz_m = -re."""
            rhs = -rd - (rc + lam * ri) / s
            dz, dnu, factor = _block_solve(kr, d, None, rhs, -re, factor)
            ds = -ri - dz
            return dz, dnu, ds, (rc - lam * ds) / s, factor

        # predictor (affine scaling), then the centering-corrector step with the same factorization
        dz, dnu, ds, dlam, factor = newton(-s * lam)
        a = torch.minimum(_max_step(s, ds), _max_step(lam, dlam))
        mu_aff = ((s + a * ds) * (lam + a * dlam)).sum((-2, -1), keepdim=True) / size
        sigma = (mu_aff / mu).clamp(0.0, 1.0) ** 3
        dz, dnu, ds, dlam, _ = newton(-s * lam + sigma * mu - ds * dlam, factor)
        a = 0.99 * torch.minimum(_max_step(s, ds), _max_step(lam, dlam))
        z, s, lam, nu = z + a * dz, s + a * ds, lam + a * dlam, nu + a.squeeze(-1) * dnu
        s, lam = s.clamp_min(1e-300), lam.clamp_min(1e-300)
        # candidates: the iterate itself and, once the free set it suggests has settled (or at the last
        # iteration), its polished version on that set
        free = _free_set(s, lam)
        cands = [(z, free)]
        if it == iters or (prev_free is not None and bool((free == prev_free).all())):
            cands.append((_polish(kr, y, h, free), free))
        prev_free = free
        for cand, cfree in cands:
            res = cs_natural_residual(cand, kernel, y, c, rho)
            better = res < best_res
            best = torch.where(better[:, None, None], cand, best)
            best_free = torch.where(better[:, None, None], cfree, best_free)
            best_res = torch.where(better, res, best_res)
        if bool((best_res <= tol).all()):
            break
    return best, best_free, best_res, it


class _CrammerSingerDual(torch.autograd.Function):
    """A = argmin of the dual, as a function of the kernel K; the backward pass differentiates the KKT conditions."""

    @staticmethod
    def forward(ctx, kernel, y, c, rho, iters, tol):
        alpha, free, res, it = _solve_cs_dual(kernel.detach(), y, c, rho, iters, tol)
        ctx.save_for_backward(kernel, alpha, free)
        ctx.rho = rho
        steps = torch.tensor(it, device=kernel.device)
        ctx.mark_non_differentiable(res, steps)
        return alpha, res, steps

    @staticmethod
    def backward(ctx, g_alpha, g_res, g_it):
        kernel, alpha, free = ctx.saved_tensors
        if g_alpha is None:
            return None, None, None, None, None, None
        kr = kernel + ctx.rho * torch.eye(kernel.shape[-1], dtype=kernel.dtype, device=kernel.device)
        g = g_alpha.to(alpha.dtype) * free.to(alpha.dtype)
        u, _, _ = _block_solve(kr, None, free, g, torch.zeros_like(g[..., 0]))
        gk = -(u @ alpha.transpose(-1, -2))
        gk = 0.5 * (gk + gk.transpose(-1, -2))
        return gk.to(kernel.dtype), None, None, None, None, None


def crammer_singer_dual(support: torch.Tensor, labels: torch.Tensor, ways: int, c: float = 0.1, rho: float = 1.0,
                        iters: int = 30, tol: float = 1e-6, double: bool = True) -> SVMSolution:
    """The dual of the Crammer-Singer SVM on support embeddings [T, S, D] (see the module docstring), solved to the
    natural KKT residual `tol` in at most `iters` interior-point iterations; differentiable wrt the embeddings
    (implicitly). Returns an `SVMSolution` (the caller decides what a residual above `tol` means)."""
    if c <= 0 or rho <= 0:
        raise ValueError(f"the SVM needs C > 0 and rho > 0 (got C={c}, rho={rho})")
    dtype = torch.float64 if double else _solve_dtype(support)
    z = support.to(dtype)
    kernel = z @ z.transpose(-1, -2)
    if not bool(torch.isfinite(kernel).all()):
        raise FloatingPointError("the SVM's support embeddings are not finite (NaN or inf): the encoder diverged; "
                                 "lower optim.lr or set optim.grad_clip")
    y = onehot(labels, ways, dtype)
    alpha, res, it = _CrammerSingerDual.apply(kernel, y, float(c), float(rho), int(iters), float(tol))
    return SVMSolution(alpha, res, int(it), float(tol))


def svm_weights(support: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Primal weights w_m = sum_i A_im x_i [T, D, N] of support embeddings [T, S, D] and the dual solution [T, S, N]."""
    return support.to(alpha.dtype).transpose(-1, -2) @ alpha


def svm_logits(query: torch.Tensor, support: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Scores q . w_m: [T, Q, D], [T, S, D], [T, S, N] -> [T, Q, N] (in A's dtype)."""
    return query.to(alpha.dtype) @ svm_weights(support, alpha)
