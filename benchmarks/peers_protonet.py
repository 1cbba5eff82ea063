"""ProtoNet on real Omniglot with metassl, easyfsl 1.5.0 or learn2learn 0.2.0, in its own process; prints one JSON
line. Used by benchmarks/time_to_accuracy.py (issue 23) and benchmarks/protonet_speed.py (issue 22 part 5).

    python benchmarks/peers_protonet.py prepare                      # main venv: the files the peers read
    python benchmarks/peers_protonet.py tta   --lib {metassl,easyfsl,l2l} --seed S [--set key=value ...]
    python benchmarks/peers_protonet.py speed --lib {metassl,easyfsl,l2l} --seed S

Run easyfsl with benchmarks/.venv-easyfsl/bin/python (setup_easyfsl.sh), learn2learn with benchmarks/.venv-l2l/bin/python
(setup_learn2learn.sh); both run on the main environment's torch. One torch thread.

The protocol (issue 23): Omniglot Vinyals `train` split (4,112 classes, 28x28), Conv4-64, ProtoNet, 60-way 1-shot
5-query training episodes, Adam 1e-3 constant; every `--eval-every` steps an evaluation on the same 600 fixed 5-way
1-shot 15-query episodes of the `test` split (metassl's `--split test --seed 0` episodes, exported by `prepare` to
one file all three read); the clock runs only while training. Each library trains with its own pipeline and model:
- metassl: its Trainer (`Trainer.train_step`: episode sampling from the in-memory split, preprocessing, the step);
  the protonet_demo preset with the protocol's overrides;
- easyfsl: a FewShotDataset over the image folder `prepare` writes (PIL, ToTensor-like: white background = 1, as
  easyfsl's Omniglot example), its TaskSampler + DataLoader (no worker processes: one core each) and
  PrototypicalNetworks (scores -torch.cdist) on a Conv4-64 of torch's default layers and initialization;
- learn2learn: MetaDataset + TaskDataset (NWays, KShots, LoadData, RemapLabels, ConsecutiveLabels) over the same
  folder, inverted (1 - x) as its Omniglot example, its CNN4Backbone(64, 4 layers, 1 channel, max-pool) and the
  loss of its ProtoNet example (squared Euclidean distance).
Evaluation, the same for all (what each library's evaluation computes, BatchNorm in eval mode): every distinct image
of the 600 episodes is embedded once, then prototypes and the nearest prototype per episode; the argmax does not
depend on whether the distance is squared. Each library's own input convention (inversion or not) is applied to
the same uint8 pixels.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("PEERS_DATA", HERE / ".peers-data"))
EPISODES = DATA / "test_episodes_5w1s15q_seed0.pt"
FOLDER = DATA / "omniglot_train"
PROTOCOL = dict(ways=60, shots=1, queries=5, lr=1e-3, eval_ways=5, eval_shots=1, eval_queries=15, eval_episodes=600)


def sha(t) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


# -- prepare (main environment) ----------------------------------------------------------------------------------

def prepare(a) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from metassl.data import eval_episodes, load_dataset

    DATA.mkdir(parents=True, exist_ok=True)
    test = load_dataset("omniglot", "test", image_size=28)
    p = PROTOCOL
    t = eval_episodes(test, p["eval_ways"], p["eval_shots"], p["eval_queries"], 0, 0, p["eval_episodes"])
    e = t.support_x.shape[0]
    allx = torch.cat([t.support_x, t.query_x], 1)  # [E, 80, 1, 28, 28] uint8, as stored (white background)
    images, index = torch.unique(allx.flatten(0, 1).flatten(1), dim=0, return_inverse=True)
    out = {"images": images.view(-1, 1, 28, 28), "index": index.view(e, -1), "support": t.support_x.shape[1],
           "support_y": t.support_y, "query_y": t.query_y, "sha256": sha(allx),
           "protocol": "omniglot test, 5-way 1-shot 15-query, seed 0, episodes 0-599 (metassl eval_episodes)"}
    assert torch.equal(out["images"][out["index"].flatten()].view_as(allx), allx)
    torch.save(out, EPISODES)
    train = load_dataset("omniglot", "train", image_size=28)
    written = 0
    if not (FOLDER / "done").is_file():
        for c in range(len(train.class_names)):
            d = FOLDER / f"{c:04d}"
            d.mkdir(parents=True, exist_ok=True)
            o = int(train.offsets[c]) if hasattr(train, "offsets") else int(train.counts[:c].sum())
            for j in range(int(train.counts[c])):
                Image.fromarray(train.images[o + j, 0].numpy()).save(d / f"{j:02d}.png")
                written += 1
        (FOLDER / "done").write_text(f"{len(train.class_names)} classes\n")
    # the folder holds exactly metassl's pixels
    c = len(train.class_names) - 1
    o = int(train.counts[:c].sum())
    back = torch.from_numpy(np.asarray(Image.open(FOLDER / f"{c:04d}" / "19.png")))
    assert torch.equal(back, train.images[o + 19, 0]), "image folder differs from metassl's pixels"
    return {"episodes": str(EPISODES), "sha256": out["sha256"], "distinct_images": int(images.shape[0]),
            "folder": str(FOLDER), "classes": len(train.class_names), "written": written}


# -- shared evaluation -------------------------------------------------------------------------------------------

class FixedEval:
    """The 600 fixed episodes; `__call__(embed, prep, screen)`: mean 5-way accuracy (%) over the first `screen`
    episodes (all 600 when None), `embed` in eval mode on channels-last chunks of 32 distinct images (the layout and
    size that run fastest on one core here, for every library alike)."""

    def __init__(self):
        import torch

        self.d = torch.load(EPISODES)
        d = self.d
        allx = d["images"][d["index"].flatten()].view(*d["index"].shape, 1, 28, 28)
        self.sha256 = sha(allx)  # what is evaluated: checked against the file's and metassl's hash by the caller
        assert self.sha256 == d["sha256"]
        self.subsets = {}

    def subset(self, n: int | None):
        import torch

        d = self.d
        if n is None or n >= len(d["index"]):
            return d["images"], d["index"], d["support_y"], d["query_y"]
        if n not in self.subsets:
            used, inv = torch.unique(d["index"][:n], return_inverse=True)
            self.subsets[n] = d["images"][used], inv, d["support_y"][:n], d["query_y"][:n]
        return self.subsets[n]

    def __call__(self, embed, prep, screen: int | None = None, chunk: int = 32) -> float:
        import torch

        images, index, sy, qy = self.subset(screen)
        s = self.d["support"]
        with torch.inference_mode():
            z = torch.cat([embed(prep(images[i:i + chunk]).contiguous(memory_format=torch.channels_last))
                           for i in range(0, len(images), chunk)])
            z = z[index]  # [E, 80, D]
            ways = int(sy.max()) + 1
            onehot = torch.nn.functional.one_hot(sy, ways).float()
            protos = onehot.transpose(1, 2) @ z[:, :s] / onehot.sum(1).unsqueeze(-1)
            dist = (z[:, s:].unsqueeze(2) - protos.unsqueeze(1)).pow(2).sum(-1)
            acc = (dist.argmin(-1) == qy).float().mean(1)
        return float(acc.mean() * 100)


def to_unit(x):
    return x.float().div(255.0)


# -- the three libraries -----------------------------------------------------------------------------------------

def folder_items():
    classes = sorted(p for p in FOLDER.iterdir() if p.is_dir())
    files, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted(c.glob("*.png")):
            files.append(f)
            labels.append(i)
    return files, labels


def image_folder_dataset(base, invert: bool):
    """A map-style Dataset over the image folder: PIL decode, then ToTensor's conversion ([1, 28, 28] in [0, 1])."""
    import numpy as np
    import torch
    from PIL import Image

    files, labels = folder_items()

    class Folder(base):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            with Image.open(files[i]) as im:
                x = torch.from_numpy(np.array(im.convert("L"), dtype=np.uint8)).unsqueeze(0).float().div(255.0)
            return (1.0 - x if invert else x), labels[i]

        def get_labels(self):
            return labels

    return Folder(), labels


