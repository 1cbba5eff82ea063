"""lightly's side of bench_ssl.py, run with benchmarks/.venv-lightly/bin/python (lightly + torchvision; metassl is
not imported). A SimCLR training step as lightly's CIFAR-10 benchmark does it: a torchvision DataLoader (shuffle,
drop_last, N worker processes, pinned memory on CUDA) over CIFAR-10 images handed to the transform as PIL images,
lightly's SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0), torchvision's resnet18 with the CIFAR
stem (3x3 conv stride 1, no max-pool), SimCLRProjectionHead(512, 512, 128), NTXentLoss(temperature=0.5), SGD
(lr 0.06 x batch/128, momentum 0.9, weight decay 5e-4). Prints one JSON line: images/s and step time.

The images come from a .npy file (uint8 [N, 32, 32, 3]) that bench_ssl.py writes from the same CIFAR-10 copy, so
no PNG/JPEG decoding happens in the loop (which favours lightly slightly against its benchmark, which reads PNGs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from lightly.loss import NTXentLoss  # noqa: E402
from lightly.models.modules import SimCLRProjectionHead  # noqa: E402
from lightly.transforms import SimCLRTransform  # noqa: E402


class ArrayImages(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), 0


class SimCLR(nn.Module):
    def __init__(self):
        super().__init__()
        r = torchvision.models.resnet18()
        r.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        r.maxpool = nn.Identity()
        r.fc = nn.Identity()
        self.backbone = r
        self.projection_head = SimCLRProjectionHead(512, 512, 128)

    def forward(self, x):
        return self.projection_head(self.backbone(x).flatten(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--channels-last", type=int, default=1)
    ap.add_argument("--stat", choices=("median", "min"), default="median")
    a = ap.parse_args()
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    images = np.load(a.images)
    transform = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)
    loader = torch.utils.data.DataLoader(ArrayImages(images, transform), batch_size=a.batch_size, shuffle=True,
                                         drop_last=True, num_workers=a.workers, pin_memory=cuda,
                                         persistent_workers=a.workers > 0)
    model = SimCLR().to(device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = NTXentLoss(temperature=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.06 * a.batch_size / 128, momentum=0.9, weight_decay=5e-4)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if a.precision == "bf16" and cuda else contextlib.nullcontext()

    def batches():
        while True:
            yield from loader

    it = batches()

    def step():
        (x0, x1), _ = next(it)
        x0 = x0.to(device, non_blocking=True)
        x1 = x1.to(device, non_blocking=True)
        if a.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
            x1 = x1.contiguous(memory_format=torch.channels_last)
        with amp:
            loss = criterion(model(x0), model(x1))  # two forward passes, as lightly's benchmark
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)  # the benchmark logs the loss every step

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(a.warmup):
        step()
    sync()
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        sync()
        times.append((time.perf_counter() - t0) / a.steps)
    t = min(times) if a.stat == "min" else statistics.median(times)
    import lightly

    env = {"lightly": lightly.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
           "workers": a.workers, "device": torch.cuda.get_device_name(device) if cuda else platform.machine(),
           "threads": torch.get_num_threads()}
    print(json.dumps({"img_s": a.batch_size / t, "step_ms": 1000 * t, "env": env}))


if __name__ == "__main__":
    main()
