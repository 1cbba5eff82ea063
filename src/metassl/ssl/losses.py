"""Self-supervised losses as plain functions of embeddings (usable without metassl's trainer).

Every function computes in float32 (inputs under bf16 autocast are upcast) and raises ValueError with the reason
when the batch cannot define the loss (e.g. one image for a contrastive loss).

- `nt_xent_loss`      SimCLR (Chen et al. 2020), eq. 1, averaged over all 2B anchors (both directions).
- `info_nce_loss`     MoCo (He et al. 2020; v2: Chen et al. 2020): positive key vs. a queue of negative keys.
- `normalized_mse`    BYOL (Grill et al. 2020), eq. 2: ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), target z detached.
- `negative_cosine`   SimSiam (Chen & He 2021): D(p, z) = -cos(p, stopgrad(z)).
- `barlow_twins_loss` Barlow Twins (Zbontar et al. 2021), eq. 1: sum_i (1 - C_ii)^2 + lambda sum_{i!=j} C_ij^2.
- `vicreg_loss`       VICReg (Bardes et al. 2022): lambda s + mu [v(Z) + v(Z')] / 2 + nu [c(Z) + c(Z')] as the
                      authors' code (default), or the paper's mu [v(Z) + v(Z')] with variance_form="paper".
- `rotate4` / `rotation_loss`  RotNet (Gidaris et al. 2018): 4-way prediction of 0/90/180/270-degree rotations.
- `sinkhorn`          the Sinkhorn-Knopp equal-partition transport plan of SwAV (Caron et al. 2020), as PsCo uses it
                      to assign queue entries to the images of a batch.
- `pseudo_supcon_loss` PsCo (Jang et al. 2023), eq. 3: supervised contrastive loss of N queries against the N x K
                      pseudo-labelled support embeddings of their few-shot pseudo-task.
- `dino_loss`, `dino_center`, `teacher_temperature`  DINO (Caron et al. 2021): cross-entropy between the centred,
                      sharpened teacher distribution of each global view and the student's of every other view; the
                      centre's EMA; the teacher temperature's linear warm-up.
- `swav_loss`         SwAV (Caron et al. 2020), eq. 1-3: swapped prediction of the Sinkhorn codes (`sinkhorn`) of
                      each global view from every other view.
- `nearest_neighbour`, `nnclr_loss`  NNCLR (Dwibedi et al. 2021), eq. 1: the support-set nearest neighbour (cosine)
                      of each embedding as the positive of the other view's prediction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["nt_xent_loss", "info_nce_loss", "normalized_mse", "negative_cosine", "barlow_twins_loss",
           "vicreg_loss", "rotate4", "rotation_loss", "embedding_std", "sinkhorn", "pseudo_supcon_loss",
           "dino_loss", "dino_center", "teacher_temperature", "swav_loss", "nearest_neighbour", "nnclr_loss"]


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's NT-Xent of two views [B, D]: each of the 2B embeddings is an anchor whose positive is the other view
    of its image and whose negatives are the other 2B - 2 embeddings; cosine similarity / temperature, cross-entropy
    averaged over all 2B anchors. Returns (loss, top-1 accuracy of finding the positive)."""
    _need(z1.shape == z2.shape and z1.dim() == 2, f"nt_xent_loss: two [B, D] views expected, got {tuple(z1.shape)} "
          f"and {tuple(z2.shape)}")
    b = z1.shape[0]
    _need(b >= 2, f"nt_xent_loss: a batch of {b} image has no negatives; the batch size must be >= 2")
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))  # no self-pairs
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    loss = F.cross_entropy(sim, target)
    acc = (sim.argmax(1) == target).float().mean()
    return loss, acc.detach()


def info_nce_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's InfoNCE: queries q [B, D] against their keys k [B, D] (positives; no gradient) and a queue [K, D] of
    negative keys; all L2-normalized, logits / temperature, the positive at index 0. Returns (loss, accuracy)."""
    _need(q.shape == k.shape and q.dim() == 2 and queue.dim() == 2 and queue.shape[1] == q.shape[1],
          f"info_nce_loss: q, k [B, D] and queue [K, D] expected, got {tuple(q.shape)}, {tuple(k.shape)}, "
          f"{tuple(queue.shape)}")
    _need(queue.shape[0] >= 1, "info_nce_loss: the queue of negatives is empty")
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1).detach()
    neg = F.normalize(queue.float(), dim=1).detach()
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ neg.t()], 1) / temperature
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    loss = F.cross_entropy(logits, target)
    return loss, (logits.argmax(1) == 0).float().mean().detach()


def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL: mean over the batch of ||p/||p|| - z/||z||||^2 = 2 - 2 cos(p, z); z (the target) gets no gradient."""
    p = F.normalize(p.float(), dim=-1)
    z = F.normalize(z.detach().float(), dim=-1)
    return (p - z).pow(2).sum(-1).mean()


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, stopgrad(z)), averaged over the batch."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


