"""One MAML meta-training speed measurement, in its own process; prints one JSON line. Used by bench_maml.py.

    python benchmarks/maml_worker.py --impl {metassl,torch,l2l} --shape {omniglot,miniimagenet} [options]

Every implementation does identical work on identical random data (same seed): T tasks of N-way K-shot with Q
queries per class; a Conv4 network [3x3 conv (stride 2 for Omniglot), BatchNorm with batch statistics, ReLU, (2x2
max-pool for miniImageNet)] x 4 -> (mean over the map for Omniglot | flatten) -> linear head; `steps` SGD steps of
size `lr` on each task's support cross-entropy, second order; the query cross-entropy averaged over tasks; backward;
one Adam step on the meta-parameters.

- metassl: this package's MAML learner and training-step engine (metassl.engine.meta.StepRunner), vmap or loop
  path, optional task chunks, bf16 autocast, torch.compile;
- torch: a plain per-task loop with torch.autograd.grad(create_graph=True) and torch.func.functional_call;
- l2l: learn2learn 0.2.0's MAML wrapper (clone / adapt / backward per task), its documented usage. Run this one
  with the interpreter of benchmarks/.venv-l2l (see setup_learn2learn.sh); this file imports learn2learn only then.

Peak memory: on CUDA torch.cuda.max_memory_allocated() over the measured steps (absolute, includes parameters and
data); on CPU the growth of the resident set: peak RSS (getrusage ru_maxrss) minus the RSS just before the first
step (warm-up included), since CPU allocations are not tracked by torch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import types

SHAPES = {
    # Conv4-64 on 1x28x28, 5-way 1-shot, 15 queries, meta-batch 32, 1 inner step (MAML's Omniglot network)
    "omniglot": dict(channels=1, size=28, hidden=64, pool="stride", flatten="avg", ways=5, shots=1, queries=15,
                     tasks=32, steps=1, lr=0.4),
    # Conv4-32 on 3x84x84, 5-way 1-shot, 15 queries, meta-batch 4, 5 inner steps (MAML's miniImageNet network)
    "miniimagenet": dict(channels=3, size=84, hidden=32, pool="max", flatten="flatten", ways=5, shots=1, queries=15,
                         tasks=4, steps=5, lr=0.01),
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_data(shape: dict, seed: int, device):
    import torch

    g = torch.Generator().manual_seed(seed)
    t, n, c, s = shape["tasks"], shape["ways"], shape["channels"], shape["size"]
    sx = torch.rand(t, n * shape["shots"], c, s, s, generator=g)
    qx = torch.rand(t, n * shape["queries"], c, s, s, generator=g)
    sy = torch.arange(n).repeat_interleave(shape["shots"]).expand(t, -1).contiguous()
    qy = torch.arange(n).repeat_interleave(shape["queries"]).expand(t, -1).contiguous()
    return [x.to(device) for x in (sx, sy, qx, qy)]


def plain_net(shape: dict):
    """The same network as metassl's Conv4 + MAML head, in plain torch.nn (torch's own BatchNorm)."""
    from torch import nn

    layers, c = [], shape["channels"]
    stride = 2 if shape["pool"] == "stride" else 1
    for _ in range(4):
        layers += [nn.Conv2d(c, shape["hidden"], 3, stride=stride, padding=1),
                   nn.BatchNorm2d(shape["hidden"], track_running_stats=False), nn.ReLU()]
        if shape["pool"] == "max":
            layers.append(nn.MaxPool2d(2))
        c = shape["hidden"]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            with __import__("torch").no_grad():
                d = self._embed(__import__("torch").zeros(2, shape["channels"], shape["size"], shape["size"])).shape[-1]
            self.head = nn.Linear(d, shape["ways"])

        def _embed(self, x):
            x = self.features(x)
            return x.mean(dim=(-2, -1)) if shape["flatten"] == "avg" else x.flatten(1)

        def forward(self, x):
            return self.head(self._embed(x))

    return Net()


def stub_torchvision() -> None:
    """With a CPU-only torch, PyPI's torchvision cannot load: stand in an empty `torchvision` package (learn2learn
    and easyfsl import it for their data sets, transforms and vision models only)."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]
        import importlib.abc
        import importlib.util

        class Stub(types.ModuleType):
            def __getattr__(self, name):
                if name.startswith("__"):
                    raise AttributeError(name)
                return type(name, (), {"__init__": lambda self, *a, **k: None})

        class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, fullname, path=None, target=None):
                if fullname == "torchvision" or fullname.startswith("torchvision."):
                    return importlib.util.spec_from_loader(fullname, self, is_package=True)
                return None

            def create_module(self, spec):
                return Stub(spec.name)

            def exec_module(self, module):
                module.__path__ = []

        sys.meta_path.insert(0, Finder())


