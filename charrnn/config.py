"""Every option, declared once.

The dataclasses below are the source of the command-line flags (name, type, help, default,
choices: see flags.add_options) and of the checks, which run in `__post_init__` whether a config
comes from flags, from Python or from a checkpoint. Nothing here imports torch, so `--help` and
flag errors answer at once.
"""
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from types import UnionType
from typing import Any, get_args

from charrnn.errors import CharRNNError

CELLS = ("rnn", "lstm", "gru")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16")
LABEL_SOURCES = ("files", "column", "none")
LR_SCHEDULES = ("cosine", "linear")
DEFAULT_TIME_BUDGET = 600.0  # seconds, used only when no other stopping rule is given
# The shapes a time budget chooses from, (layers, rnn size, dropout), smallest first; the first is
# the fixed default. Bigger shapes overfit sooner and get more dropout: 0.2 was measured best for
# 2x256, the others are single measured runs (sizing.py, bench/RESULTS.md).
SIZE_LADDER = ((2, 256, 0.2), (2, 384, 0.25), (2, 512, 0.3), (3, 512, 0.35), (3, 768, 0.4))
# A shape is affordable when the budget gives it this many passes over the corpus and this many
# steps. Passes: in 10 minutes on tinyshakespeare a 2x512 lost to a 2x384 making 2x its passes when
# it made 4.3 (2,100 steps), and won at 7.5 (3,700); a 3x512 making 5.5 lost to both. Steps: on
# 500,000 characters a 2x512 making 10.6 passes in 2,300 steps lost by 0.02 to a 2x384 making twice
# as many, and won by 0.010 making 3,700; an hour's 3x768 making 13.5 passes in 6,600 steps beat a
# 3x512 making 28 by 0.034.
MIN_PASSES, MIN_STEPS = 7.0, 3000
# A budget that buys REGULARISE_PASSES or more passes for the shape it picks would overfit that
# shape, so the run adds DropConnect and averaged weights, the DropConnect stronger the more
# passes: the entries go from the most passes down, and the first one the budget reaches applies.
# In 10 minutes: at 20-27 passes (500,000 characters) 0.3 gained 0.038 nats/char and beat 0.5 by
# 0.016 side by side; at 450 (50,000) 0.5 gained 0.134. 100, between the two, is not measured. An
# hour's 3x512 overfit after 9 passes without; the hour's 3x768 with 0.3 still improved at 13.5. At 7
# passes there is nothing to regularise and the mask costs steps.
REGULARISATION = ((100.0, {"weight_drop": 0.5, "ema_decay": 0.998}),
                  (10.0, {"weight_drop": 0.3, "ema_decay": 0.998}))
# With the copy attention (long runs on large texts) the average is longer: 0.9995 spans about the
# last ninth of the steps taken (ema_decay's warm-up) to 18,000 steps, where 0.998 stops at 500 from
# 4,500. The hour's 3x512 with it scored 1.3245 with 0.9995 and 1.3348 with 0.998; DropConnect 0.5 for
# 0.3 cost 0.012 and did not keep it improving to the end. The rate decays linearly: the cosine's
# falls below a tenth of the peak at 80% of the run, where that hour stopped improving; the linear
# one's hour improved to its last evaluation and scored 1.3182 (bench/RESULTS.md, 2026-12-07).
COPY_REGULARISATION = ((REGULARISATION[-1][0], {**REGULARISATION[-1][1], "ema_decay": 0.9995,
                                                "lr_schedule": "linear"}),)