def conv4_torch():
    from torch import nn

    layers, c = [], 1
    for _ in range(4):
        layers += [nn.Conv2d(c, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2)]
        c = 64
    return nn.Sequential(*layers, nn.Flatten())


class Metassl:
    def __init__(self, a):
        import torch

        from metassl.config import load_config
        from metassl.data import Preprocess
        from metassl.engine.trainer import Trainer

        p = PROTOCOL
        overrides = [f"seed={a.seed}", f"tasks.ways={p['ways']}", f"tasks.shots={p['shots']}",
                     f"tasks.queries={p['queries']}", f"optim.lr={p['lr']}", "optim.schedule=constant",
                     f"train.steps={a.max_steps}", "train.threads=1",
                     "train.report=false", "train.progress=false", "train.tensorboard=false",
                     *[s for s in a.set if not s.startswith("x.")]]
        extra = dict(s[2:].split("=", 1) for s in a.set if s.startswith("x."))
        self.cfg = load_config("omniglot/protonet_demo", overrides)
        self.tmp = tempfile.TemporaryDirectory()
        self.tr = Trainer(self.cfg, Path(self.tmp.name) / "run", echo=lambda *x, **k: None)
        if extra.get("invert") == "0":  # the images as stored: white background = 1 (easyfsl's input)
            self.tr.preprocess = Preprocess(invert=False)
        if extra.get("init") == "l2l":  # learn2learn's ConvBlock: xavier-uniform conv, zero bias, BN weight U(0,1)
            with torch.no_grad():
                for m in self.tr.model.learner.encoder.modules():
                    if isinstance(m, torch.nn.Conv2d):
                        torch.nn.init.xavier_uniform_(m.weight)
                        torch.nn.init.zeros_(m.bias)
                    elif isinstance(m, torch.nn.BatchNorm2d):
                        torch.nn.init.uniform_(m.weight)
            names = {id(v): k for k, v in self.tr.model.params.items()}
            assert all(id(v) in names for m in self.tr.model.learner.encoder.modules()
                       for v in m.parameters(recurse=False)), "encoder parameters are not the trained ones"
        self.extra = extra

    def step(self):
        self.tr.train_step()

    def embed(self, x):
        m = self.tr.model
        m.train(False)
        z = m.learner.embed(m.params, m.buffers, x)
        return z

    def prep(self, x):
        return self.tr.preprocess(x)

    def eval_speed(self, episodes: int) -> float:
        from metassl.data import load_dataset
        from metassl.eval.episodes import Protocol, evaluate

        test = load_dataset("omniglot", "test", image_size=28)
        p = PROTOCOL
        m = self.tr.model
        m.train(False)
        proto = Protocol("omniglot", "test", p["eval_ways"], p["eval_shots"], p["eval_queries"], episodes, 0)
        t0 = time.perf_counter()
        evaluate(m.predict, test, proto, self.tr.preprocess, self.cfg.eval.batch_episodes)
        return time.perf_counter() - t0


