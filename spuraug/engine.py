"""The one training and evaluation loop every method uses (ERM, GroupDRO, JTT, DFR, DDB).

What a method changes is pluggable, not copied:

- *what is sampled*: one or more :class:`TrainSource` (a dataset plus a sampling rule:
  shuffle, weighted sampling with replacement, or an explicit index list such as JTT's
  upsampled error set). The first source defines the epoch; further sources (DDB's
  generated images) are cycled alongside it, each batch concatenated to the first.
- *what is minimised*: an :class:`Objective` receives the per-example losses together
  with ``y``, ``a``, ``index`` and ``source`` of the batch and returns the scalar to
  minimise (GroupDRO's online group weights, per-example weights, DDB's
  ``L_train + sum_c gamma_c * L_gen(class c)``).

Determinism: every epoch reseeds torch / numpy / random and the samplers from
``(seed, epoch)``, so a run resumed from ``last.pt`` continues exactly as an
uninterrupted one would (on CPU; CUDA kernels may differ in the last bits). On CUDA the
loop uses bf16 autocast, channels-last tensors and pinned host memory; the device is
always an argument, never implied.

Each evaluated epoch appends one JSON line to ``metrics.jsonl`` (see
``/work/brief/contracts.md``) with per-group metrics on every evaluation split, so any
model-selection rule can be applied afterwards; ``checkpoints/best.pt`` holds the model
selected online by the configured rule and ``checkpoints/last.pt`` everything needed to
resume. All files are written atomically (temporary file, then ``os.replace``).
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from spuraug.metrics import evaluate_predictions

#: Model-selection rules: name -> (evaluation split, metric). ``test_oracle`` is a
#: labelled reference only (it looks at test labels).
SELECTION_RULES: dict[str, tuple[str, str]] = {
    "val_worst_group_acc": ("val", "worst_group_acc"),
    "val_worst_class_acc": ("val", "worst_class_acc"),
    "test_oracle": ("test", "worst_group_acc"),
}


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------
# devices, seeds, files
# ----------------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a :class:`torch.device`; ``None`` or ``"auto"`` means CUDA when present."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A seed for ``(run seed, epoch, stream)``: the same on every resume."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    atomic_write_bytes(path, lambda h: torch.save(obj, h))


def atomic_write_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, lambda h: h.write((json.dumps(obj, indent=2) + "\n").encode()))


def load_state(path: Path, device: str | torch.device = "cpu") -> dict:
    """``torch.load`` with ``weights_only=True`` (state dicts and plain values only)."""
    return torch.load(path, map_location=device, weights_only=True)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ----------------------------------------------------------------------------------
# what is sampled
# ----------------------------------------------------------------------------------
class _EpochSampler(Sampler[int]):
    """Index order of one epoch of a :class:`TrainSource`, seeded per epoch."""

    def __init__(self, source: TrainSource, seed: int) -> None:
        self.source = source
        self.seed = seed

    def __len__(self) -> int:
        return self.source.epoch_size()

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed)
        src = self.source
        if src.weights is not None:
            w = torch.as_tensor(np.asarray(src.weights, dtype=np.float64))
            order = torch.multinomial(w, src.epoch_size(), replacement=True, generator=g)
            return iter(order.tolist())
        base = np.arange(len(src.dataset)) if src.indices is None else np.asarray(src.indices)
        if not src.shuffle:
            return iter(base.tolist())
        perm = torch.randperm(len(base), generator=g).numpy()
        return iter(base[perm].tolist())


@dataclass
class TrainSource:
    """A dataset to train on and how to sample it.

    - default: every example once per epoch, shuffled;
    - ``weights``: ``num_samples`` draws with replacement, probability proportional to
      ``weights`` (group-balanced sampling);
    - ``indices``: an explicit epoch (indices may repeat: JTT's upsampled error set).

    The dataset returns ``(x, y, a, index)``; ``a`` may be ``-1`` where unknown.
    """

    dataset: Dataset
    batch_size: int
    weights: Sequence[float] | np.ndarray | None = None
    num_samples: int | None = None
    indices: Sequence[int] | np.ndarray | None = None
    shuffle: bool = True
    drop_last: bool = False

    def epoch_size(self) -> int:
        if self.weights is not None:
            return int(self.num_samples if self.num_samples is not None else len(self.dataset))
        return len(self.dataset) if self.indices is None else len(self.indices)


def group_balanced_weights(g: np.ndarray, n_groups: int) -> np.ndarray:
    """Sampling weights ``1 / n_g`` so every non-empty group is drawn equally often."""
    counts = np.bincount(g, minlength=n_groups).astype(np.float64)
    return 1.0 / counts[g]


def resolve_num_workers(value: int | str, device: str | torch.device | None = None) -> int:
    """``loader.num_workers`` as a number: an int as given; ``"auto"`` from the cores this
    process may use (``os.sched_getaffinity``). On CUDA the model runs on the GPU and every
    core but one decodes (at most 16); on the CPU the training step needs the cores itself and
    decoding a batch costs a few percent of a ResNet-50 step, so one worker per 8 cores
    (at least 1) overlaps it without oversubscribing (docs/harness.md, "CPU training speed")."""
    if isinstance(value, bool):
        raise ValueError(f"loader.num_workers: expected an integer >= 0 or 'auto', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"loader.num_workers: expected an integer >= 0 or 'auto', got {value}")
        return value
    if value != "auto":
        raise ValueError(f"loader.num_workers: expected an integer >= 0 or 'auto', got {value!r}")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if resolve_device(device).type == "cuda":
        return max(1, min(16, cores - 1))
    return max(1, cores // 8)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    sampler: Sampler | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader set up for ``device`` (pinned memory on CUDA), deterministic in order."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        generator=g,
        persistent_workers=False,
    )


# ----------------------------------------------------------------------------------
# what is minimised
# ----------------------------------------------------------------------------------
@dataclass
class Batch:
    """One training step's examples, all sources concatenated.

    ``source`` holds each example's position in the ``sources`` mapping given to
    :func:`fit` (0 = the first, main, source); ``source_names`` names them.
    """

    x: torch.Tensor
    y: torch.Tensor
    a: torch.Tensor
    index: torch.Tensor
    source: torch.Tensor
    source_names: tuple[str, ...] = ()


class Objective:
    """Turns per-example losses into the scalar that is minimised.

    Subclasses override :meth:`__call__`; stateful objectives (GroupDRO's group
    weights) also :meth:`state_dict` / :meth:`load_state_dict` (saved in ``last.pt``)
    and may report values in :meth:`log` (added to the epoch's JSON line).
    The default is the mean loss (ERM).
    """

    def __call__(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        return losses.mean()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def log(self) -> dict:
        return {}


class WeightedObjective(Objective):
    """``sum_i w[index_i] * loss_i / sum_i w[index_i]`` over the main source's examples."""

    def __init__(self, weights: np.ndarray | torch.Tensor) -> None:
        self.weights = torch.as_tensor(np.asarray(weights), dtype=torch.float32)

    def __call__(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        w = self.weights.to(losses.device)[batch.index]
        return (w * losses).sum() / w.sum().clamp_min(1e-12)


# ----------------------------------------------------------------------------------
# prediction and evaluation
# ----------------------------------------------------------------------------------
def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def use_channels_last(model: nn.Module, device: torch.device, channels_last: bool | None = None) -> bool:
    """Whether ``model`` runs on channels-last tensors on ``device``: ``channels_last`` when
    given; else always on CUDA, and on the CPU where the model says it is faster
    (``model.cpu_channels_last``, measured per backbone: :class:`spuraug.models.ResNet50`)."""
    if channels_last is not None:
        return bool(channels_last)
    return device.type == "cuda" or bool(getattr(model, "cpu_channels_last", False))


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool | None = None) -> torch.Tensor:
    if channels_last is None:
        channels_last = device.type == "cuda"
    if channels_last and x.dim() == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool | None = None) -> nn.Module:
    """Move ``model`` to ``device``, in channels-last memory where :func:`use_channels_last` says."""
    model.to(device)
    if use_channels_last(model, device, channels_last):
        model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    features: bool = False,
    num_workers: int = 0,
    progress: bool = False,
    channels_last: bool | None = None,
) -> np.ndarray:
    """Logits (``features=False``) or penultimate embeddings (``model.features``) of
    every example of ``dataset``, in dataset order, as float32 numpy, model in eval mode."""
    device = resolve_device(device)
    cl = use_channels_last(model, device, channels_last)
    prepare_model(model, device, cl)
    was_training = model.training
    model.eval()
    loader = make_loader(dataset, batch_size, device, num_workers=num_workers)
    out = []
    for x, *_ in tqdm(loader, desc="predict", leave=False, disable=None if progress else True, file=sys.stderr):
        with _autocast(device):
            z = model.features(_to_device(x, device, cl)) if features else model(_to_device(x, device, cl))
        out.append(z.float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def per_example_losses(
    model: nn.Module,
    dataset: Dataset,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
) -> np.ndarray:
    """Cross-entropy loss of ``model`` (eval mode) on every example of ``dataset``, in
    dataset order (``float64``). Give the dataset its eval transform: DDB picks the K
    lowest-loss training images per class with it, JTT's error set uses the same pass."""
    logits = torch.from_numpy(predict(model, dataset, device, batch_size, num_workers=num_workers))
    y = torch.as_tensor(np.array(dataset.y if hasattr(dataset, "y") else _labels(dataset)))
    return F.cross_entropy(logits.double(), y.long(), reduction="none").numpy()


def _labels(dataset: Dataset) -> np.ndarray:
    return np.array([int(dataset[i][1]) for i in range(len(dataset))])


def evaluate(
    model: nn.Module,
    dataset: Any,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    train_group_counts: Sequence[int] | None = None,
    num_workers: int = 0,
    channels_last: bool | None = None,
) -> dict:
    """:func:`spuraug.metrics.evaluate_predictions` of ``model`` on a :class:`SpuriousDataset`."""
    logits = predict(model, dataset, device, batch_size, num_workers=num_workers, channels_last=channels_last)
    return evaluate_predictions(
        dataset.y, dataset.a, logits.argmax(1), dataset.n_classes, dataset.n_attributes, train_group_counts
    )


def selection_score(line: Mapping, rule: str) -> float:
    """The value model selection maximises for one JSON line of ``metrics.jsonl``."""
    if rule not in SELECTION_RULES:
        raise KeyError(f"unknown selection rule {rule!r}; known rules: {', '.join(SELECTION_RULES)}")
    split, metric = SELECTION_RULES[rule]
    if split not in line or line[split] is None:
        raise KeyError(f"selection rule {rule!r} needs {split!r} metrics in the JSON line")
    return float(line[split][metric])


def select_line(lines: Sequence[Mapping], rule: str = "val_worst_group_acc") -> Mapping:
    """The JSON line a selection rule picks (first maximum: earlier epochs win ties)."""
    if not lines:
        raise ValueError("no evaluated epochs to select from")
    best = lines[0]
    for line in lines[1:]:
        if selection_score(line, rule) > selection_score(best, rule):
            best = line
    return best


def read_jsonl(path: Path) -> list[dict]:
    """Every JSON line of ``path`` (a missing file is empty)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(s) for s in path.read_text().splitlines() if s.strip()]


# ----------------------------------------------------------------------------------
# optimisers
# ----------------------------------------------------------------------------------
def build_optimizer(
    params: Any, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """``sgd`` (with ``momentum``), ``adam`` or ``adamw`` over ``params``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise KeyError(f"unknown optimizer {name!r}; known: sgd, adam, adamw")


# ----------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------
@dataclass
class FitResult:
    """What :func:`fit` leaves behind: the model (with the LAST weights), the JSON lines,
    and the line the selection rule picked."""

    model: nn.Module
    history: list[dict]
    selected: dict | None
    out_dir: Path | None
    resumed_from_epoch: int = 0
    extra: dict = field(default_factory=dict)


def _cycle(loader_fn: Callable[[int], DataLoader]) -> Iterator:
    rnd = 0
    while True:
        yield from loader_fn(rnd)
        rnd += 1


def fit(
    model: nn.Module,
    sources: Mapping[str, TrainSource] | TrainSource,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    eval_sets: Mapping[str, Any] | None = None,
    *,
    objective: Objective | None = None,
    out_dir: str | os.PathLike | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    selection: str = "val_worst_group_acc",
    train_group_counts: Sequence[int] | None = None,
    eval_every: int = 1,
    eval_batch_size: int = 256,
    keep_epochs: Sequence[int] = (),
    num_workers: int = 0,
    progress: bool = True,
    max_steps_per_epoch: int | None = None,
    step_callback: Callable[[int, int], None] | None = None,
    channels_last: bool | None = None,
) -> FitResult:
    """Train ``model`` for ``epochs`` epochs over ``sources`` minimising ``objective``.

    After every ``eval_every``-th epoch (and the last) the model is evaluated on each of
    ``eval_sets`` (``{"val": ds, "test": ds}``, eval transforms) and one JSON line is
    appended to ``out_dir/metrics.jsonl``; ``out_dir/checkpoints/best.pt`` is the model
    state that ``selection`` prefers so far, ``last.pt`` the full state to resume from,
    ``epoch{NNN}.pt`` model states of the epochs in ``keep_epochs``. If ``out_dir``
    already holds ``last.pt`` the run resumes from it. A NaN or infinite loss raises
    :class:`NonFiniteLossError` before anything of that epoch is written.

    ``out_dir=None`` trains in memory (no files, no resume). ``channels_last`` (default: see
    :func:`use_channels_last`) sets the memory format of the model and its input batches.
    """
    device = resolve_device(device)
    if isinstance(sources, TrainSource):
        sources = {"train": sources}
    if not sources:
        raise ValueError("fit needs at least one training source")
    source_names = tuple(sources)
    objective = objective or Objective()
    eval_sets = dict(eval_sets or {})
    if selection not in SELECTION_RULES:
        raise KeyError(f"unknown selection rule {selection!r}; known rules: {', '.join(SELECTION_RULES)}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    out = Path(out_dir) if out_dir is not None else None
    ckpt_dir = out / "checkpoints" if out is not None else None
    metrics_path = out / "metrics.jsonl" if out is not None else None
    channels_last = use_channels_last(model, device, channels_last)
    prepare_model(model, device, channels_last)
    # the optimizer was built over parameters that `prepare_model` moved in place; its
    # state (momentum buffers) follows on load_state_dict.

    start_epoch, step = 0, 0
    best_score, best_epoch = -math.inf, None
    history: list[dict] = []
    if ckpt_dir is not None and (ckpt_dir / "last.pt").is_file():
        state = load_state(ckpt_dir / "last.pt", device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        objective.load_state_dict(state.get("objective", {}))
        start_epoch, step = int(state["epoch"]), int(state["step"])
        best_score = float(state["best_score"]) if state.get("best_epoch") is not None else -math.inf
        best_epoch = state.get("best_epoch")
        # a crash between the JSON line and last.pt leaves lines of a lost epoch: drop them
        history = [h for h in read_jsonl(metrics_path) if int(h["epoch"]) <= start_epoch]
        _rewrite_jsonl(metrics_path, history)
    elif metrics_path is not None and metrics_path.exists():
        metrics_path.unlink()  # lines without a checkpoint belong to nothing
    resumed_from = start_epoch

    def loader_for(name: str, src: TrainSource, epoch: int, rnd: int = 0) -> DataLoader:
        stream = source_names.index(name) * 100_003 + rnd
        sampler = _EpochSampler(src, epoch_seed(seed, epoch, stream))
        return make_loader(
            src.dataset, src.batch_size, device, sampler=sampler, num_workers=num_workers,
            drop_last=src.drop_last, seed=epoch_seed(seed, epoch, stream + 1),
        )

    model.train()
    for epoch in range(start_epoch + 1, epochs + 1):
        es = epoch_seed(seed, epoch, 7)
        random.seed(es)
        np.random.seed(es % 2**32)
        torch.manual_seed(es)
        main_name, main_src = source_names[0], sources[source_names[0]]
        main_loader = loader_for(main_name, main_src, epoch)
        extra_iters = {
            n: _cycle(lambda rnd, n=n, e=epoch: loader_for(n, sources[n], e, rnd + 1)) for n in source_names[1:]
        }
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model.train()
        loss_sum, n_seen, n_steps, t_train = 0.0, 0, 0, 0.0
        bar = tqdm(main_loader, desc=f"epoch {epoch}/{epochs}", leave=False, disable=None if progress else True,
                   file=sys.stderr, unit="batch")
        for x, y, a, idx in bar:
            t0 = time.perf_counter()
            parts = [(x, y, a, idx, 0)]
            for k, n in enumerate(source_names[1:], start=1):
                xe, ye, ae, ie = next(extra_iters[n])
                parts.append((xe, ye, ae, ie, k))
            batch = Batch(
                x=_to_device(torch.cat([p[0] for p in parts]), device, channels_last),
                y=torch.cat([torch.as_tensor(p[1]) for p in parts]).long().to(device),
                a=torch.cat([torch.as_tensor(p[2]) for p in parts]).long().to(device),
                index=torch.cat([torch.as_tensor(p[3]) for p in parts]).long().to(device),
                source=torch.cat([torch.full((len(p[1]),), p[4], dtype=torch.long) for p in parts]).to(device),
                source_names=source_names,
            )
            with _autocast(device):
                logits = model(batch.x)
            losses = F.cross_entropy(logits.float(), batch.y, reduction="none")
            loss = objective(losses, batch)
            if not torch.isfinite(loss):
                has_last = ckpt_dir is not None and (ckpt_dir / "last.pt").is_file()
                where = f"{ckpt_dir / 'last.pt'} (epoch {epoch - 1})" if has_last else "none (no epoch finished)"
                raise NonFiniteLossError(
                    f"training loss became {loss.item()} at epoch {epoch}, step {step + 1}; "
                    f"the run stopped. Last good checkpoint: {where}. "
                    "Lower the learning rate or check the data."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            n_steps += 1
            loss_sum += float(loss.detach()) * len(batch.y)
            n_seen += len(batch.y)
            t_train += time.perf_counter() - t0
            if step_callback is not None:
                step_callback(epoch, step)
            if max_steps_per_epoch is not None and n_steps >= max_steps_per_epoch:
                break
        bar.close()
        line: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "train_loss": loss_sum / max(n_seen, 1),
            "images_per_s": n_seen / t_train if t_train > 0 else None,
            "step_time_s": t_train / max(n_steps, 1),
            "peak_mem_mb": peak_memory_mb(device),
        }
        if epoch % eval_every == 0 or epoch == epochs:
            for name, ds in eval_sets.items():
                line[name] = evaluate(model, ds, device, eval_batch_size, train_group_counts, num_workers,
                                      channels_last=channels_last)
            obj_log = objective.log()
            if obj_log:
                line["objective"] = obj_log
            history.append(line)
            if SELECTION_RULES[selection][0] in line:
                score = selection_score(line, selection)
                if score > best_score:
                    best_score, best_epoch = score, epoch
                    if ckpt_dir is not None:
                        atomic_torch_save(_cpu_state(model), ckpt_dir / "best.pt")
            if metrics_path is not None:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(line) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            if progress:
                _print_epoch(line, eval_sets)
        if ckpt_dir is not None:
            if epoch in set(keep_epochs):
                atomic_torch_save(_cpu_state(model), ckpt_dir / f"epoch{epoch:03d}.pt")
            atomic_torch_save(
                {
                    "model": _cpu_state(model),
                    "optimizer": optimizer.state_dict(),
                    "objective": objective.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    "best_score": best_score if best_epoch is not None else 0.0,
                    "best_epoch": best_epoch,
                    "torch_rng": torch.get_rng_state(),
                },
                ckpt_dir / "last.pt",
            )
    selected = None
    if history and SELECTION_RULES[selection][0] in history[0]:
        selected = dict(select_line(history, selection))
    return FitResult(model=model, history=history, selected=selected, out_dir=out, resumed_from_epoch=resumed_from)


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _rewrite_jsonl(path: Path | None, lines: list[dict]) -> None:
    if path is None:
        return
    atomic_write_bytes(path, lambda h: h.write("".join(json.dumps(x) + "\n" for x in lines).encode()))


def _print_epoch(line: dict, eval_sets: Mapping[str, Any]) -> None:
    parts = [f"epoch {line['epoch']}", f"loss {line['train_loss']:.4f}"]
    for name in eval_sets:
        m = line.get(name)
        if m:
            parts.append(f"{name} wga {m['worst_group_acc']:.1f} avg {m['avg_acc']:.1f}")
    print("  ".join(parts), file=sys.stderr)
