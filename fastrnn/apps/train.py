"""Stateful truncated-BPTT training of the language model (characters or words), single process or DDP.

Shapes: B streams per process, T steps per batch, W processes, V vocabulary.

- Batches: see :mod:`fastrnn.apps.data`; each process owns B of the B * W streams. The recurrent state is
  carried from batch to batch (detached), and reset when the streams wrap around to their start.
- Optimiser: AdamW (decay on matrices only), gradient-norm clipping, linear warm-up then cosine decay. The
  loss is the cross-entropy, plus the AR/TAR activation penalties when they are on.
- Validation: the whole validation split, state carried through each stream; the mean loss and the
  next-token accuracy (argmax == target) come from the same pass.
- Schedule and budget: progress p = max(step / --steps, training seconds / --max-minutes). The cosine runs on
  p, and training stops when p reaches 1, so the learning rate anneals fully whichever budget binds first,
  even if the machine slows down mid-run (a step estimate taken early would not survive that). With
  ``--max-minutes 0`` p depends on the step alone and a run is bit-for-bit repeatable for a seed; a resumed run
  is then identical to an uninterrupted one (the checkpoint holds the optimiser, the carried state and the
  RNG of every process).
- Distributed: launched by torchrun (WORLD_SIZE > 1) it uses DDP over nccl (CUDA) or gloo (CPU). Only rank 0
  prints, logs and writes files; the clock and Ctrl-C are agreed on every few steps with an all-reduce, so all
  processes stop at the same step.
- Ctrl-C (or SIGTERM): finish the current step, save ``last.pt``, exit 130. A second Ctrl-C aborts at once;
  checkpoints are written atomically, so none is ever half-written.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from fastrnn.apps import checkpoint
from fastrnn.apps.config import LOCKED, TrainConfig, defaults_for, option_name
from fastrnn.apps.data import StreamBatches, Vocab, encode_corpus, load_corpus, val_streams
from fastrnn.apps.errors import AppError, ConfigMismatchError
from fastrnn.apps.metrics import CsvLog, bits, plot_losses
from fastrnn.apps.model import LanguageModel, State, activation_penalty, check_backend_device, detach_state, state_to
from fastrnn.apps.threads import ThreadTuner

#: steps between agreements on the clock and on Ctrl-C across processes (DDP only)
SYNC_EVERY = 10

#: exit status after a Ctrl-C that saved a resumable checkpoint
EXIT_INTERRUPTED = 130


@dataclass
class RunOptions:
    """Settings of one invocation that do not change what a run computes."""

    out: Path = Path("runs/charlm")  # the CLI picks runs/charlm or runs/wordlm (default_out)
    resume: str | None = None  # a checkpoint path, or "last" for <out>/last.pt
    overwrite: bool = False
    stop_after: int | None = None  # steps in this invocation; the schedule still runs over the whole budget
    backend: str = "auto"
    device: str | None = None  # None / "auto": CUDA if available, else CPU
    quiet: bool = False
    threads: int | None = None  # CPU intra-op threads; None: adaptive under a time budget (see threads.py)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(name: str | None, local_rank: int = 0) -> torch.device:
    """The training device: ``auto`` picks CUDA (this process's local GPU) when available, else the CPU."""
    if name in (None, "auto"):
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise AppError(f"unknown --device {name!r} (expected auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AppError(f"--device {name} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise AppError(f"--device {name} requested but MPS is not available")
    return dev


def _shown(key: str, value) -> str:
    """An option as the user would type it: ``--hidden 64``, ``--tie-weights`` / ``--no-tie-weights``."""
    if isinstance(value, bool):
        return option_name(key) if value else "--no-" + option_name(key)[2:]
    return f"{option_name(key)} {value}"


def resolve_config(overrides: dict, device: torch.device, ckpt: dict | None) -> TrainConfig:
    """Fill in the configuration: explicit options, else the resumed checkpoint's, else the default for the
    device, corpus and token kind (:func:`fastrnn.apps.config.defaults_for`).

    Raises:
        ConfigMismatchError: an explicit option changes a setting a resumed run must keep (:data:`LOCKED`).
        AppError: options that contradict each other.
    """
    if ckpt is None:
        cfg = defaults_for(device.type, overrides.get("data"), overrides.get("tokens"))
    else:
        cfg = TrainConfig.from_dict(ckpt["config"])
        for key in LOCKED:
            if key in overrides and overrides[key] != getattr(cfg, key):
                had = getattr(cfg, key)
                raise ConfigMismatchError(
                    f"cannot resume: {_shown(key, overrides[key])} differs from the checkpoint's "
                    f"{('on' if had else 'off') if isinstance(had, bool) else had} "
                    f"(tokens, architecture and stream layout must match)"
                )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    if ckpt is None and cfg.tie_weights and "embed" not in overrides:
        cfg.embed = cfg.hidden  # a tied embedding is as wide as the hidden layer
    if cfg.tie_weights and cfg.embed != cfg.hidden:
        raise AppError(f"--tie-weights needs --embed equal to --hidden (got --embed {cfg.embed}, "
                       f"--hidden {cfg.hidden}); drop --embed, or pass --no-tie-weights")
    if cfg.dtype == "bf16" and device.type not in ("cuda", "cpu"):
        raise AppError(f"--dtype bf16 needs a CUDA device or the CPU (training on {device.type}); use --dtype fp32")
    if cfg.min_lr > cfg.lr:
        if "min_lr" in overrides:
            raise AppError(f"--min-lr {cfg.min_lr:g} is larger than --lr {cfg.lr:g}")
        cfg.min_lr = cfg.lr / 10
    return cfg


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine from ``cfg.lr`` to ``cfg.min_lr`` over progress 0..1."""
    p = min(max(progress, 0.0), 1.0)
    lr = cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * p))
    if cfg.warmup > 0:
        lr *= min(1.0, (step + 1) / cfg.warmup)
    return lr


def progress(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """Fraction of the budget used: the larger of the step fraction and the time fraction."""
    p = step / cfg.steps
    if cfg.max_minutes > 0:
        p = max(p, elapsed / (cfg.max_minutes * 60.0))
    return p


class StopFlag:
    """First Ctrl-C / SIGTERM requests a clean stop; a second Ctrl-C aborts with KeyboardInterrupt."""

    def __init__(self, announce: bool) -> None:
        self.requested = False
        self.announce = announce
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            print("\nstopping after this step and saving a resumable checkpoint (Ctrl-C again to abort)",
                  file=sys.stderr, flush=True)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _pack_state(state: State | None) -> list[Tensor]:
    if state is None:
        return []
    return [s.detach().cpu() for s in (state if isinstance(state, tuple) else (state,))]


def _unpack_state(items: list[Tensor], device: torch.device) -> State | None:
    if not items:
        return None
    return state_to(items[0] if len(items) == 1 else tuple(items), device)


@torch.no_grad()
def evaluate(model: LanguageModel, batches: StreamBatches, device: torch.device, amp: bool,
             d: Dist | None = None) -> tuple[float, float]:
    """Mean validation loss (nats/token) and next-token accuracy over the whole split, in one pass.

    The state is carried through each stream. Accuracy counts the positions whose most likely token
    (argmax of the logits; the first on ties) is the target.
    """
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    hits = torch.zeros((), dtype=torch.float64, device=device)
    state = None
    for x, y in batches.chunks():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, state = model(x, state)
        logits = logits.float().flatten(0, 1)  # [B*T, V]
        total += F.cross_entropy(logits, y.flatten(), reduction="sum")
        hits += (logits.argmax(-1) == y.flatten()).sum()
    model.train()
    count = torch.tensor(float(batches.tokens_per_pass), dtype=torch.float64, device=device)
    sums = torch.stack([total, hits, count])
    if d is not None and d.world > 1:
        dist.all_reduce(sums)
    total, hits, count = sums.tolist()
    return total / count, hits / count


def _check_vocab(vocab: Vocab, old: Vocab) -> None:
    """Raise a one-line :class:`ConfigMismatchError` if the data's vocabulary is not the checkpoint's."""
    if vocab == old:
        return
    unit = old.unit
    if vocab.kind != old.kind:  # the token kind is locked already; kept for checkpoints edited by hand
        raise ConfigMismatchError(f"cannot resume: the checkpoint has a {unit} vocabulary, the run a {vocab.unit} one")
    new, gone = [t for t in vocab.tokens if t not in old.index], [t for t in old.tokens if t not in vocab.index]
    if unit == "character":
        shown = f"new: {''.join(new)[:20]!r}, missing: {''.join(gone)[:20]!r}"
    else:
        shown = f"new: {' '.join(new[:8])[:60]!r}, missing: {' '.join(gone[:8])[:60]!r}"
    if not new and not gone:
        shown = "same tokens in another order"
    raise ConfigMismatchError(
        f"cannot resume: the data's vocabulary ({len(vocab)} {unit}s) differs from the checkpoint's "
        f"({len(old)}); {shown}"
    )


def _check_out_dir(opts: RunOptions) -> None:
    last = opts.out / "last.pt"
    if opts.resume is None and not opts.overwrite and last.exists():
        raise AppError(
            f"{opts.out} already holds a run ({last.name}); continue it with --resume, "
            f"choose another --out, or pass --overwrite to start over"
        )


def run(overrides: dict, opts: RunOptions) -> int:
    """Train (or resume) a language model; returns the exit status. Sets up and tears down DDP if launched so."""
    d = Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
             int(os.environ.get("LOCAL_RANK", 0)))
    device = pick_device(opts.device, d.local_rank)
    if d.world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        try:
            return _train(overrides, opts, d, device)
        finally:
            dist.destroy_process_group()
    return _train(overrides, opts, d, device)


def _train(overrides: dict, opts: RunOptions, d: Dist, device: torch.device) -> int:
    threads = torch.get_num_threads()
    try:
        return _train_loop(overrides, opts, d, device)
    finally:
        torch.set_num_threads(threads)  # --threads / the tuner must not leak into an in-process caller


def _train_loop(overrides: dict, opts: RunOptions, d: Dist, device: torch.device) -> int:
    say = (lambda *a, **k: print(*a, **k, flush=True)) if d.main else (lambda *a, **k: None)
    opts.out = Path(opts.out)
    _check_out_dir(opts)
    ckpt = None
    if opts.resume is not None:
        ckpt = checkpoint.load(opts.out / "last.pt" if opts.resume == "last" else opts.resume)
    cfg = resolve_config(overrides, device, ckpt)
    check_backend_device(opts.backend, device)

    corpus = load_corpus(cfg.data)
    enc = encode_corpus(corpus, cfg.tokens)
    vocab = enc.vocab
    if ckpt is not None:
        _check_vocab(vocab, checkpoint.vocab_of(ckpt))
    fingerprint = hashlib.sha256(corpus.text.encode("utf-8")).hexdigest()
    if ckpt is not None and ckpt.get("data_sha256") not in (None, fingerprint):
        say("warning: the data differs from the text the checkpoint was trained on (same vocabulary)")
    unit = vocab.kind  # "char" or "word", for messages
    units = vocab.unit + "s"
    train_b = StreamBatches(enc.train.to(device), cfg.batch_size, cfg.seq_len, d.rank, d.world, "train", units)
    val_b = StreamBatches(enc.val.to(device), val_streams(len(enc.val), cfg.batch_size, cfg.seq_len, d.world),
                          cfg.seq_len, d.rank, d.world, "validation", units)

    torch.manual_seed(cfg.seed)
    model = LanguageModel(len(vocab), cfg.cell, cfg.hidden, cfg.layers, cfg.embed, cfg.dropout, opts.backend,
                          cfg.embed_dropout, cfg.tie_weights).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.99), fused=device.type == "cuda" or None)
    torch.manual_seed(cfg.seed + d.rank)  # dropout differs between processes

    step, elapsed, best, state = 0, 0.0, None, None
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ConfigMismatchError(f"cannot resume: checkpoint weights do not fit the model ({e})") from None
        step, elapsed, best = int(ckpt["step"]), float(ckpt.get("elapsed", 0.0)), ckpt.get("best_val")
        streams = ckpt.get("streams") or []
        if ckpt.get("world_size") == d.world and len(streams) == d.world:
            mine = streams[d.rank]
            state = _unpack_state(mine["state"], device)
            torch.set_rng_state(mine["rng"])
            if device.type == "cuda" and mine.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(mine["cuda_rng"], device)
        else:
            say(f"note: resuming with {d.world} process(es) instead of {ckpt.get('world_size')}: "
                f"the stream layout changes and the recurrent state restarts from zero")
    net = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if d.world > 1 else model
    amp = cfg.dtype == "bf16"
    tuner = None
    if device.type == "cpu":
        if opts.threads is not None:
            torch.set_num_threads(opts.threads)
        elif cfg.max_minutes > 0 and d.world == 1 and torch.get_num_threads() > 1:
            tuner = ThreadTuner([1, torch.get_num_threads()])

    n_params = sum(p.numel() for p in model.parameters())
    budget = f"{cfg.max_minutes:g} min or {cfg.steps:,} steps" if cfg.max_minutes > 0 else f"{cfg.steps:,} steps"
    say(f"{'resuming at step ' + str(step) if ckpt else 'training'}: {cfg.cell} {cfg.layers}x{cfg.hidden} "
        f"(embed {cfg.embed}, {n_params:,} parameters) on {device}"
        f"{f' x {d.world} processes' if d.world > 1 else ''}, {cfg.dtype}, backend {opts.backend}")
    n_tokens = len(enc.train) + len(enc.val)
    unk = f", {enc.unknown_val:,} validation words unseen in training -> <unk>" if enc.unknown_val else ""
    say(f"data: {corpus.name} ({n_tokens:,} {unit}s, vocabulary {len(vocab):,}{unk}; {len(enc.train):,} train, "
        f"{len(enc.val):,} validation); {cfg.batch_size * d.world} streams x {cfg.seq_len} steps; "
        f"budget {budget}; out {opts.out}")

    def save(kind: str) -> None:
        mine = {"state": _pack_state(state), "rng": torch.get_rng_state()}
        if device.type == "cuda":
            mine["cuda_rng"] = torch.cuda.get_rng_state(device)
        streams = [mine]
        if d.world > 1:
            streams = [None] * d.world
            dist.all_gather_object(streams, mine)
        if d.main:
            payload = {"config": cfg.to_dict(), "vocab": vocab.stored(), "model": model.state_dict(),
                       "optimizer": opt.state_dict(), "step": step, "elapsed": elapsed, "best_val": best,
                       "world_size": d.world, "streams": streams, "data_sha256": fingerprint, "kind": kind}
            checkpoint.save(payload, opts.out / "last.pt")
            if kind == "best":
                checkpoint.save(payload, opts.out / "best.pt")

    log = CsvLog(opts.out / "log.csv", step if ckpt is not None else None) if d.main else None
    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, unit="step", dynamic_ncols=True, disable=opts.quiet or not d.main,
               file=sys.stderr, mininterval=0.5)
    start_step, t0 = step, time.perf_counter()
    elapsed0, synced = elapsed, elapsed
    tokens_per_step = cfg.batch_size * cfg.seq_len * d.world
    loss_sum = torch.zeros((), device=device)
    n_loss, t_log, gnorm, val, acc, last_val_step = 0, t0, float("nan"), None, None, None
    reason = "done"
    speed_key = f"{unit}s/s"
    post = {"loss": "-", "val": "-", "acc": "-", "lr": "-", speed_key: "-"}  # progress-bar fields
    penalised = cfg.ar > 0 or cfg.tar > 0

    def validate() -> None:
        nonlocal val, acc, best, last_val_step
        val, acc = evaluate(model, val_b, device, amp, d)
        last_val_step = step
        improved = best is None or val < best
        best = val if improved else best
        save("best" if improved else "last")
        if d.main:
            log.write(step=step, epoch=step / train_b.steps_per_epoch, tokens=step * tokens_per_step,
                      elapsed_s=elapsed, lr=lr, val_loss=val, val_bits=bits(val), val_acc=acc)
            post.update(val=f"{val:.3f}", acc=f"{acc:.3f}")
            bar.set_postfix(post, refresh=False)
            bar.write(f"step {step:>6}  val {val:.4f} nats/{unit}  {bits(val):.4f} bits/{unit}  acc {acc:.4f}"
                      f"{'  (best)' if improved else ''}  [{elapsed / 60:.1f} min]", file=sys.stdout)
            sys.stdout.flush()

    lr = lr_at(cfg, step, progress(cfg, step, elapsed))
    with StopFlag(announce=d.main) as stop:
        while True:
            elapsed = elapsed0 + time.perf_counter() - t0
            if d.world == 1:
                synced, stopping = elapsed, stop.requested
            elif (step - start_step) % SYNC_EVERY == 0:
                agree = torch.tensor([elapsed, float(stop.requested)], dtype=torch.float64, device=device)
                dist.all_reduce(agree, op=dist.ReduceOp.MAX)
                synced, stopping = agree[0].item(), agree[1].item() > 0
            else:
                stopping = False
            p = progress(cfg, step, synced)
            if step >= cfg.steps or p >= 1.0:
                break
            if stopping:
                reason = "interrupted"
                break
            if opts.stop_after is not None and step - start_step >= opts.stop_after:
                reason = "paused"
                break
            if p > 0 and cfg.max_minutes > 0:
                bar.total = max(step + 1, min(cfg.steps, round(step / p)))

            t_step = time.perf_counter()
            if tuner is not None:
                tuner.before_step(t_step)
            x, y, reset = train_b.batch(step)
            if reset:
                state = None
            lr = lr_at(cfg, step, p)
            for group in opt.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                if penalised:
                    logits, state, hidden = net(x, state, return_hidden=True)
                else:
                    logits, state = net(x, state)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            (loss + activation_penalty(hidden, cfg.ar, cfg.tar) if penalised else loss).backward()
            if cfg.clip > 0:
                gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            state = detach_state(state)
            step += 1
            if tuner is not None:
                now = time.perf_counter()
                tuner.after_step(now - t_step, now)
            loss_sum += loss.detach()
            n_loss += 1
            bar.update(1)

            if step % cfg.log_every == 0:
                mean = loss_sum / n_loss
                if d.world > 1:
                    dist.all_reduce(mean)
                    mean /= d.world
                now = time.perf_counter()
                speed = n_loss * tokens_per_step / (now - t_log)
                gnorm = gn.item() if cfg.clip > 0 else float("nan")
                train_loss = mean.item()
                if d.main:
                    elapsed = elapsed0 + now - t0
                    log.write(step=step, epoch=step / train_b.steps_per_epoch, tokens=step * tokens_per_step,
                              elapsed_s=elapsed, lr=lr, train_loss=train_loss, tokens_per_s=speed, grad_norm=gnorm,
                              threads=torch.get_num_threads() if device.type == "cpu" else None)
                    post.update(loss=f"{train_loss:.3f}", lr=f"{lr:.1e}", **{speed_key: f"{speed / 1e3:.0f}k"})
                    bar.set_postfix(post, refresh=False)
                loss_sum.zero_()
                n_loss, t_log = 0, now
            if step % cfg.val_every == 0:
                t_val = time.perf_counter()
                elapsed = elapsed0 + t_val - t0
                validate()
                t_log += time.perf_counter() - t_val  # tokens/s counts training time only

        elapsed = elapsed0 + time.perf_counter() - t0
        if last_val_step != step and (step > start_step or best is None):
            validate()
        elif step > start_step or reason != "done":
            save("last")
    bar.close()
    if d.main:
        log.close()
        plot_losses(opts.out / "log.csv", opts.out / "loss.png", unit)
        cont = f"fastrnn train --out {opts.out} --resume"
        if reason == "interrupted":
            print(f"interrupted at step {step}; resumable checkpoint saved to {opts.out / 'last.pt'} "
                  f"(continue with: {cont})", file=sys.stderr)
        elif reason == "paused":
            print(f"paused at step {step} (--stop-after); continue with: {cont}")
        if val is not None:
            print(f"{'finished' if reason == 'done' else 'stopped'} at step {step} after {elapsed / 60:.2f} min: "
                  f"val {val:.4f} nats/{unit} ({bits(val):.4f} bits/{unit}) acc {acc:.4f}, best {best:.4f}; "
                  f"checkpoints {opts.out / 'best.pt'} and last.pt, log log.csv, plot loss.png")
        elif reason == "done":
            print(f"nothing to do: the checkpoint at step {step} already used its budget "
                  f"(raise --steps or --max-minutes to train further)")
    return EXIT_INTERRUPTED if reason == "interrupted" else 0