class Easyfsl:
    def __init__(self, a):
        import torch

        sys.path.insert(0, str(HERE))
        from maml_worker import stub_torchvision

        stub_torchvision()
        import easyfsl
        from easyfsl.datasets import FewShotDataset
        from easyfsl.methods import PrototypicalNetworks
        from easyfsl.samplers import TaskSampler
        from torch.utils.data import DataLoader

        self.version = easyfsl.__version__ if hasattr(easyfsl, "__version__") else "1.5.0"
        extra = dict(s.split("=", 1) for s in a.set)
        random.seed(a.seed)
        torch.manual_seed(a.seed)
        import inspect

        from torch.utils.data import Sampler
        if "data_source" not in inspect.signature(Sampler.__init__).parameters:
            # easyfsl 1.5.0's TaskSampler calls Sampler.__init__(data_source=None), an argument torch >= 2.2 dropped
            Sampler.__init__ = lambda self, data_source=None: None
        ds, _ = image_folder_dataset(FewShotDataset, invert=False)
        p = PROTOCOL
        sampler = TaskSampler(ds, n_way=p["ways"], n_shot=p["shots"], n_query=p["queries"], n_tasks=a.max_steps + 10)
        self.loader = iter(DataLoader(ds, batch_sampler=sampler, num_workers=0, collate_fn=sampler.episodic_collate_fn))
        self.model = PrototypicalNetworks(conv4_torch())
        if extra.get("distance") == "squared":
            model = self.model
            model.l2_distance_to_prototypes = lambda q: -torch.cdist(q, model.prototypes).pow(2)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=p["lr"])
        self.loss = torch.nn.CrossEntropyLoss()

    def step(self):
        sx, sy, qx, qy, _ = next(self.loader)
        self.model.train()
        self.opt.zero_grad()
        self.model.process_support_set(sx, sy)
        loss = self.loss(self.model(qx), qy)
        loss.backward()
        self.opt.step()

    def embed(self, x):
        self.model.eval()
        return self.model.backbone(x)

    def prep(self, x):
        return to_unit(x)

    def eval_speed(self, episodes: int) -> float:
        """easyfsl's evaluation loop (its `evaluate_on_one_task`: process_support_set, then forward) per episode."""
        import torch

        d = FixedEval().d
        s = d["support"]
        self.model.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            for e in range(episodes):
                x = to_unit(d["images"][d["index"][e]])
                self.model.process_support_set(x[:s], d["support_y"][e])
                self.model(x[s:]).detach().data.argmax(1)
        return time.perf_counter() - t0