def _standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Along the batch: (z - mean) / sqrt(var + eps), biased variance (BatchNorm without affine, as the authors' code)."""
    mean = z.mean(0, keepdim=True)
    var = z.var(0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3) -> tuple[torch.Tensor, dict]:
    """Barlow Twins: C = Z1n^T Z2n / B with Z standardized along the batch; sum_i (1 - C_ii)^2 + lambda sum_{i!=j}
    C_ij^2. Returns (loss, {"on_diag", "off_diag"})."""
    _need(z1.shape == z2.shape and z1.dim() == 2, "barlow_twins_loss: two [B, D] views expected")
    b = z1.shape[0]
    _need(b >= 2, f"barlow_twins_loss: batch statistics need at least 2 images, got {b}")
    c = _standardize(z1.float()).t() @ _standardize(z2.float()) / b
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = _off_diagonal(c).pow(2).sum()
    return on + lambd * off, {"on_diag": on.detach(), "off_diag": off.detach()}


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4, variance_form: str = "code"
                ) -> tuple[torch.Tensor, dict]:
    """VICReg: invariance s = MSE(Z, Z') (mean over batch and dimensions); variance v(Z) = mean_j relu(gamma -
    sqrt(Var(z_j) + eps)) (unbiased variance); covariance c(Z) = sum_{i!=j} Cov(Z)_ij^2 / D (Cov with B - 1).
    Loss = sim_weight s + var_weight V + cov_weight (c(Z) + c(Z')), the covariance terms summed in both forms, with
    V = (v(Z) + v(Z')) / 2 for variance_form="code" (the authors' released code, also lightly) or V = v(Z) + v(Z')
    for "paper" (the loss as Bardes et al. 2022 write it). Computed in float32, or float64 for float64 inputs.
    Returns (loss, {"invariance": s, "variance": V, "covariance": c(Z) + c(Z')}), the terms the weights multiply."""
    _need(z1.shape == z2.shape and z1.dim() == 2, "vicreg_loss: two [B, D] views expected")
    _need(variance_form in ("code", "paper"), f"vicreg_loss: variance_form must be 'code' or 'paper', got "
          f"{variance_form!r}")
    b, d = z1.shape
    _need(b >= 2, f"vicreg_loss: variance and covariance need at least 2 images, got {b}")
    dtype = torch.promote_types(z1.dtype, torch.float32)  # bf16/fp16 -> float32; float64 stays (exact checks)
    z1, z2 = z1.to(dtype), z2.to(dtype)
    inv = F.mse_loss(z1, z2)

    def var_cov(z):
        z = z - z.mean(0)
        std = torch.sqrt(z.pow(2).sum(0) / (b - 1) + eps)
        cov = z.t() @ z / (b - 1)
        return F.relu(gamma - std).mean(), _off_diagonal(cov).pow(2).sum() / d

    v1, c1 = var_cov(z1)
    v2, c2 = var_cov(z2)
    # the released code averages the two variance hinges, which halves mu relative to the paper's formula
    var = (v1 + v2) / 2 if variance_form == "code" else v1 + v2
    cov = c1 + c2
    loss = sim_weight * inv + var_weight * var + cov_weight * cov
    return loss, {"invariance": inv.detach(), "variance": var.detach(), "covariance": cov.detach()}


def rotate4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B, C, H, W] (square) -> the four rotations [4B, C, H, W] (all images by 0 degrees, then by 90, 180,
    270 degrees counter-clockwise, `torch.rot90` on (H, W)) and their labels [4B] in 0..3."""
    _need(x.dim() == 4 and x.shape[-1] == x.shape[-2], f"rotate4: square images [B, C, H, W] expected, got "
          f"{tuple(x.shape)}")
    rot = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return rot, labels


def rotation_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the 4-way rotation logits [N, 4]; returns (loss, accuracy)."""
    logits = logits.float()
    return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean().detach()


