"""Generate text from a trained checkpoint: python generate.py --prime "ROMEO:" --length 300."""
from __future__ import annotations

import math
import signal
import sys
from pathlib import Path

import numpy as np
import torch

from charrnn import checkpoint, corpus, flags, interactive
from charrnn.device import pick_device, set_threads
from charrnn.errors import CharRNNError
from charrnn.sample import SampleConfig, Streamer, generate, make_generator
from charrnn.train import EVAL_CHUNK, evaluate

D = SampleConfig()


def build_parser() -> flags.Parser:
    p = flags.Parser(description="Sample text from a charrnn checkpoint, score a text under it, or "
                     "open an interactive prompt.")
    p.add_argument("--checkpoint", help="a .pt file, or a run directory (its best.pt). Default: the run "
                   "under checkpoints/ written most recently")
    p.add_argument("--prime", default="", help="text that starts the output and warms up the model's state")
    p.add_argument("--length", type=flags.positive_int, default=D.length,
                   help=f"characters to generate (default {D.length})")
    p.add_argument("--temperature", type=flags.nonnegative_float, default=D.temperature,
                   help=f"sharpness of sampling: lower is safer, higher is wilder, 0 is greedy "
                   f"(default {D.temperature})")
    p.add_argument("--top-k", type=flags.positive_int, help="draw only from the K likeliest characters")
    p.add_argument("--top-p", type=flags.probability, help="draw only from the likeliest characters whose "
                   "probabilities add up to P (nucleus sampling)")
    p.add_argument("--seed", type=flags.seed, help="random seed: the same seed gives the same text")
    p.add_argument("--stop", help="stop a sample once it has produced this string")
    p.add_argument("--num-samples", type=flags.positive_int, default=1,
                   help="generate this many samples together, as one batch (default 1)")
    p.add_argument("--skip-unknown", action="store_true",
                   help="drop prime characters the model has never seen instead of stopping with an error")
    p.add_argument("--interactive", action="store_true", help="open a prompt: each line you type is "
                   "continued by the model (:help lists its commands)")
    p.add_argument("--info", action="store_true", help="print the checkpoint's summary and exit")
    p.add_argument("--score", metavar="FILE", help="print the loss of FILE under the model in nats and bits "
                   "per character (the whole file as one stream, state carried) and exit")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="cpu",
                   help="where to run (default cpu: fastest for one character at a time)")
    p.add_argument("--threads", type=flags.threads, help="CPU threads (default: all cores)")
    return p


def describe(path, ckpt: dict, num_parameters: int) -> str:
    cfg, progress = ckpt["model_config"], ckpt["progress"]
    return (f"checkpoint {path}\n"
            f"corpus {ckpt['corpus']['name']} ({ckpt['corpus']['length']:,} chars), "
            f"vocabulary {len(ckpt['vocab'])}\n"
            f"model {cfg['model']} {cfg['num_layers']}x{cfg['rnn_size']}, {num_parameters:,} parameters\n"
            f"trained {progress['step']:,} steps ({progress['elapsed'] / 60:.1f} min), "
            f"best validation loss {progress['best_val_loss']:.4f} nats/char "
            f"({progress['best_val_loss'] / math.log(2):.3f} bits)")


def score(model, vocab, path: str, skip_unknown: bool, device: torch.device) -> str:
    if not Path(path).exists():  # not a corpus name: --score reads the file it is given
        raise CharRNNError(f"--score file {path} does not exist")
    source = corpus.resolve(path)
    points = np.concatenate([np.zeros(0, vocab.index_dtype)]  # an empty file yields no chunk at all
                            + [vocab.encode_points(corpus.code_points(text), skip_unknown)
                               for text in corpus.read_chunks(source)])
    if len(points) < 2:
        raise CharRNNError(f"{path} has fewer than 2 known characters; nothing to score")
    loss = evaluate(model, points, EVAL_CHUNK, device, streams=1)
    return f"{path}: {loss:.4f} nats/char, {loss / math.log(2):.4f} bits/char over {len(points) - 1:,} characters"


def main() -> int:
    args = build_parser().parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop output at once, like Ctrl-C
    set_threads(args.threads)
    device = pick_device(args.device)
    path = checkpoint.resolve(args.checkpoint)
    if args.checkpoint is None:
        print(f"using {path}", file=sys.stderr)
    ckpt = checkpoint.load(path)
    model, vocab = checkpoint.build_model(ckpt, device)
    if args.info:
        print(describe(path, ckpt, model.num_parameters()))
        return 0
    if args.score:
        print(score(model, vocab, args.score, args.skip_unknown, device))
        return 0
    config = SampleConfig(args.length, args.temperature, args.top_k, args.top_p, args.stop)
    vocab.encode(args.prime, args.skip_unknown)  # an unknown character stops us before any output
    if args.interactive:
        session = interactive.Session(model, vocab, config, args.seed, describe(path, ckpt, model.num_parameters()),
                                      sys.stdout, args.skip_unknown)
        interactive.run(session)
        return 0
    generator = make_generator(args.seed)
    if args.num_samples == 1:
        sys.stdout.write(args.prime)
        generate(model, vocab, config, args.prime, generator=generator, on_text=Streamer(sys.stdout),
                 skip_unknown=args.skip_unknown)
        print()
        return 0
    texts, _ = generate(model, vocab, config, args.prime, num_samples=args.num_samples,
                        generator=generator, skip_unknown=args.skip_unknown)
    for i, text in enumerate(texts, 1):
        print(f"--- sample {i} ---\n{args.prime}{text}")
    return 0


if __name__ == "__main__":
    flags.run_main(main)