class L2l:
    def __init__(self, a):
        import numpy as np
        import torch

        sys.path.insert(0, str(HERE))
        from maml_worker import import_learn2learn

        l2l = import_learn2learn()
        self.version = l2l.__version__
        random.seed(a.seed)
        np.random.seed(a.seed)
        torch.manual_seed(a.seed)
        ds, labels = image_folder_dataset(torch.utils.data.Dataset, invert=True)
        by_label: dict[int, list[int]] = {}
        for i, y in enumerate(labels):
            by_label.setdefault(y, []).append(i)
        meta = l2l.data.MetaDataset(ds, labels_to_indices=by_label)  # given: saves reading every image once
        p = PROTOCOL
        tf = l2l.data.transforms
        self.tasks = l2l.data.TaskDataset(meta, task_transforms=[
            tf.NWays(meta, p["ways"]), tf.KShots(meta, p["shots"] + p["queries"]), tf.LoadData(meta),
            tf.RemapLabels(meta), tf.ConsecutiveLabels(meta)], num_tasks=-1)
        self.model = l2l.vision.models.CNN4Backbone(hidden_size=64, layers=4, channels=1, max_pool=True)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=p["lr"])

    def fast_adapt(self, data, labels, ways, shot, query):
        """The loss of learn2learn's ProtoNet example (examples/vision/protonet_miniimagenet.py)."""
        import numpy as np
        import torch
        import torch.nn.functional as F

        sort = torch.sort(labels)
        data, labels = data[sort.indices], labels[sort.indices]
        z = self.model(data)
        support = np.zeros(data.size(0), dtype=bool)
        sel = np.arange(ways) * (shot + query)
        for off in range(shot):
            support[sel + off] = True
        q = torch.from_numpy(~support)
        s = torch.from_numpy(support)
        protos = z[s].reshape(ways, shot, -1).mean(dim=1)
        zq = z[q]
        n, m = zq.shape[0], protos.shape[0]
        logits = -((zq.unsqueeze(1).expand(n, m, -1) - protos.unsqueeze(0).expand(n, m, -1)) ** 2).sum(dim=2)
        return F.cross_entropy(logits, labels[q].long()), logits

    def step(self):
        p = PROTOCOL
        data, labels = self.tasks.sample()
        self.model.train()
        self.opt.zero_grad()
        loss, _ = self.fast_adapt(data, labels, p["ways"], p["shots"], p["queries"])
        loss.backward()
        self.opt.step()

    def embed(self, x):
        self.model.eval()
        return self.model(x)

    def prep(self, x):
        return 1.0 - to_unit(x)

    def eval_speed(self, episodes: int) -> float:
        """learn2learn's example evaluation: fast_adapt on each test episode in eval mode."""
        import torch

        d = FixedEval().d
        s = d["support"]
        self.model.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            for e in range(episodes):
                x = self.prep(d["images"][d["index"][e]])
                # support first, then queries class by class: labels as the sampled task's (sorted by the loss)
                y = torch.cat([d["support_y"][e], d["query_y"][e]])
                self.fast_adapt(x, y, PROTOCOL["eval_ways"], PROTOCOL["eval_shots"], PROTOCOL["eval_queries"])
        return time.perf_counter() - t0