def import_learn2learn():
    """Import learn2learn, with an empty stand-in for torchvision where the real one cannot load (stub_torchvision)."""
    stub_torchvision()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import learn2learn
    return learn2learn


# ---------------------------------------------------------------------------------------------------------------


def setup_metassl(shape, args, device, data):
    import torch

    from metassl.config import resolve
    from metassl.data import Preprocess, TaskBatch
    from metassl.engine.build import build_model
    from metassl.engine.meta import StepRunner

    cfg = resolve({
        "tasks": {"ways": shape["ways"], "shots": shape["shots"], "queries": shape["queries"],
                  "tasks_per_batch": shape["tasks"]},
        "model": {"backbone": "conv4", "hidden": shape["hidden"], "pool": shape["pool"], "flatten": shape["flatten"],
                  "norm": "batch", "track_running_stats": False},
        "learner": {"name": "maml", "inner_steps": shape["steps"], "inner_lr": shape["lr"], "path": args.path,
                    "tasks_per_chunk": args.chunk, "amp": args.amp, "compile": args.compile, "head_init": "linear"},
        "train": {"channels_last": False}})
    model = build_model(cfg, (shape["channels"], shape["size"], shape["size"]), Preprocess(), device)
    opt = torch.optim.Adam(model.params.values(), lr=1e-3)
    notes = []
    runner = StepRunner(model, device, info=lambda msg, values: notes.append(values))
    tasks = TaskBatch(data[0], data[1], data[2], data[3], shape["ways"])

    def step():
        opt.zero_grad(set_to_none=True)
        loss = runner(tasks).loss
        opt.step()
        return loss

    return step, notes


def setup_torch(shape, args, device, data):
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    net = plain_net(shape).to(device)
    names = [k for k, _ in net.named_parameters()]
    params = [p for _, p in net.named_parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    sx, sy, qx, qy = data
    t = shape["tasks"]

    def step():
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(t):
            fast = params
            for _ in range(shape["steps"]):
                loss = F.cross_entropy(functional_call(net, dict(zip(names, fast)), (sx[i],)), sy[i])
                grads = torch.autograd.grad(loss, fast, create_graph=True)
                fast = [w - shape["lr"] * g for w, g in zip(fast, grads)]
            q = F.cross_entropy(functional_call(net, dict(zip(names, fast)), (qx[i],)), qy[i]) / t
            q.backward()
            total += float(q.detach())
        opt.step()
        return total

    return step, []


def setup_l2l(shape, args, device, data):
    import torch
    import torch.nn.functional as F

    l2l = import_learn2learn()
    net = plain_net(shape).to(device)
    maml = l2l.algorithms.MAML(net, lr=shape["lr"], first_order=False)
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
    sx, sy, qx, qy = data
    t = shape["tasks"]

    def step():
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(t):
            learner = maml.clone()
            for _ in range(shape["steps"]):
                learner.adapt(F.cross_entropy(learner(sx[i]), sy[i]))
            q = F.cross_entropy(learner(qx[i]), qy[i]) / t
            q.backward()
            total += float(q.detach())
        opt.step()
        return total

    return step, [{"learn2learn": l2l.__version__}]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", required=True, choices=("metassl", "torch", "l2l"))
    ap.add_argument("--shape", required=True, choices=tuple(SHAPES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=3, help="measured meta-training steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--path", default="vmap", choices=("vmap", "loop", "auto"))
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--amp", default="none", choices=("none", "bf16"))
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    shape = SHAPES[args.shape]
    data = make_data(shape, args.seed, device)
    setup = {"metassl": setup_metassl, "torch": setup_torch, "l2l": setup_l2l}[args.impl]
    step, notes = setup(shape, args, device, data)

    cuda = device.type == "cuda"
    rss0 = rss_bytes()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if cuda:
        peak, how = torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    else:
        peak, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0, "rss_growth"
    print(json.dumps({
        "impl": args.impl, "shape": args.shape, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "steps": args.steps, "warmup": args.warmup, "tasks_per_step": shape["tasks"],
        "seconds": seconds, "tasks_per_s": args.steps * shape["tasks"] / seconds, "peak_bytes": peak,
        "memory": how, "path": args.path if args.impl == "metassl" else None, "chunk": args.chunk,
        "amp": args.amp, "compile": args.compile, "loss": float(loss), "notes": notes}))


if __name__ == "__main__":
    main()
