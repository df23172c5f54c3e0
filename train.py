"""Train a character-level language model: python train.py --corpus FILE [--time-budget 10m]."""
from __future__ import annotations

from charrnn import flags
from charrnn.train import TrainConfig, train

D = TrainConfig()  # the defaults, quoted in --help


def build_parser() -> flags.Parser:
    p = flags.Parser(description="Train a character-level RNN/LSTM/GRU on a text corpus and save "
                     "checkpoints that generate.py samples from and --resume continues. The defaults are "
                     "the configuration that reached the lowest validation loss on tinyshakespeare in 10 "
                     "minutes on a 2-core CPU (bench/quality.py, bench/RESULTS.md).")
    g = p.add_argument_group("data")
    g.add_argument("--corpus", help="a text file, a directory of text files, or a name: corpora/NAME.txt, "
                   "or 'tinyshakespeare' (downloaded on first use). Default: the Python standard "
                   "library's source, read from this interpreter")
    g.add_argument("--encoding", help=f"text encoding of the corpus (default {D.encoding})")
    g.add_argument("--val-frac", type=flags.fraction, help=f"last fraction of the text held out for "
                   f"validation (default {D.val_frac})")
    g.add_argument("--test-frac", type=flags.fraction, help="fraction after validation held out as a "
                   "test split, never trained on (default 0)")
    g.add_argument("--batching", choices=["stream", "random"], help="stream: contiguous rows, hidden state "
                   "carried between steps (truncated BPTT); random: windows at random offsets (default stream)")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=["rnn", "lstm", "gru"], help=f"recurrent cell (default {D.model})")
    g.add_argument("--rnn-size", type=flags.positive_int, help=f"hidden units per layer (default {D.rnn_size})")
    g.add_argument("--num-layers", type=flags.positive_int, help=f"stacked layers (default {D.num_layers})")
    g.add_argument("--embedding-size", type=flags.positive_int, help="width of the input lookup "
                   f"(one-hot x weights, done as a lookup) (default {D.embedding_size})")
    g.add_argument("--dropout", type=flags.fraction, help=f"dropout between layers and before the output "
                   f"layer (default {D.dropout})")
    g = p.add_argument_group("optimisation")
    g.add_argument("--seq-length", type=flags.positive_int, help=f"characters per window; gradients are "
                   f"truncated at window boundaries (default {D.seq_length})")
    g.add_argument("--batch-size", type=flags.positive_int, help=f"rows per step (default {D.batch_size})")
    g.add_argument("--learning-rate", type=flags.positive_float, help=f"peak AdamW learning rate "
                   f"(default {D.learning_rate})")
    g.add_argument("--min-lr-frac", type=flags.unit_interval, help="the cosine schedule decays to "
                   f"this fraction of the peak by the end of the run (default {D.min_lr_frac})")
    g.add_argument("--warmup-steps", type=flags.nonnegative_int, help=f"linear warm-up steps "
                   f"(default {D.warmup_steps})")
    g.add_argument("--weight-decay", type=flags.nonnegative_float, help=f"AdamW weight decay "
                   f"(default {D.weight_decay})")
    g.add_argument("--grad-clip", type=flags.positive_float, help=f"clip the gradient norm to this "
                   f"(default {D.grad_clip})")
    g = p.add_argument_group("how long (whichever comes first; with none given, 10m)")
    g.add_argument("--max-steps", type=flags.positive_int, help="stop after this many steps in total")
    g.add_argument("--max-epochs", type=flags.positive_float, help="stop after this many passes over the text")
    g.add_argument("--time-budget", type=flags.duration, help="stop and save after this much training "
                   "time in total, e.g. 90s, 10m, 1.5h; the learning rate decays over it")
    g.add_argument("--eval-every", type=flags.positive_int, help=f"validate and save every N steps "
                   f"(default {D.eval_every})")
    g = p.add_argument_group("where and how")
    g.add_argument("--checkpoint-dir", help="where best.pt, last.pt and metrics go "
                   "(default checkpoints/<corpus name>)")
    g.add_argument("--resume", metavar="CHECKPOINT", help="continue the run in this checkpoint (a .pt "
                   "file, or a directory meaning its last.pt); only the stopping and device flags may change")
    g.add_argument("--seed", type=flags.seed, help=f"random seed; the same seed gives the same run on CPU "
                   f"(default {D.seed})")
    g.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="auto picks cuda, then mps, "
                   "then cpu (default auto)")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], help="auto: bf16 autocast on "
                   "CUDA, fp32 on CPU; bfloat16 on a CPU needs AVX512-BF16 or AMX (default auto)")
    g.add_argument("--threads", type=flags.threads, help="CPU threads (default: all cores)")
    return p


def main() -> int:
    args = vars(build_parser().parse_args())
    resume = args.pop("resume")
    given = {k: v for k, v in args.items() if v is not None}  # flags the user actually passed
    summary = train(TrainConfig(**given), resume=resume, overrides=given)
    if not summary["is_main"]:  # under torchrun, rank 0 speaks for all
        return 130 if summary["interrupted"] else 0
    if summary["interrupted"]:
        print(f"stopped at step {summary['step']}; saved {summary['checkpoint_dir']}/last.pt. "
              f"Resume with: python train.py --resume {summary['checkpoint_dir']}")
        return 130
    print(f"done: step {summary['step']}, best validation loss {summary['best_val_loss']:.4f} nats/char. "
          f"Sample with: python generate.py --checkpoint {summary['checkpoint_dir']}")
    return 0


if __name__ == "__main__":
    flags.run_main(main)