LIBS = {"metassl": Metassl, "easyfsl": Easyfsl, "l2l": L2l}


def tta(a) -> dict:
    """Train to `--stop` % (or `--max-steps`), evaluating every `--eval-every` steps; the clock stops while evaluating."""
    import torch

    torch.set_num_threads(1)
    fixed = FixedEval()
    lib = LIBS[a.lib](a)
    curve, clock, step = [], 0.0, 0
    while step < a.max_steps:
        t0 = time.perf_counter()
        for _ in range(a.eval_every):
            lib.step()
        clock += time.perf_counter() - t0
        step += a.eval_every
        t1 = time.perf_counter()
        # a screen on the first episodes; the 600 only when the screen is within `--margin` of the lowest target
        # (a 50-episode mean is within about 0.7 point of the 600-episode one: the margin is several of those)
        point = {"step": step, "seconds": round(clock, 3)}
        if a.screen:
            point["screen"] = round(fixed(lib.embed, lib.prep, a.screen), 3)
        if not a.screen or point["screen"] >= min(a.targets) - a.margin:
            point["accuracy"] = round(fixed(lib.embed, lib.prep), 3)
        point["eval_seconds"] = round(time.perf_counter() - t1, 2)
        curve.append(point)
        print(json.dumps(point), file=sys.stderr, flush=True)
        if point.get("accuracy", 0.0) >= a.stop:
            break
    return {"lib": a.lib, "seed": a.seed, "set": a.set, "curve": curve, "episodes_sha256": fixed.sha256,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "version": getattr(lib, "version", None)}


def speed(a) -> dict:
    """Training episodes/s (median step over `--steps` after `--warmup`) and evaluation episodes/s (`--eval-episodes`
    of the fixed episodes through the library's own evaluation)."""
    import torch

    torch.set_num_threads(1)
    lib = LIBS[a.lib](a)
    for _ in range(a.warmup):
        lib.step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        lib.step()
        times.append(time.perf_counter() - t0)
    lib.eval_speed(min(10, a.eval_episodes))  # warm-up
    ev = lib.eval_speed(a.eval_episodes)
    times.sort()
    return {"lib": a.lib, "seed": a.seed, "train_step_s": times[len(times) // 2], "train_steps": a.steps,
            "train_step_s_all": [round(t, 4) for t in times], "eval_episodes": a.eval_episodes,
            "eval_episodes_s": a.eval_episodes / ev, "torch": torch.__version__,
            "version": getattr(lib, "version", None)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("prepare", "tta", "speed"))
    ap.add_argument("--lib", choices=tuple(LIBS), default="metassl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], help="metassl: config overrides, and x.invert=0, x.init=l2l; "
                                                           "easyfsl: distance=squared")
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--stop", type=float, default=97.0)
    ap.add_argument("--targets", type=float, nargs="+", default=[95.0, 97.0])
    ap.add_argument("--screen", type=int, default=50, help="episodes of the screen (0: always all 600)")
    ap.add_argument("--margin", type=float, default=2.5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eval-episodes", type=int, default=100)
    a = ap.parse_args(argv)
    out = {"prepare": prepare, "tta": tta, "speed": speed}[a.what](a)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