def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse monitor (SimSiam, section 4.1): the std over the batch of the L2-normalized embeddings, averaged over
    dimensions. About 1/sqrt(D) for well-spread embeddings, 0 when every image maps to the same vector."""
    z = F.normalize(z.detach().float(), dim=1)
    return z.std(0, unbiased=False).mean()


def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Equal-partition transport plan for scores [B, M] (B batch images, M queue entries), as SwAV's
    `distributed_sinkhorn` with PsCo's row normalization: P = exp(S / epsilon), then `iterations` times: scale the
    columns to sum 1/M each, then the rows to sum 1/B each; returned x B, so each row sums to 1 (a distribution of
    image i over the queue). Computed in log space (no overflow for small epsilon), in float32, without gradient.
    Single-process: with several processes the column sums would need an all-reduce."""
    _need(scores.dim() == 2 and scores.shape[0] >= 1 and scores.shape[1] >= 1,
          f"sinkhorn: scores [B, M] expected, got {tuple(scores.shape)}")
    _need(epsilon > 0 and iterations >= 1, f"sinkhorn: epsilon > 0 and iterations >= 1 needed, got {epsilon}, "
                                           f"{iterations}")
    b, m = scores.shape
    with torch.no_grad():
        log_p = scores.float() / epsilon
        log_p = log_p - torch.logsumexp(log_p.flatten(), 0)
        for _ in range(iterations):
            log_p = log_p - torch.logsumexp(log_p, dim=0, keepdim=True) - math.log(m)
            log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True) - math.log(b)
        return log_p.exp() * b


