"""Run by tests/test_distributed.py under torchrun (2 gloo processes): trains each run of a JSON job list in one
process group, and writes what every rank holds afterwards, so the test can compare it with one process."""

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from metassl.config import apply_overrides, load_config, load_raw, resolve
from metassl.engine.trainer import Trainer


def digest(tensors):
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def gather_check(out: Path) -> None:
    """NT-Xent on embeddings gathered over the processes: its gradient equals the single-process gradient."""
    from metassl import parallel
    from metassl.ssl.losses import nt_xent_loss

    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=g)
    x1, x2 = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    r, n = dist.get_rank(), dist.get_world_size()
    rows = slice(0, 6) if r == 0 else slice(6, 10)  # uneven shares
    wl = w.clone().requires_grad_()
    z1, z2 = parallel.gather(x1[rows] @ wl), parallel.gather(x2[rows] @ wl)
    (nt_xent_loss(z1, z2, 0.5)[0] / n).backward()
    grad = wl.grad.clone()
    dist.all_reduce(grad)
    wf = w.clone().requires_grad_()
    nt_xent_loss(x1 @ wf, x2 @ wf, 0.5)[0].backward()
    (out / f"gather_rank{r}.json").write_text(json.dumps({"max_diff": float((grad - wf.grad).abs().max())}))


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    dist.init_process_group("gloo")
    out = Path(jobs["out"])
    if jobs.get("gather_check"):
        gather_check(out)
    for job in jobs["runs"]:
        cfg = resolve(apply_overrides(load_raw(job["config"]), job["overrides"])) if job["config"].endswith(".yaml") \
            else load_config(job["config"], job["overrides"])
        t = Trainer(cfg, Path(job["run_dir"]), resume=job.get("resume", False), echo=lambda *a: None)
        t.run()
        r = dist.get_rank()
        (Path(job["run_dir"]) / f"rank{r}.json").write_text(json.dumps(
            {"tensors": digest(t.model.state_tensors()), "step": t.step}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