REGULARISE_PASSES = REGULARISATION[-1][0]
# a user who gives one of these keeps their choices, and the run adds none
REGULARISED_OPTIONS = set().union(*(options for _, options in REGULARISATION + COPY_REGULARISATION))
# The copy attention a time budget adds (ModelConfig.copy_memory). Its reach: on tinyshakespeare
# 1,024 characters is a speech or two, where a speaker's name comes back; 4,096 cost 2.4x the time
# a step. With its match scores a 2x384 scored 0.12-0.13 nats/char better on the whole split in
# 4,000 steps than with queries and keys alone, two seeds each (bench/RESULTS.md, 2026-12-07,
# evening). It is added where runs like those were measured: budgets that buy the chosen size
# COPY_MIN_STEPS steps with it and read the text at most COPY_MAX_PASSES times. Shorter runs, and
# smaller texts read more often, are not measured with it and train without it.
COPY_MEMORY, COPY_MIN_STEPS, COPY_MAX_PASSES = 1024, 4000, 25.0
NOVEL_DRAWS = 50  # generate.py --novel gives up after this many draws per item asked for
# generate.py --score --adapt: characters scored between two SGD steps, and the steps' learning rate
ADAPT_SEGMENT, ADAPT_LR = 64, 0.5


@dataclass(frozen=True)
class Range:
    """The values a number may take, and how to say so in an error message."""
    low: float
    high: float = math.inf
    low_open: bool = False
    words: str = ""

    def __contains__(self, value: float) -> bool:
        if isinstance(value, int) and abs(value) > 2**63:  # past any range here; isfinite cannot take it
            return False
        return (math.isfinite(value) and value >= self.low and not (self.low_open and value == self.low)
                and value <= self.high)


POSITIVE_INT = Range(1, 10**9, words="an integer >= 1")
NONNEGATIVE_INT = Range(0, 10**9, words="an integer >= 0")
POSITIVE = Range(0, 1e6, low_open=True, words="a number > 0")
NONNEGATIVE = Range(0, 1e6, words="a number >= 0")
FRACTION = Range(0, 0.9, words="a fraction from 0 to 0.9")
UNIT = Range(0, 1, words="a number from 0 to 1")
PROBABILITY = Range(0, 1, low_open=True, words="a probability in (0, 1]")
THREADS = Range(1, 1024, words="an integer from 1 to 1024")
SEED = Range(0, 2**63 - 1, words="an integer from 0 to 2**63-1")
DURATION = Range(0, 366 * 86400, low_open=True, words="more than 0s and at most a year")


def option(default: Any = None, help: str = "", *, check: Range | None = None,
           choices: tuple[str, ...] | None = None, duration: bool = False, flag: bool = True) -> Any:
    """A dataclass field that also describes its flag: help text, range check, choices."""
    meta = {"help": help, "check": check, "choices": choices, "duration": duration, "flag": flag}
    return field(default=default, metadata=meta)


def parse_duration(text: str) -> float:
    """'90s', '2min', '10m', '1.5h', '1h30m' or plain seconds -> seconds."""
    units = {"": 1, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60,
             "mins": 60, "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600,
             "hours": 3600}
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)", text.strip().lower())
    rebuilt = re.sub(r"\s+", "", "".join(n + u for n, u in parts))
    if not parts or rebuilt != re.sub(r"\s+", "", text.lower()) or any(u not in units for _, u in parts):
        raise ValueError(f"{text!r} is not a duration like 90s, 2min, 10m, 1.5h or 1h30m")
    return sum(float(n) * units[u] for n, u in parts)


def value_type(f) -> type:
    """int, float or str: the type a field's flag parses (`int | None` -> int)."""
    kinds = get_args(f.type) if isinstance(f.type, UnionType) else (f.type,)
    return next(k for k in kinds if k is not type(None))


