"""Training throughput on several processes (torchrun) against one process, for the same config and global batch.

For each config (ProtoNet, MAML, SimCLR on Omniglot) and each process count, a fresh launch of the real command

    python -m torch.distributed.run --standalone --nproc_per_node=N -m metassl train PRESET key=value ... --run-dir DIR

trains with `train.log_every` small; the run's `metrics.jsonl` rows (`step`, `elapsed_s`) give the speed of the steps
after a warm-up: (last step - warm-up step) / (elapsed_s of the last row - elapsed_s of the first row at or after the
warm-up). The launch is stopped once `--seconds` of steps after the warm-up are logged. Throughput: global steps/s
(every process works on its share of the same global batch), and tasks/s (episodic learners: tasks_per_batch per
step) or images/s (SSL: source images per step, each giving two views). Ratio = N-process throughput / 1-process
throughput of the same config in the same run; scaling efficiency = ratio / N.

Each process uses `--threads` CPU threads (train.threads, OMP_NUM_THREADS; default 1, so that 2 processes use 2
cores), and so does the 1-process baseline; on a CPU a second baseline, 1 process with `--baseline-threads` threads
(default 2: what a user of a 2-core machine would otherwise run), is measured as well.

Communication: one more launch per N > 1 (this file, `--comm-worker`) builds each config's Trainer on N processes,
runs a few real steps, records every collective of one step (all-reduce / all-gather, with sizes: the flat gradient
all-reduce, the global BatchNorm statistics, the gathered SSL embeddings, the logged metrics), then replays that
sequence of collectives alone, in isolation, and times it (median of `--comm-repeats`). Its share = that time / the
N-process step time measured above. It leaves out the time a process waits for a slower one.

    python benchmarks/bench_distributed.py                          # CPU: --nproc 1 2, gloo, 1 thread per process
    python benchmarks/bench_distributed.py --device cuda --nproc 1 2 4 8   # one GPU per process, NCCL
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT_DEFAULT = ROOT / "results" / "distributed.md"

# name -> (preset, unit, the batch key, CPU default batch, CUDA default batch, extra overrides, warm-up steps)
CONFIGS = {
    "protonet": ("omniglot/protonet_5w1s", "tasks", "tasks.tasks_per_batch", 4, 32,
                 ["tasks.ways=20", "tasks.queries=5"], 5),
    # learner.path=auto times the vmap and loop paths in the first 6 steps: the warm-up covers them
    "maml": ("omniglot/maml_5w1s", "tasks", "tasks.tasks_per_batch", 8, 32, [], 10),
    "simclr": ("omniglot/simclr", "images", "tasks.batch_size", 128, 1024, [], 5),
}
LABEL = {"protonet": "ProtoNet, Conv4-64 with BatchNorm (global statistics on N processes), 20-way 1-shot tasks with 5 "
                     "queries per class", "maml": "MAML, Conv4-64 (per-task BatchNorm: nothing to share), 5-way 1-shot "
         "tasks with 1 query per class, 1 inner step, second order, `learner.path=auto`", "simclr": "SimCLR, Conv4-64 "
         "with BatchNorm (global statistics), 2 augmented views per image, projection 64-256-64, NT-Xent over the "
         "gathered embeddings"}
COMMON = ["train.progress=false", "train.tensorboard=false", "train.report=false", "train.val_every=0",
          "train.knn_every=0", "train.checkpoint_every=1000000"]
SECTION = re.compile(r"<!-- section:(\w+) -->\n(.*?)<!-- end section:\1 -->\n", re.S)


def overrides(name: str, batch: int, device: str, threads: int | None, log_every: int, steps: int) -> list[str]:
    preset, unit, key, _, _, extra, _ = CONFIGS[name]
    over = [f"{key}={batch}", *extra, *COMMON, f"train.device={device}", f"train.log_every={log_every}",
            f"train.steps={steps}"]
    if threads:
        over.append(f"train.threads={threads}")
    return over


def launch_cmd(n: int, preset: str, over: list[str], data_root: str | None, run_dir: str) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "metassl",
           "train", preset, *over]
    if data_root:
        cmd += ["--data-root", data_root]
    return cmd + ["--run-dir", run_dir]


# -- CPU use of the other jobs on this machine during a measurement ------------------------------------------------
def _busy_jiffies() -> int:
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    # user nice system irq softirq: guest time is already in user; idle, iowait and steal are not this machine's work
    return v[0] + v[1] + v[2] + v[5] + v[6]


def _procs() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU jiffies: utime + stime + cutime + cstime) of every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            s = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        f = s[s.rfind(")") + 2:].split()  # after the command name: state ppid pgrp session ... utime stime ...
        out[int(d)] = (int(f[1]), int(f[11]) + int(f[12]) + int(f[13]) + int(f[14]))
    return out


def descendants(root: int, procs: dict[int, tuple[int, int]] | None = None) -> set[int]:
    """`root` and every process below it (torchrun starts its workers in sessions of their own)."""
    procs = procs if procs is not None else _procs()
    tree, grew = {root}, True
    while grew:
        new = {p for p, (pp, _) in procs.items() if pp in tree and p not in tree}
        tree |= new
        grew = bool(new)
    return tree


def _tree_jiffies(root: int) -> int:
    procs = _procs()
    return sum(procs[p][1] for p in descendants(root, procs) if p in procs)


class CpuProbe:
    def __init__(self, root: int):
        self.root, self.t, self.busy, self.ours = root, time.perf_counter(), _busy_jiffies(), _tree_jiffies(root)

    def others(self) -> float:
        """Cores used on average by processes other than ours since the probe started."""
        hz = os.sysconf("SC_CLK_TCK")
        dt = time.perf_counter() - self.t
        busy = (_busy_jiffies() - self.busy) / hz
        ours = (_tree_jiffies(self.root) - self.ours) / hz
        return max(0.0, (busy - ours) / dt) if dt > 0 else 0.0


def _train_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("kind") == "train" and "elapsed_s" in r:
            rows.append(r)
    return rows


def _start_time(pid: int) -> str | None:
    try:
        s = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return s[s.rfind(")") + 2:].split()[19]  # field 22: start time (tells a reused pid apart)


def _stop(p: subprocess.Popen) -> None:
    tree = {pid: _start_time(pid) for pid in descendants(p.pid) - {p.pid}}
    try:
        _stop_launcher(p)
    finally:
        for pid, started in tree.items():  # workers torchrun left behind (our launch's own processes only)
            if started is not None and _start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def _stop_launcher(p: subprocess.Popen) -> None:
    if p.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(p.pid, sig)  # the launch's own session: torchrun and its workers
        except ProcessLookupError:
            return
        try:
            p.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def measure(a, name: str, n: int, threads: int | None, tmp: Path) -> dict:
    preset, unit, key, cpu_b, cuda_b, _, warmup = CONFIGS[name]
    batch = a.batch[name]
    run_dir = tmp / f"{name}-{n}x{threads}"
    over = overrides(name, batch, a.device, threads, a.log_every, a.max_steps)
    cmd = launch_cmd(n, preset, over, a.data_root, str(run_dir))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    log = open(tmp / f"{run_dir.name}.log", "w")
    t_launch = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=ROOT)
    probe, warm, rows, killed = None, None, [], False
    try:
        while True:
            done = p.poll() is not None
            rows = _train_rows(run_dir)
            if warm is None:
                warm = next((r for r in rows if r["step"] >= warmup), None)
                if warm is not None:
                    probe = CpuProbe(p.pid)
            if warm is not None and rows[-1]["elapsed_s"] - warm["elapsed_s"] >= a.seconds:
                break
            if done:
                break
            if time.perf_counter() - t_launch > a.launch_timeout:
                killed = True
                break
            time.sleep(0.25)
        others = probe.others() if probe else None
    finally:
        _stop(p)
        log.close()
    row = {"config": name, "nproc": n, "threads": threads, "batch": batch, "unit": unit,
           "cmd": cmd, "others_cores": others, "load1": float(open("/proc/loadavg").read().split()[0])}
    last = rows[-1] if rows else None
    if warm is None or last is None or last["step"] <= warm["step"]:
        tail = (tmp / f"{run_dir.name}.log").read_text()[-3000:]
        why = "timed out" if killed else f"exit {p.returncode}"
        print(f"{name} {n}x{threads}: no timed steps ({why}); log tail:\n{tail}", file=sys.stderr, flush=True)
        row["error"] = why
        return row
    dt = last["elapsed_s"] - warm["elapsed_s"]
    steps = last["step"] - warm["step"]
    row.update(steps_s=steps / dt, items_s=steps * batch / dt, step_ms=1000 * dt / steps, timed_steps=steps,
               timed_s=dt, warmup=warm["step"])
    return row


# -- the communication worker (run under torchrun) -----------------------------------------------------------------
def comm_worker(a) -> None:
    import torch
    import torch.distributed as td

    from metassl.config import load_config
    from metassl.engine.distributed import DistInfo
    from metassl.engine.trainer import Trainer

    dist = DistInfo.from_env()
    device = torch.device(a.device)
    out = {}
    for name in a.configs:
        preset = CONFIGS[name][0]
        cfg = load_config(preset, overrides(name, a.batch[name], a.device, a.threads, 10 ** 6, 10 ** 6))
        tr = Trainer(cfg, Path(a.comm_dir) / name, data_root=a.data_root, dist=dist, echo=lambda *x, **k: None)
        dev = tr.device
        tr.train_step()
        while tr.runner is not None and tr.runner.plan:  # learner.path=auto: its timed trial steps
            tr.train_step()
        tr.train_step()
        calls = []
        orig = {"all_reduce": td.all_reduce, "all_gather": td.all_gather}

        def rec_reduce(t, *args, **kw):
            calls.append(("all_reduce", t.numel(), t.dtype))
            return orig["all_reduce"](t, *args, **kw)

        def rec_gather(parts, t, *args, **kw):
            calls.append(("all_gather", t.numel(), t.dtype))
            return orig["all_gather"](parts, t, *args, **kw)

        td.all_reduce, td.all_gather = rec_reduce, rec_gather
        try:
            tr.train_step()
        finally:
            td.all_reduce, td.all_gather = orig["all_reduce"], orig["all_gather"]
        n_params = sum(p.numel() for p in tr.model.params.values())
        tr.logger.close()
        # the step's collectives, on tensors allocated beforehand
        ops = []
        for op, numel, dtype in calls:
            t = torch.zeros(numel, dtype=dtype, device=dev)
            parts = [torch.empty_like(t) for _ in range(dist.world_size)] if op == "all_gather" else None
            ops.append((op, t, parts))
        grad = max((o for o in ops if o[0] == "all_reduce"), key=lambda o: o[1].numel())

        def replay(seq):
            for op, t, parts in seq:
                if op == "all_reduce":
                    td.all_reduce(t)
                else:
                    td.all_gather(parts, t)

        def timed(seq) -> float:
            for _ in range(3):
                replay(seq)
            times = []
            for _ in range(a.comm_repeats):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                td.barrier()
                t0 = time.perf_counter()
                replay(seq)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                times.append(time.perf_counter() - t0)
            # the slowest rank's time is the step's: take the max over the ranks of each rank's median
            med = torch.tensor([statistics.median(times)], dtype=torch.float64, device=dev)
            td.all_reduce(med, op=td.ReduceOp.MAX)
            return float(med)

        out[name] = {"params": n_params, "grad_numel": grad[1].numel(), "collectives": len(ops),
                     "ops": {op: sum(1 for o in ops if o[0] == op) for op in ("all_reduce", "all_gather")},
                     "bytes": sum(t.numel() * t.element_size() for _, t, _ in ops),
                     "grad_ms": 1000 * timed([grad]), "step_comm_ms": 1000 * timed(ops)}
        del tr
    if dist.is_main:
        Path(a.comm_out).write_text(json.dumps(out))
    td.barrier()
    td.destroy_process_group()


def measure_comm(a, n: int, tmp: Path) -> dict:
    out = tmp / f"comm-{n}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", __file__,
           "--comm-worker", "--comm-dir", str(tmp / f"comm-{n}"), "--comm-out", str(out), "--device", a.device,
           "--configs", *a.configs, "--comm-repeats", str(a.comm_repeats),
           *[f"--{k}-batch={a.batch[k]}" for k in CONFIGS]]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    if a.data_root:
        cmd += ["--data-root", a.data_root]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.launch_timeout * len(a.configs),
                       cwd=ROOT)
    if r.returncode != 0 or not out.is_file():
        print(f"communication worker on {n} processes failed ({r.returncode}):\n{r.stderr[-3000:]}", file=sys.stderr)
        return {}
    return json.loads(out.read_text())


# -- the table -----------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def render_section(a, env: dict, rows: list[dict], comm: dict[int, dict]) -> str:
    cuda = a.device == "cuda"
    lines = [f"## {'GPU' if cuda else 'CPU'}: {env['device']}, torch {env['torch']}", ""]
    lines.append(f"Command ({env['date']}, {env['cpus']} CPU cores): `{env['command']}`. Each row is a fresh launch; "
                 f"{a.seconds:g} s of steps timed after the warm-up (ProtoNet and SimCLR 5 steps, MAML 10: "
                 f"`learner.path=auto` times both paths in its first 6), logged every {a.log_every} steps. "
                 f"Machine load before the run (1-minute average): {env['load_before']:.2f}.")
    lines.append("")
    for name in a.configs:
        preset, unit, key, _, _, extra, _ = CONFIGS[name]
        lines.append(f"- **{name}**: `{preset}` with `{' '.join([f'{key}={a.batch[name]}', *extra])}`: "
                     f"{LABEL[name]}.")
    lines.append("")
    lines.append("| config (global batch) | processes × threads | steps/s | tasks/s or images/s | ratio to 1 × "
                 f"{a.threads} | scaling efficiency | ratio to 1 × {a.baseline_threads or '(none)'} | gradient "
                 "all-reduce | all collectives of a step | communication share | other jobs (cores) |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in a.configs:
        mine = [r for r in rows if r["config"] == name]
        base = next((r for r in mine if r["nproc"] == 1 and r["threads"] == a.threads and "error" not in r), None)
        base2 = next((r for r in mine if r["nproc"] == 1 and r["threads"] == a.baseline_threads
                      and a.baseline_threads != a.threads and "error" not in r), None)
        unit = CONFIGS[name][1]
        for r in sorted(mine, key=lambda r: (r["nproc"], r["threads"] or 0)):
            label = f"{name} ({r['batch']} {unit})"
            pt = f"{r['nproc']} × {r['threads'] or 'default'}"
            if "error" in r:
                lines.append(f"| {label} | {pt} | failed ({r['error']}) | | | | | | | | |")
                continue
            ratio = r["items_s"] / base["items_s"] if base else None
            ratio2 = r["items_s"] / base2["items_s"] if base2 else None
            c = comm.get(r["nproc"], {}).get(name) if r["nproc"] > 1 else None
            grad = f"{c['grad_ms']:.2f} ms ({c['grad_numel']:,} floats)" if c else "-"
            allc = (f"{c['step_comm_ms']:.2f} ms ({c['ops']['all_reduce']} all-reduce"
                    + (f", {c['ops']['all_gather']} all-gather" if c["ops"]["all_gather"] else "")
                    + f", {c['bytes'] / 1e6:.2f} MB)") if c else "-"
            share = f"{100 * c['step_comm_ms'] / r['step_ms']:.1f}%" if c else "-"
            eff = f"{100 * ratio / r['nproc']:.0f}%" if ratio and r["nproc"] > 1 else "-"
            others = f"{r['others_cores']:.2f}" if r["others_cores"] is not None else "-"
            lines.append(f"| {label} | {pt} | {fmt(r['steps_s'])} | {fmt(r['items_s'])} {unit}/s | "
                         f"{f'{ratio:.2f}×' if ratio else '-'} | {eff} | {f'{ratio2:.2f}×' if ratio2 else '-'} | "
                         f"{grad} | {allc} | {share} | {others} |")
    lines.append("")
    lines += lost_time(a, rows, comm)
    if not cuda:
        lines += cpu_note(a, env, rows)
    lines.append("Exact launch of each row (here the 2-process rows; `--nproc_per_node=1` and `train.threads` for "
                 "the others, `OMP_NUM_THREADS` set to the thread count):")
    lines.append("")
    lines.append("```bash")
    shown = set()
    for r in rows:
        if r["config"] in shown or r["nproc"] != max(a.nproc):
            continue
        shown.add(r["config"])
        cmd = [("python" if c == sys.executable else c) for c in r["cmd"]]
        cmd[-1] = "RUN_DIR"
        lines.append(f"OMP_NUM_THREADS={r['threads']} " + shlex.join(cmd) if r["threads"] else shlex.join(cmd))
    lines.append("```")
    lines.append("")
    return "\n".join(lines)


def lost_time(a, rows: list[dict], comm: dict[int, dict]) -> list[str]:
    """Per config and N: the step time over ideal scaling (the 1-process step / N), and how much of it the replayed
    collectives account for; the rest is on the processes themselves (their share's compute, waiting)."""
    parts = []
    for name in a.configs:
        base = next((r for r in rows if r["config"] == name and r["nproc"] == 1 and r["threads"] == a.threads
                     and "error" not in r), None)
        for r in rows:
            c = comm.get(r["nproc"], {}).get(name)
            if base is None or r["config"] != name or r["nproc"] == 1 or "error" in r or not c:
                continue
            ideal = base["step_ms"] / r["nproc"]
            lost = r["step_ms"] - ideal
            if lost <= 0:
                parts.append(f"{name} on {r['nproc']}: {r['step_ms']:.0f} ms per step, at or under the ideal "
                             f"{ideal:.0f} ms")
            else:
                parts.append(f"{name} on {r['nproc']}: {r['step_ms']:.0f} ms per step against an ideal {ideal:.0f} "
                             f"ms (1 process / {r['nproc']}), {lost:.0f} ms lost, of which the collectives account "
                             f"for {c['step_comm_ms']:.0f} ms ({100 * min(1.0, c['step_comm_ms'] / lost):.0f}%)")
    if not parts:
        return []
    return ["Where the time goes: " + "; ".join(parts) + ". The rest of the lost time is spent on the processes "
            "themselves (the compute of their share, which need not shrink N-fold, and waiting for each other), "
            "not in the collectives replayed above.", ""]


def cpu_note(a, env: dict, rows: list[dict]) -> list[str]:
    ok = [r for r in rows if "error" not in r and r["others_cores"] is not None]
    busy = [r for r in ok if r["others_cores"] > a.busy_cores]
    worst = max(ok, key=lambda r: r["others_cores"]) if ok else None
    n = max(a.nproc)
    text = (f"Note: {n} processes on a {env['cpus']}-core machine that other jobs share. Each process runs "
            f"{a.threads} thread (`train.threads={a.threads}`, `OMP_NUM_THREADS={a.threads}`), so the 1-process "
            f"baseline runs {a.threads} thread too: \"ratio to 1 × {a.threads}\" is the scaling at equal threads per "
            f"process.")
    if a.baseline_threads:
        text += (f" The 1 × {a.baseline_threads} row is what a user of this machine would otherwise run (one process "
                 f"using both cores through intra-op threads); \"ratio to 1 × {a.baseline_threads}\" compares "
                 f"torchrun on {n} processes against it.")
    text += (" Gloo runs the collectives on the same cores as the compute. Absolute speeds from a shared CPU count "
             "only as ratios measured in the same run.")
    if worst is None:
        pass
    elif busy:
        text += (f" The machine was not quiet during {len(busy)} of {len(ok)} rows: other jobs used up to "
                 f"{worst['others_cores']:.2f} cores ({worst['config']}, {worst['nproc']} × {worst['threads']}); "
                 f"those rows are slower than on a quiet machine and their ratios are less reliable (1-minute load "
                 f"{env['load_before']:.2f} before, {env['load_after']:.2f} after the run).")
    else:
        text += (f" The machine was quiet during the timed steps: other jobs used at most "
                 f"{worst['others_cores']:.2f} cores (1-minute load {env['load_before']:.2f} before the run, "
                 f"{env['load_after']:.2f} after, the benchmark's own processes included).")
    return [text, ""]


def gpu_placeholder() -> str:
    cmd = ("METASSL_DATA=../shared/data .venv/bin/python benchmarks/bench_distributed.py --device cuda "
           "--nproc 1 2 4 8")
    rows = []
    for name in CONFIGS:
        b, unit = CONFIGS[name][4], CONFIGS[name][1]
        for n in (1, 2, 4, 8):
            rows.append(f"| {name} ({b} {unit}) | {n} GPU{'s' if n > 1 else ''} × 1 thread | not yet run (no GPU "
                        f"in this session) | | | | | | |")
    return "\n".join([
        "## GPU: not yet run (no GPU in this session)", "",
        "One process per GPU (`train.device=cuda`: process k uses cuda:k), NCCL; the global batches are those a GPU "
        "can use (the CPU ones are too small for 8 processes: every process needs at least one task): ProtoNet 32 "
        "tasks of 20-way 1-shot 5 queries, MAML 32 tasks (the preset's meta-batch), SimCLR 1,024 images. The script "
        "replaces this section with its table.", "",
        f"Command: `{cmd}` (defaults on CUDA: `--protonet-batch 32 --maml-batch 32 --simclr-batch 1024 --threads 1"
        f" --seconds 30`; no second thread baseline).", "",
        "| config (global batch) | processes | steps/s | tasks/s or images/s | ratio to 1 GPU | scaling efficiency "
        "| gradient all-reduce | all collectives of a step | communication share |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|", *rows, ""])


def cpu_placeholder() -> str:
    return "## CPU: not yet run\n\nCommand: `python benchmarks/bench_distributed.py`\n"


def write_md(path: Path, key: str, section: str, header: str) -> None:
    old = path.read_text() if path.is_file() else ""
    sections = {k: v for k, v in SECTION.findall(old)}
    sections[key] = section
    sections.setdefault("cpu", cpu_placeholder())
    sections.setdefault("cuda", gpu_placeholder())
    body = "".join(f"<!-- section:{k} -->\n{sections[k].rstrip()}\n\n<!-- end section:{k} -->\n"
                   for k in ("cpu", "cuda"))
    path.write_text(header + "\n" + body)


HEADER = """# Training on several processes (torchrun): throughput against one process

Written by `benchmarks/bench_distributed.py` (do not edit by hand; a run replaces its device's section). The same
config and the same global batch on 1 and on N processes, each in a fresh launch of `python -m torch.distributed.run
--standalone --nproc_per_node=N -m metassl train ...`: every process draws the same global batch and keeps its share
(tasks for episodic learners, images for SSL), gradients are summed in one flat all-reduce per step, BatchNorm uses
global statistics, SimCLR gathers the embeddings (see `src/metassl/engine/distributed.py`). Speed comes from the
run's `metrics.jsonl` (`step`, `elapsed_s`, logged every few steps): the steps after a warm-up over the time they
took. steps/s are global steps (one global batch each); tasks/s counts tasks of the meta-batch, images/s source images
(two views each). Ratio = throughput / the 1-process throughput of the same config measured in the same run; scaling
efficiency = ratio / N. Communication: one step's collectives (recorded in a real step of an N-process Trainer:
gradient all-reduce, global BatchNorm statistics, gathered embeddings, logged metrics) replayed alone and timed
(median; the slowest process), as a share of the N-process step; it leaves out the time a process waits for a slower
one. "other jobs": cores used on average by processes other than the benchmark's during the timed steps (from
/proc/stat minus the launch's own CPU time).
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--nproc", type=int, nargs="+", default=None, help="process counts (default 1 2; 1 is the "
                    "baseline and is always measured)")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per process (train.threads)")
    ap.add_argument("--baseline-threads", type=int, default=None,
                    help="CPU: also 1 process with this many threads (default 2 on CPU, none on CUDA; 0: none)")
    for k in CONFIGS:
        ap.add_argument(f"--{k}-batch", type=int, default=None,
                        help=f"{CONFIGS[k][2]} (default {CONFIGS[k][3]} on CPU, {CONFIGS[k][4]} on CUDA)")
    ap.add_argument("--seconds", type=float, default=30.0, help="timed seconds of steps after the warm-up per row")
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--max-steps", type=int, default=100000, help="train.steps of each launch (stopped earlier)")
    ap.add_argument("--launch-timeout", type=float, default=300.0)
    ap.add_argument("--comm-repeats", type=int, default=30)
    ap.add_argument("--busy-cores", type=float, default=0.3,
                    help="CPU: a row during which other jobs used more cores than this is flagged in the note")
    ap.add_argument("--no-comm", action="store_true", help="skip the communication measurement")
    ap.add_argument("--data-root", default=os.environ.get("METASSL_DATA") or (
        str(ROOT.parent / "shared" / "data") if (ROOT.parent / "shared" / "data").is_dir() else None))
    ap.add_argument("--out", default=str(OUT_DEFAULT), help="markdown file to write (its device section)")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    ap.add_argument("--render-json", help="measure nothing: write the table from an earlier run's --json file")
    # internal: the communication worker under torchrun
    ap.add_argument("--comm-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--comm-dir", help=argparse.SUPPRESS)
    ap.add_argument("--comm-out", help=argparse.SUPPRESS)
    command = "python benchmarks/bench_distributed.py" + "".join(f" {shlex.quote(x)}" for x in sys.argv[1:])
    a = ap.parse_args()
    cuda = a.device == "cuda"
    a.batch = {k: getattr(a, f"{k}_batch") or CONFIGS[k][4 if cuda else 3] for k in CONFIGS}
    if a.comm_worker:
        return comm_worker(a)
    a.nproc = sorted(set([1, *(a.nproc or [1, 2])]))
    if a.baseline_threads is None:
        a.baseline_threads = 0 if cuda else 2
    if a.render_json:
        saved = json.loads(Path(a.render_json).read_text())
        for k, v in saved.get("args", {}).items():
            setattr(a, k, v)
        section = render_section(a, saved["env"], saved["rows"], {int(k): v for k, v in saved["comm"].items()})
        print(section)
        write_md(Path(a.out), "cuda" if a.device == "cuda" else "cpu", section, HEADER)
        return
    import torch

    if cuda and torch.cuda.device_count() < max(a.nproc):
        sys.exit(f"--nproc {max(a.nproc)} needs {max(a.nproc)} GPUs; {torch.cuda.device_count()} visible")
    for k in a.configs:
        if a.batch[k] < max(a.nproc):
            sys.exit(f"{k}: {CONFIGS[k][2]}={a.batch[k]} < {max(a.nproc)} processes (each needs a share)")
    env = {"torch": torch.__version__, "device": (f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}"
                                                  if cuda else cpu_model()),
           "cpus": os.cpu_count(), "date": date.today().isoformat(), "command": command,
           "load_before": float(open("/proc/loadavg").read().split()[0])}
    print(f"# {env}", flush=True)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    for name in a.configs:  # one config's rows close together in time: its ratios see the same machine
        plan = [(n, a.threads) for n in a.nproc]
        if a.baseline_threads and a.baseline_threads != a.threads:
            plan.insert(1, (1, a.baseline_threads))
        for n, th in plan:
            r = measure(a, name, n, th, tmp)
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "cmd"}), flush=True)
    comm = {}
    if not a.no_comm:
        for n in a.nproc:
            if n > 1:
                comm[n] = measure_comm(a, n, tmp)
                print(json.dumps({"comm_nproc": n, **comm[n]}), flush=True)
    env["load_after"] = float(open("/proc/loadavg").read().split()[0])
    section = render_section(a, env, rows, comm)
    print(section)
    write_md(Path(a.out), "cuda" if cuda else "cpu", section, HEADER)
    if a.json:
        args = {k: getattr(a, k) for k in ("device", "nproc", "configs", "threads", "baseline_threads", "batch",
                                           "seconds", "log_every", "busy_cores")}
        Path(a.json).write_text(json.dumps({"env": env, "args": args, "rows": rows, "comm": comm}, indent=1,
                                           default=str) + "\n")
    print(f"wrote {a.out}; launch logs in {tmp}")


if __name__ == "__main__":
    main()