def pseudo_supcon_loss(q: torch.Tensor, shots: torch.Tensor, temperature: float = 1.0
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """PsCo's loss on one N-way K-shot pseudo-task: queries q [N, D] (the online predictions; query i is the only
    query of pseudo-class i) against support embeddings shots [N, K, D] (shots[i] are the K support embeddings of
    pseudo-class i; no gradient). With s_j the N*K supports, all L2-normalized:
    L = mean_i [ log sum_j exp(q_i . s_j / T) - (1/K) sum_k q_i . s_ik / T ]
    (the supervised contrastive loss with K positives per query). Returns (loss, accuracy of the query's own
    pseudo-class by nearest prototype, the mean of its shots)."""
    _need(q.dim() == 2 and shots.dim() == 3 and shots.shape[0] == q.shape[0] and shots.shape[2] == q.shape[1],
          f"pseudo_supcon_loss: q [N, D] and shots [N, K, D] expected, got {tuple(q.shape)}, {tuple(shots.shape)}")
    n, k, _ = shots.shape
    q = F.normalize(q.float(), dim=1)
    s = F.normalize(shots.float(), dim=2).detach()
    logits = q @ s.reshape(n * k, -1).t() / temperature  # [N, N*K]
    positive = logits.reshape(n, n, k).diagonal(dim1=0, dim2=1).t()  # [N, K]: q_i . s_ik / T
    loss = (torch.logsumexp(logits, dim=1) - positive.mean(1)).mean()
    proto = logits.reshape(n, n, k).mean(2)  # [N, N]: q_i . mean_k s_jk / T
    acc = (proto.argmax(1) == torch.arange(n, device=q.device)).float().mean().detach()
    return loss, acc


def teacher_temperature(step, warmup_temp: float = 0.04, temp: float = 0.07, warmup_steps: int = 0):
    """DINO's teacher temperature: linear from `warmup_temp` at step 0 to `temp` at `warmup_steps`, then constant
    (the paper: 0.04 -> 0.07 over the first 30 epochs). `step` may be an int or a tensor (then a tensor, computed
    on the device without a host read)."""
    if warmup_steps <= 0:
        return temp if not torch.is_tensor(step) else torch.full_like(step, temp, dtype=torch.float32)
    if torch.is_tensor(step):
        frac = (step.float() / warmup_steps).clamp(0.0, 1.0)
    else:
        frac = min(max(step, 0), warmup_steps) / warmup_steps
    return warmup_temp + (temp - warmup_temp) * frac


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, student_temp: float = 0.1,
              teacher_temp=0.04) -> tuple[torch.Tensor, dict]:
    """DINO's loss. student [Vs, B, K]: the student head's outputs for every view (the Vt global views first, then
    the local crops); teacher [Vt, B, K]: the teacher's outputs for the global views (no gradient); center [K] or
    [1, K]. With P_t = softmax((t - c) / teacher_temp) (centring and sharpening) and log P_s = log_softmax(s /
    student_temp): L = mean over the pairs (i, v), i a global view, v any view other than i, of
    mean_b [ -sum_k P_t(i, b, k) log P_s(v, b, k) ]. `teacher_temp` may be a 0-d/1-element tensor.
    Returns (loss, {"teacher_entropy": mean entropy of P_t, "kl": mean KL(P_t || P_s) over the pairs})."""
    _need(student.dim() == 3 and teacher.dim() == 3 and student.shape[1:] == teacher.shape[1:]
          and teacher.shape[0] <= student.shape[0], f"dino_loss: student [Vs, B, K] and teacher [Vt, B, K] with "
          f"Vt <= Vs expected, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    vt, b, _ = teacher.shape
    vs = student.shape[0]
    _need(vs >= 2, "dino_loss: needs at least two views (a teacher view and another student view)")
    t_temp = teacher_temp.float().reshape(()) if torch.is_tensor(teacher_temp) else teacher_temp
    q = F.softmax((teacher.detach().float() - center.detach().float().reshape(1, 1, -1)) / t_temp, dim=-1)
    logp = F.log_softmax(student.float() / student_temp, dim=-1)
    ce = -torch.einsum("ibk,vbk->iv", q, logp) / b  # [Vt, Vs]: cross-entropy of each (teacher, student) view pair
    keep = torch.ones(vt, vs, dtype=torch.bool, device=ce.device)
    keep[torch.arange(vt), torch.arange(vt)] = False  # not the same view
    loss = ce[keep].mean()
    with torch.no_grad():
        ent = -(q * torch.log(q.clamp_min(1e-30))).sum(-1).mean()
        kl = (ce.detach() - ent)[keep].mean()  # H(P_t, P_s) - H(P_t), all entropies averaged over the batch
    return loss, {"teacher_entropy": ent, "kl": kl}


def dino_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """DINO's centre update: c <- m c + (1 - m) mean of the teacher outputs over its views and the batch
    (teacher [Vt, B, K] or [N, K]); a new tensor of the centre's shape."""
    mean = teacher.detach().float().reshape(-1, teacher.shape[-1]).mean(0)
    return (center.float() * momentum + mean.reshape(center.shape) * (1.0 - momentum)).to(center.dtype)


def swav_loss(scores: torch.Tensor, codes: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SwAV's swapped prediction. scores [V, B, K]: z . c_k of every view with the (L2-normalized) prototypes, the Vg
    global views first; codes [Vg, B, K]: the Sinkhorn codes q of the global views (rows summing to 1; no gradient).
    With p_v = softmax(scores_v / temperature):
    L = (1 / Vg) sum_i (1 / (V - 1)) sum_{v != i} mean_b [ -sum_k q_i(b, k) log p_v(b, k) ] (the paper's eq. 1-2
    over multi-crop, averaged as the authors' code)."""
    _need(scores.dim() == 3 and codes.dim() == 3 and scores.shape[1:] == codes.shape[1:]
          and 1 <= codes.shape[0] <= scores.shape[0] and scores.shape[0] >= 2,
          f"swav_loss: scores [V, B, K] (V >= 2) and codes [Vg, B, K] with Vg <= V expected, got "
          f"{tuple(scores.shape)} and {tuple(codes.shape)}")
    vg, b, _ = codes.shape
    v = scores.shape[0]
    logp = F.log_softmax(scores.float() / temperature, dim=-1)
    ce = -torch.einsum("ibk,vbk->iv", codes.detach().float(), logp) / b  # [Vg, V]
    keep = torch.ones(vg, v, dtype=torch.bool, device=ce.device)
    keep[torch.arange(vg), torch.arange(vg)] = False
    return (ce * keep).sum(1).div(v - 1).mean()


def nearest_neighbour(z: torch.Tensor, support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NNCLR's NN(z, Q): for each embedding z [B, D] the support-set entry [Q, D] of highest cosine similarity.
    Returns (the neighbours [B, D] as stored in the support set, no gradient; their indices [B])."""
    _need(z.dim() == 2 and support.dim() == 2 and support.shape[1] == z.shape[1] and support.shape[0] >= 1,
          f"nearest_neighbour: z [B, D] and a non-empty support set [Q, D] expected, got {tuple(z.shape)} and "
          f"{tuple(support.shape)}")
    with torch.no_grad():
        sim = F.normalize(z.float(), dim=1) @ F.normalize(support.float(), dim=1).t()
        idx = sim.argmax(1)
        return support[idx].detach(), idx


def nnclr_loss(nn: torch.Tensor, p: torch.Tensor, temperature: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """NNCLR's eq. 1 with the predictor: L = mean_i -log( exp(nn_i . p_i / T) / sum_k exp(nn_i . p_k / T) ), nn
    [B, D] the nearest neighbours of one view's embeddings (no gradient), p [B, D] the predictions of the other
    view, both L2-normalized. Returns (loss, accuracy of finding p_i)."""
    _need(nn.shape == p.shape and p.dim() == 2, f"nnclr_loss: nn and p [B, D] expected, got {tuple(nn.shape)} and "
          f"{tuple(p.shape)}")
    b = p.shape[0]
    _need(b >= 2, f"nnclr_loss: a batch of {b} image has no negatives; the batch size must be >= 2")
    logits = F.normalize(nn.detach().float(), dim=1) @ F.normalize(p.float(), dim=1).t() / temperature
    target = torch.arange(b, device=p.device)
    return F.cross_entropy(logits, target), (logits.argmax(1) == target).float().mean().detach()