def check_fields(config: Any) -> None:
    """Raise a one-line CharRNNError naming the flag of the first field out of its range or choices."""
    for f in fields(config):
        value, meta = getattr(config, f.name), f.metadata
        if value is None or not meta:
            continue
        name = "--" + f.name.replace("_", "-")
        if meta["choices"] and value not in meta["choices"]:
            raise CharRNNError(f"{name} must be one of {', '.join(meta['choices'])}, not {value!r}")
        check = meta["check"]
        if check is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or value not in check
                                  or (value_type(f) is int and not isinstance(value, int))):
            raise CharRNNError(f"{name} must be {check.words}, not {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The network's shape; `vocab_size` comes from the corpus, the rest from flags."""
    vocab_size: int = option(0, flag=False, check=NONNEGATIVE_INT)
    model: str = option("lstm", "recurrent cell", choices=CELLS)
    rnn_size: int = option(SIZE_LADDER[0][1], "hidden units per layer. A --time-budget run (the default "
                           "10 minutes included) given none of --rnn-size, --num-layers and --dropout picks all "
                           "three: the largest of " + ", ".join(f"{layers}x{n}" for layers, n, _ in SIZE_LADDER)
                           + f" that makes {MIN_PASSES:g} passes over the corpus and {MIN_STEPS:,} steps in the "
                           "budget at this machine's measured speed (a small corpus keeps the first). --max-steps, "
                           "--max-epochs, --resume and --init-from runs keep the shape they are given",
                           check=POSITIVE_INT)
    num_layers: int = option(SIZE_LADDER[0][0], "stacked layers (picked with --rnn-size on a time budget)",
                             check=POSITIVE_INT)
    embedding_size: int = option(64, "width of the input lookup (one-hot x weights, done as a lookup)",
                                 check=POSITIVE_INT)
    num_labels: int = option(0, flag=False, check=NONNEGATIVE_INT)  # from the corpus: 0 without labels
    dropout: float = option(SIZE_LADDER[0][2], "dropout between layers and before the output layer (picked "
                            "with --rnn-size on a time budget)", check=FRACTION)
    weight_drop: float = option(0.0, "DropConnect on the recurrent weights (AWD-LSTM's weight drop): in "
                                "training, each hidden-to-hidden weight of every layer is dropped with this "
                                "probability (the rest scaled up, as dropout does), one mask per forward pass, so "
                                "every step of a --seq-length window loses the same connections; evaluation and "
                                "sampling use them all. 0: off, the default unless a time budget picks a size "
                                f"that reads the text {REGULARISE_PASSES:g} times or more: then "
                                f"{REGULARISATION[-1][1]['weight_drop']:g}, or {REGULARISATION[0][1]['weight_drop']:g} "
                                f"from {REGULARISATION[0][0]:g} times", check=FRACTION)

    copy_memory: int = option(0, "copy attention over this many past characters: each step attends to the "
                              "last N steps and reads the character that followed each, so the model can repeat "
                              "a name or a word from earlier in the text, which an LSTM's state forgets. 0: off, "
                              "the default unless a time budget buys the size it picks "
                              f"{COPY_MIN_STEPS:,} steps and at most {COPY_MAX_PASSES:g} passes with it (not "
                              f"with --items): then {COPY_MEMORY:,}",
                              check=Range(0, 65536, words="an integer from 0 (off) to 65536"))

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class TrainConfig:
    """A training run. The defaults are the measured winners on tinyshakespeare on 2-core CPUs: the
    optimisation settings from 10-minute runs, and on a time budget the model's shape from
    SIZE_LADDER by the budget (sizing.py); the runs behind each choice are in bench/RESULTS.md."""
    # data
    corpus: str | None = option(None, "a text file, a directory of text files, or a name: corpora/NAME.txt, "
                                "or 'tinyshakespeare' (downloaded on first use). Default: the Python "
                                "standard library's source, read from this interpreter")
    encoding: str = option("utf-8", "text encoding of the corpus")
    val_frac: float = option(0.1, "last fraction of the text held out for validation", check=FRACTION)
    test_frac: float = option(0.0, "fraction after validation held out as a test split, never trained on",
                              check=FRACTION)
    batching: str = option("stream", "stream: contiguous rows, hidden state carried between steps "
                           "(truncated BPTT); random: windows at random offsets", choices=("stream", "random"))
    items: bool = option(False, "the corpus is a list: each line (or --item-separator) is one item, learnt "
                         "from its start to its end, and generate.py makes whole new items. Implied by a "
                         ".csv, .tsv or .jsonl corpus")
    item_separator: str = option("\\n", "what separates items with --items; \\n, \\t and \\r are read as "
                                 "escapes, so '\\n\\n' is a blank line between items")
    labels: str | None = option(None, "where each item's label comes from: files (a folder of files, each "
                                "file's name its label, e.g. names/Russian.txt), column (the 'label' column "
                                "or field of a .csv, .tsv or .jsonl: their default) or none",
                                choices=LABEL_SOURCES)
    model: ModelConfig = ModelConfig()
    # optimisation: short windows give 4x the updates of 128-character ones for the same text, and
    # the carried state keeps the context; on a time budget the number of updates matters most
    seq_length: int = option(32, "characters per window; gradients are truncated at window boundaries",
                             check=POSITIVE_INT)
    batch_size: int = option(64, "rows per step", check=POSITIVE_INT)
    learning_rate: float = option(2e-3, "peak AdamW learning rate", check=POSITIVE)
    lr_schedule: str = option("cosine", "how the rate decays after the warm-up, over the run (its steps, "
                              "passes or --time-budget): cosine, or linear (a straight line: the rate stays higher "
                              "until late, so the end of a long run still learns). cosine unless a time budget adds "
                              "the copy attention and reads the text "
                              f"{REGULARISE_PASSES:g} times or more: then linear",
                              choices=LR_SCHEDULES)
    min_lr_frac: float = option(0.02, "the schedule decays to this fraction of the peak by the end "
                                "of the run", check=UNIT)
    warmup_steps: int = option(20, "linear warm-up steps", check=NONNEGATIVE_INT)
    weight_decay: float = option(0.0, "AdamW weight decay", check=NONNEGATIVE)
    grad_clip: float = option(1.0, "clip the gradient norm to this", check=POSITIVE)
    ema_decay: float = option(0.0, "average the weights: keep an exponential moving average of them with "
                              "this decay per step, evaluate it, and save it as the model in best.pt and last.pt "
                              "(generate.py and everything else use it; the raw weights are kept for --resume). "
                              "It spans about 1/(1-decay) steps, e.g. 0.999 about the last 1,000; early in a run "
                              "about the last tenth of the steps taken. 0: off, the default unless a time budget "
                              f"picks a size that reads the text {REGULARISE_PASSES:g} times or more: then "
                              f"{REGULARISATION[-1][1]['ema_decay']:g} ({COPY_REGULARISATION[-1][1]['ema_decay']:g} "
                              "with the copy attention)",
                              check=Range(0, 0.99999, words="a number from 0 to 0.99999 (0: off)"))
    # when to stop (whichever comes first) and when to evaluate
    max_steps: int | None = option(None, "stop after this many steps in total", check=POSITIVE_INT)
    max_epochs: float | None = option(None, "stop after this many passes over the text", check=POSITIVE)
    time_budget: float | None = option(None, "stop and save after this much training time in total, "
                                       "e.g. 90s, 2min, 10m, 1.5h; the learning rate decays over it, so "
                                       "a time-budget run depends on the machine's speed",
                                       check=DURATION, duration=True)
    eval_every: int = option(500, "validate and save every N steps (and at least once a pass over the "
                             "training text, and every 5 minutes or every quarter of a --time-budget)",
                             check=POSITIVE_INT)
    eval_chars: int = option(100_000, "characters of the validation split scored at each evaluation, the "
                             "same ones every time, so that evaluation costs the same on any corpus; 0 scores "
                             "the whole split (python generate.py --score does too)", check=NONNEGATIVE_INT)
    log_every: int = option(100, "append the training loss to metrics.jsonl every N steps", check=POSITIVE_INT)
    sample_length: int = option(200, "characters of the sample printed at each evaluation and kept in "
                                "samples.jsonl (0: no samples)", check=NONNEGATIVE_INT)
    sample_prime: str = option("", "text that starts each evaluation's sample")
    # where and how
    keep_checkpoints: int = option(0, "also keep the last N evaluations' checkpoints as step_NNNNNN.pt "
                                   "(0: only best.pt and last.pt)", check=NONNEGATIVE_INT)
    checkpoint_dir: str | None = option(None, "the run folder for best.pt, last.pt and metrics "
                                        "(default checkpoints/<corpus name>)")
    seed: int = option(1337, "random seed; with --max-steps or --max-epochs the same seed gives the "
                       "same run on the same CPU (a --time-budget run follows the clock: its schedule, and the "
                       "model size it picks, depend on the machine's speed)", check=SEED)
    device: str = option("auto", "auto picks cuda, then mps, then cpu", choices=DEVICES)
    dtype: str = option("auto", "auto: bf16 autocast where the GPU or CPU runs it natively (CUDA, "
                        "AVX512-BF16, AMX), else fp32", choices=DTYPES)
    threads: int | None = option(None, "CPU threads (default: all cores)", check=THREADS)

    def __post_init__(self):
        check_fields(self)
        if not self.item_separator:
            raise CharRNNError("--item-separator must not be empty; the default '\\n' makes each line an item")
        if self.val_frac + self.test_frac >= 1:
            raise CharRNNError(f"--val-frac {self.val_frac} and --test-frac {self.test_frac} must sum to "
                               "less than 1, so that some text is left to train on")

    @classmethod
    def from_options(cls, **options: Any) -> "TrainConfig":
        """Build from flat options as the flags name them (rnn_size=512, ...), checked."""
        model_names = {f.name for f in fields(ModelConfig)}
        known = model_names | {f.name for f in fields(cls)} - {"model"}
        if isinstance(options.get("model"), ModelConfig):
            options = {**asdict(options.pop("model")), **options}
        unknown = sorted(set(options) - known)
        if unknown:
            raise CharRNNError(f"unknown option {unknown[0]!r}; see python train.py --help for the options")
        model = ModelConfig(**{k: v for k, v in options.items() if k in model_names})
        return cls(model=model, **{k: v for k, v in options.items() if k not in model_names})

    @classmethod
    def from_dict(cls, saved: dict) -> "TrainConfig":
        """A config saved as asdict(config), or in the flat form of checkpoint format 1."""
        flat = {**saved, **saved["model"]} if isinstance(saved.get("model"), dict) else dict(saved)
        names = {f.name for f in fields(ModelConfig)} | {f.name for f in fields(cls)}
        return cls.from_options(**{k: v for k, v in flat.items() if k in names})

    def options(self) -> dict:
        """The flat form: one entry per flag."""
        flat = {**asdict(self), **asdict(self.model)}
        return {k: v for k, v in flat.items() if k not in ("vocab_size", "num_labels")}  # the corpus's

    def with_options(self, **options: Any) -> "TrainConfig":
        """A copy with some flat options replaced."""
        return TrainConfig.from_options(**{**self.options(), **options})

    def with_stopping_rule(self) -> "TrainConfig":
        """With the default time budget when no stopping rule is given."""
        if self.max_steps or self.max_epochs or self.time_budget:
            return self
        return replace(self, time_budget=DEFAULT_TIME_BUDGET)


@dataclass(frozen=True)
class SampleConfig:
    """How to draw characters."""
    length: int = option(500, "characters to generate", check=POSITIVE_INT)
    temperature: float = option(0.8, "sharpness of sampling: lower is safer, higher is wilder, 0 is greedy",
                                check=NONNEGATIVE)
    top_k: int | None = option(None, "draw only from the K likeliest characters", check=POSITIVE_INT)
    top_p: float | None = option(None, "draw only from the likeliest characters whose probabilities add "
                                 "up to P (nucleus sampling)", check=PROBABILITY)
    stop: str | None = option(None, "stop a sample once its text (prime included) ends with this string")
    seed: int | None = option(None, "random seed: the same seed gives the same text", check=SEED)

    def __post_init__(self):
        check_fields(self)

