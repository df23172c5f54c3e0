"""`python train.py` and `charrnn-train`: train a character-level language model. Flags in, the package does the work."""
from __future__ import annotations

from charrnn import flags
from charrnn.config import ModelConfig, TrainConfig

GROUPS = {  # help sections, in order: (config class, its fields)
    "data": (TrainConfig, ["corpus", "encoding", "val_frac", "test_frac", "batching", "items", "item_separator",
                           "labels"]),
    "model": (ModelConfig, ["model", "rnn_size", "num_layers", "embedding_size", "dropout", "weight_drop",
                            "copy_memory"]),
    "optimisation": (TrainConfig, ["seq_length", "batch_size", "learning_rate", "lr_schedule", "min_lr_frac",
                                   "warmup_steps", "weight_decay", "grad_clip", "ema_decay"]),
    "how long (whichever comes first; with none given, 10m)": (TrainConfig, ["max_steps", "max_epochs",
                                                                             "time_budget"]),
    "evaluation, logs and samples": (TrainConfig, ["eval_every", "eval_chars", "log_every", "sample_length",
                                                   "sample_prime", "keep_checkpoints"]),
    "where and how": (TrainConfig, ["checkpoint_dir", "seed", "device", "dtype", "threads"]),
}


def build_parser() -> flags.Parser:
    p = flags.Parser(description="Train a character-level RNN/LSTM/GRU on a text corpus and save "
                     "checkpoints that generate.py samples from and --resume continues. The defaults are "
                     "the measured winners: the settings that reached the lowest validation loss on "
                     "tinyshakespeare on 2-core CPUs, with the model's size picked for the time budget "
                     "(bench/quality.py, bench/RESULTS.md).")
    for title, (cls, names) in GROUPS.items():
        flags.add_options(p.add_argument_group(title), cls, names)
    g = p.add_argument_group("start from a checkpoint")
    g.add_argument("--resume", metavar="CHECKPOINT", help="continue the run in this checkpoint (a .pt "
                   "file, or a run folder meaning its last.pt); only the stopping, logging and device "
                   "flags may change")
    g.add_argument("--init-from", metavar="CHECKPOINT", help="fine-tune: start a new run from this trained "
                   "model's weights (a .pt file, or a run folder meaning its best.pt) on --corpus, with a "
                   "fresh optimizer and schedule; new characters are added to the vocabulary")
    g.add_argument("--overwrite", action="store_true", default=None, help="delete the run already in "
                   "--checkpoint-dir and start a new one there (without it, a folder holding a run is refused)")
    return p


def main() -> int:
    options = flags.given(build_parser().parse_args())
    resume, init_from = options.pop("resume", None), options.pop("init_from", None)
    overwrite = bool(options.pop("overwrite", False))
    config = TrainConfig.from_options(**options)  # checked before torch is imported
    from charrnn.launch import train

    summary = train(config, resume=resume, init_from=init_from, overrides=options, overwrite=overwrite)
    if not summary["is_main"]:  # under torchrun, rank 0 speaks for all
        return 130 if summary["interrupted"] else 0
    if summary["interrupted"]:
        print(f"stopped at step {summary['step']}; saved {summary['checkpoint_dir']}/last.pt. "
              f"Resume with: python train.py --resume {summary['checkpoint_dir']}")
        return 130
    print(f"done: step {summary['step']}, best validation loss {summary['best_val_loss']:.4f} nats/char. "
          f"Sample with: python generate.py --checkpoint {summary['checkpoint_dir']}")
    return 0


def run() -> None:
    """The console script's entry point."""
    flags.run_main(main)
