"""The ``fastrnn`` command line: ``train``, ``sample`` and ``bench``.

User errors (:class:`fastrnn.apps.errors.AppError`) print one line, ``fastrnn: error: ...``, and exit with
status 2, like argparse's own errors; no traceback. ``bench`` lives in :mod:`fastrnn.apps.bench`, imported only
when that subcommand is used.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fastrnn.apps.config import CPU_DEFAULTS, GPU_DEFAULTS, HUMAN_NUMBERS_DEFAULTS, TrainConfig
from fastrnn.apps.data import HUMAN_NUMBERS, TOKEN_KINDS, natural_tokens
from fastrnn.apps.errors import AppError
from fastrnn.apps.model import BACKENDS, CELLS

EXIT_USAGE = 2


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _non_negative(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    parse.__name__ = f"non-negative {kind.__name__}"
    return parse


def _fraction(text: str) -> float:
    value = _non_negative(float)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _default(field: str) -> str:
    """The defaults of a config field as help text: per device, and for human_numbers where it differs."""
    cpu, gpu, hn = (_fmt(getattr(c, field)) for c in (CPU_DEFAULTS, GPU_DEFAULTS, HUMAN_NUMBERS_DEFAULTS))
    text = cpu if cpu == gpu else f"{cpu} on CPU, {gpu} on CUDA"
    if hn != cpu or hn != gpu:
        text += f"; {hn} for --data {HUMAN_NUMBERS}"
    return f"(default: {text})"


def default_out(tokens: str | None, data: str | None) -> Path:
    """The default ``--out``: ``runs/charlm``, or ``runs/wordlm`` for word tokens (explicit or the corpus's)."""
    return Path("runs/wordlm" if (tokens or natural_tokens(data)) == "word" else "runs/charlm")


#: (flag, config field, argparse kwargs) of the options that feed TrainConfig; all default to None
_TRAIN_OPTIONS: list[tuple[str, str, dict]] = [
    ("--data", "data", dict(metavar="PATH", help=f"UTF-8 text file to train on, or {HUMAN_NUMBERS}: the numbers "
                                                 "1-7,999 and 8,001-9,999 in English words, generated (fast.ai's "
                                                 "corpus; a file of that name is ./human_numbers). Default: the "
                                                 "bundled Tiny Shakespeare. The first 90%% of the tokens trains, "
                                                 "the last 10%% validates (80%%/20%% for human_numbers)")),
    ("--tokens", "tokens", dict(choices=TOKEN_KINDS, help="char: one token per character; word: whitespace-"
                                                          "separated words, vocabulary from the training split, "
                                                          "<unk> for unseen validation words (default: word for "
                                                          f"--data {HUMAN_NUMBERS}, else char)")),
    ("--cell", "cell", dict(choices=CELLS, help="recurrent cell")),
    ("--layers", "layers", dict(type=_positive(int), metavar="N", help="stacked recurrent layers")),
    ("--hidden", "hidden", dict(type=_positive(int), metavar="H", help="hidden units per layer")),
    ("--embed", "embed", dict(type=_positive(int), metavar="E",
                              help="token embedding width (with --tie-weights: --hidden unless given)")),
    ("--dropout", "dropout", dict(type=_fraction, metavar="P", help="dropout between layers and before the output")),
    ("--embed-dropout", "embed_dropout", dict(type=_fraction, metavar="P",
                                              help="dropout on the embeddings (the recurrent input)")),
    ("--tie-weights", "tie_weights", dict(action=argparse.BooleanOptionalAction,
                                          help="share the embedding matrix with the output layer (embed = hidden)")),
    ("--ar", "ar", dict(type=_non_negative(float), metavar="ALPHA",
                        help="activation regularisation: adds ALPHA * mean(h^2) of the last layer's output")),
    ("--tar", "tar", dict(type=_non_negative(float), metavar="BETA",
                          help="temporal activation regularisation: adds BETA * mean((h_t - h_t-1)^2)")),
    ("--batch-size", "batch_size", dict(type=_positive(int), metavar="B",
                                        help="contiguous streams per process (each row continues the last batch)")),
    ("--seq-len", "seq_len", dict(type=_positive(int), metavar="T", help="steps of truncated BPTT per batch")),
    ("--lr", "lr", dict(type=_positive(float), help="peak learning rate of AdamW")),
    ("--min-lr", "min_lr", dict(type=_non_negative(float), help="learning rate at the end of the cosine decay")),
    ("--warmup", "warmup", dict(type=_non_negative(int), metavar="STEPS", help="linear warm-up steps")),
    ("--weight-decay", "weight_decay", dict(type=_non_negative(float), metavar="WD",
                                            help="AdamW weight decay (matrices only)")),
    ("--clip", "clip", dict(type=_non_negative(float), metavar="NORM", help="gradient-norm clip (0: off)")),
    ("--steps", "steps", dict(type=_positive(int), metavar="N", help="step budget")),
    ("--max-minutes", "max_minutes", dict(type=_non_negative(float), metavar="MIN",
                                          help="time budget of the training loop in minutes (0: none). The LR "
                                               "schedule runs on max(step/--steps, time/--max-minutes) and "
                                               "training stops at 1, so it anneals fully whichever binds first; "
                                               "use 0 for bit-exact repeatable runs")),
    ("--val-every", "val_every", dict(type=_positive(int), metavar="STEPS",
                                      help="validate (whole validation split) and checkpoint every STEPS")),
    ("--log-every", "log_every", dict(type=_positive(int), metavar="STEPS", help="CSV log / progress interval")),
    ("--seed", "seed", dict(type=int, help="random seed (init, dropout)")),
    ("--dtype", "dtype", dict(choices=("fp32", "bf16"),
                              help="bf16: autocast mixed precision (weights stay fp32), on CUDA or the CPU; the "
                                   "CPU default is bf16 only where the CPU has bf16 instructions (AVX512-BF16, AMX), "
                                   "else the one-layer fp32 model")),
]


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a character- or word-level language model",
        description="Train a language model over characters or words: Embedding -> fastrnn LSTM/GRU/RNN -> "
                    "Linear, with stateful truncated BPTT; validation reports the loss and the next-token "
                    "accuracy. With no options it picks a configuration for the device and corpus it finds "
                    f"(Tiny Shakespeare characters on CPU: ~4 minutes; --data {HUMAN_NUMBERS}: a word-level "
                    "model in under 3 minutes). Writes last.pt, best.pt, log.csv and loss.png to --out. "
                    "Under torchrun it trains with DistributedDataParallel.",
    )
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output directory for checkpoints, CSV log and plot (default: runs/charlm, or "
                        "runs/wordlm for word tokens)")
    p.add_argument("--resume", nargs="?", const="last", metavar="CKPT",
                   help="continue a run: from DIR/last.pt, or from CKPT; unspecified options come from the "
                        "checkpoint, architecture options must match it")
    p.add_argument("--overwrite", action="store_true", help="start a new run even if --out already holds one")
    p.add_argument("--stop-after", type=_positive(int), metavar="N",
                   help="stop after N steps of this invocation with a resumable checkpoint (the schedule still "
                        "covers the whole budget)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="fastrnn backend; 'torch' trains the same model with torch.nn's own module, checkpoints "
                        "interchange (default: auto)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto, CUDA if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (validation lines are still printed)")
    p.add_argument("--threads", type=_positive(int), metavar="N",
                   help="CPU threads (default: with a time budget, the faster of 1 and all cores, re-measured "
                        "every 20 s because a shared CPU can make all cores much slower; else torch's default)")
    for flag, field, kwargs in _TRAIN_OPTIONS:
        kwargs = dict(kwargs)
        help_ = kwargs.pop("help")
        if field not in ("data", "tokens"):
            help_ = f"{help_} {_default(field)}"
        p.add_argument(flag, dest=field, default=None, help=help_, **kwargs)
    p.set_defaults(func=_cmd_train)


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample", help="generate text from a checkpoint",
        description="Generate text from a trained checkpoint, streaming tokens as they are produced. The token "
                    "kind (characters or words) comes from the checkpoint; a word prompt is split on whitespace "
                    "and generated words are joined by spaces, a new line after each '.'. The prompt warms the "
                    "recurrent state; each further token is one single-step call.",
    )
    p.add_argument("--checkpoint", type=Path, default=Path("runs/charlm/best.pt"), metavar="PATH",
                   help="checkpoint to load (default: runs/charlm/best.pt)")
    p.add_argument("--prompt", default="", help="text to continue; its characters (or words) must be in the "
                                                "vocabulary (default: start of a line)")
    p.add_argument("--length", type=_non_negative(int), default=500, metavar="N",
                   help="characters (or words) to generate after the prompt (default: 500)")
    p.add_argument("--temperature", type=_non_negative(float), default=0.8,
                   help="softmax temperature, 0 for greedy (default: 0.8)")
    p.add_argument("--top-k", type=_non_negative(int), default=0, metavar="K",
                   help="sample only among the K most likely tokens, 0 for all (default: 0)")
    p.add_argument("--seed", type=int, default=None, help="seed for repeatable samples (default: random)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="fastrnn backend (default: auto)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N or mps (default: auto, CUDA if available)")
    p.set_defaults(func=_cmd_sample)


def _add_bench(sub, with_module: bool) -> None:
    p = sub.add_parser("bench", help="benchmark the recurrent kernels (see `fastrnn bench --help`)",
                       description="Benchmark fastrnn's recurrent modules against torch.nn.")
    if with_module:
        import fastrnn.apps.bench as bench

        bench.add_arguments(p)
        p.set_defaults(func=bench.main)


def build_parser(with_bench: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastrnn", description="fastrnn: fused RNN/LSTM/GRU and character- and "
                                                                 "word-level language models.")
    sub = parser.add_subparsers(dest="command", metavar="{train,sample,bench}")
    sub.required = True
    _add_train(sub)
    _add_sample(sub)
    _add_bench(sub, with_bench)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from fastrnn.apps.train import RunOptions, run

    fields = TrainConfig.__dataclass_fields__
    overrides = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    if overrides.get("data") not in (None, HUMAN_NUMBERS):
        overrides["data"] = str(Path(overrides["data"]).expanduser().resolve())
    out = args.out if args.out is not None else default_out(overrides.get("tokens"), overrides.get("data"))
    opts = RunOptions(out=out, resume=args.resume, overwrite=args.overwrite, stop_after=args.stop_after,
                      backend=args.backend, device=args.device, quiet=args.quiet, threads=args.threads)
    return run(overrides, opts)


def _cmd_sample(args: argparse.Namespace) -> int:
    from fastrnn.apps.sample import generate, load_model
    from fastrnn.apps.train import pick_device

    model, vocab = load_model(args.checkpoint, pick_device(args.device), args.backend)
    vocab.encode(args.prompt, "prompt")  # fail before printing anything

    def emit(ch: str) -> None:
        sys.stdout.write(ch)
        sys.stdout.flush()

    emit(args.prompt)
    generate(model, vocab, args.prompt, args.length, args.temperature, args.top_k, args.seed, on_char=emit)
    emit("\n")
    return 0


def _wants_bench(argv: list[str]) -> bool:
    words = [a for a in argv if not a.startswith("-")]
    return bool(words) and words[0] == "bench"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastrnn`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with_bench = _wants_bench(argv)
    if with_bench:
        try:
            import fastrnn.apps.bench  # noqa: F401
        except ImportError as e:
            print(f"fastrnn: error: the bench subcommand is not available ({e})", file=sys.stderr)
            return EXIT_USAGE
    args = build_parser(with_bench).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AppError as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"fastrnn: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fastrnn: aborted (the last saved checkpoint is intact)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
