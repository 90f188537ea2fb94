"""``python -m bench.studies.channels_last_cpu``: ResNet-50 training steps on the CPU, contiguous vs channels-last.

The bare step (forward, cross-entropy, backward, SGD momentum) on one synthetic batch, the two
memory formats interleaved round by round (so a busy machine slows both alike), after one
warm-up step each. Writes ``results/throughput/<machine-id>/channels_last/<time>.json``; the
engine's CPU default (``spuraug.models.ResNet50.cpu_channels_last``) follows it
(docs/harness.md, "CPU training speed").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.provenance import machine_id
from bench.train_throughput import jemalloc_active
from spuraug import atomic
from spuraug.models import ToyCNN, build_model


def measure(batch: int = 16, rounds: int = 5, size: int = 224, model: str = "resnet50") -> dict:

    torch.manual_seed(0)
    nets = {}
    for fmt in ("contiguous", "channels_last"):
        m = ToyCNN(2, width=8) if model == "toy_cnn" else build_model(model, 2, pretrained=False)
        if fmt == "channels_last":
            m = m.to(memory_format=torch.channels_last)
        nets[fmt] = (m, torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9))
    x0 = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 2, (batch,))

    def step(fmt: str) -> float:
        m, opt = nets[fmt]
        x = x0.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else x0
        t = time.perf_counter()
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    times: dict[str, list[float]] = {k: [] for k in nets}
    for fmt in nets:
        step(fmt)
    for _ in range(rounds):
        for fmt in nets:
            times[fmt].append(step(fmt))
    out = {k: {"steps_s": [round(t, 3) for t in v], "images_per_s": batch * len(v) / sum(v),
               "median_images_per_s": batch / sorted(v)[len(v) // 2]} for k, v in times.items()}
    out["speedup"] = out["channels_last"]["images_per_s"] / out["contiguous"]["images_per_s"]
    return {"model": model, "batch": batch, "rounds": rounds, "image_size": size, "torch": torch.__version__,
            "threads": torch.get_num_threads(), **out}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.studies.channels_last_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--model", default="resnet50", choices=("resnet50", "toy_cnn"))
    p.add_argument("--note", default="")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    rec = {"what": "CPU training step, contiguous vs channels-last", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": machine_id(), "note": args.note, "jemalloc": jemalloc_active(),
           **measure(args.batch, args.rounds, args.size, args.model)}
    print(json.dumps(rec))
    out = Path(args.out) if args.out else (
        Path("results") / "throughput" / rec["machine"] / "channels_last" / (time.strftime("%Y%m%dT%H%M%S") + ".json"))
    atomic.write_json(out, rec)
    print(f"# written {out}", file=sys.stderr)
    return rec


if __name__ == "__main__":  # pragma: no cover
    main()
