"""`python generate.py` and `charrnn-generate`: sample, score, prompt or export a checkpoint. Flags in, the package does the work."""
from __future__ import annotations

import json
import signal
import sys
from dataclasses import asdict, replace
from pathlib import Path

from charrnn import flags, serve
from charrnn.config import (ADAPT_LR, ADAPT_SEGMENT, DEVICES, NOVEL_DRAWS, POSITIVE, POSITIVE_INT, THREADS,
                            SampleConfig)
from charrnn.errors import CharRNNError

# What each mode does not use: giving one of these flags with it is an error, not silently ignored.
NOT_WITH = {
    "info": {"prime", "length", "temperature", "top_k", "top_p", "stop", "seed", "num_samples", "output",
             "skip_unknown", "score", "interactive", "export_web", "label", "novel"},
    "score": {"prime", "length", "temperature", "top_k", "top_p", "stop", "seed", "num_samples", "output",
              "interactive", "export_web", "novel"},
    "export_web": {"prime", "length", "temperature", "top_k", "top_p", "stop", "seed", "num_samples",
                   "output", "interactive", "skip_unknown", "label", "novel"},
    "interactive": {"num_samples", "output", "novel"},
    "serve": {"prime", "length", "temperature", "top_k", "top_p", "stop", "seed", "num_samples", "output",
              "skip_unknown", "info", "score", "interactive", "export_web", "device", "threads", "label", "novel"},
}
NEEDS = {"format": "output", "encoding": "score", "adapt": "score", "export_dtype": "export_web",
         **{name: "serve" for name in serve.SERVER_FLAGS}}


def build_parser() -> flags.Parser:
    p = flags.Parser(description="Sample text from a charrnn checkpoint, score a text under it, open an "
                     "interactive prompt, or export it as a web page.")
    p.add_argument("--checkpoint", help="a .pt file, or a run folder (its best.pt). Default: the run "
                   "under checkpoints/ written most recently")
    p.add_argument("--prime", help="text that starts the output and warms up the model's state (with "
                   "--interactive: the start of the prompt's text)")
    flags.add_options(p, SampleConfig, ["length", "temperature", "top_k", "top_p", "stop", "seed"])
    p.add_argument("--num-samples", type=flags.checked(int, POSITIVE_INT),
                   help="generate this many samples together, as one batch (default 1)")
    p.add_argument("--skip-unknown", action="store_true", default=None,
                   help="drop prime characters the model has never seen instead of stopping with an error")
    g = p.add_argument_group("items (a model trained with --items makes whole items, one per line)")
    g.add_argument("--label", help="make items of this label (a model trained with labels; default: a random "
                   "label for each item); with --score, the label of every item scored")
    g.add_argument("--novel", action="store_true", default=None, help="keep only items that are not in the "
                   f"training list (ignoring case and surrounding whitespace) and not repeated; draws up to "
                   f"{NOVEL_DRAWS} per item asked for, then says how many it found")
    p.add_argument("--output", metavar="FILE", help="write the samples to FILE instead of the terminal: one "
                   "after another, or JSON lines with --format jsonl")
    p.add_argument("--format", choices=["text", "jsonl"], help="for --output: text (default), or one JSON "
                   "object per sample with its settings and seed")
    g = p.add_argument_group("other modes")
    g.add_argument("--interactive", action="store_true", default=None, help="open a prompt: each line you "
                   "type is continued by the model (:help lists its commands)")
    g.add_argument("--info", action="store_true", default=None, help="print the checkpoint's summary and exit")
    g.add_argument("--score", metavar="FILE", help="print the loss of the text file FILE under the model in "
                   "nats and bits per character (the whole file as one stream, state carried) and exit")
    g.add_argument("--encoding", help="the encoding of the --score file (default: the training corpus's)")
    g.add_argument("--adapt", metavar="LR", nargs="?", const=ADAPT_LR, type=flags.checked(float, POSITIVE),
                   help=f"with --score: dynamic evaluation. After scoring each {ADAPT_SEGMENT} characters, a copy of "
                   "the model takes an SGD step of learning rate LR on them, so that it reads the rest knowing the "
                   f"names and words met so far (default LR {ADAPT_LR:g}: the best of those measured in "
                   "bench/RESULTS.md). The checkpoint is not changed, and the figure is not comparable with a "
                   "score without --adapt")
    g.add_argument("--export-web", metavar="DIR", help="write a web page that runs the model in the "
                   "browser (DIR/index.html, works offline from disk) and exit")
    g.add_argument("--export-dtype", choices=["float16", "float32", "int8"], help="weights of the web page: "
                   "float16 (default; scores within 0.001 bits/char of float32 at half its size), float32, or "
                   "int8 (a quarter of float32's size, one scale per row; a little worse, see the README)")
    g = p.add_argument_group("serve over HTTP (as charrnn-serve; needs pip install -e \".[serve]\")")
    g.add_argument("--serve", action="store_true", default=None, help="answer HTTP requests with the model "
                   "until Ctrl-C: see the README's Serve section")
    serve.add_flags(g)
    g = p.add_argument_group("where")
    g.add_argument("--device", choices=DEVICES, help="where to run (default cpu: fastest for one "
                   "character at a time)")
    g.add_argument("--threads", type=flags.checked(int, THREADS), help="CPU threads (default: all cores)")
    return p


def main() -> int:
    args = flags.given(build_parser().parse_args())
    modes = [m for m in NOT_WITH if m in args]
    for mode in modes:
        clash = sorted(NOT_WITH[mode] & args.keys())
        if clash:
            raise CharRNNError(f"--{clash[0].replace('_', '-')} does not apply to --{mode.replace('_', '-')}; "
                               "drop one of them")
    for name, needed in NEEDS.items():
        if name in args and needed not in args:
            raise CharRNNError(f"--{name.replace('_', '-')} goes with --{needed.replace('_', '-')}; "
                               f"add --{needed.replace('_', '-')} or drop it")
    sample = SampleConfig(**{k: args[k] for k in ("length", "temperature", "top_k", "top_p", "stop", "seed")
                             if k in args})  # checked before torch is imported
    if "serve" in args:
        return serve.serve(args.get("checkpoint"), {k: v for k, v in args.items() if k in serve.SERVER_FLAGS})
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop output at once, like Ctrl-C
    import charrnn
    from charrnn.device import set_threads

    set_threads(args.get("threads"))
    model = charrnn.load(args.get("checkpoint"), args.get("device", "cpu"))
    if "checkpoint" not in args:
        print(f"using {model.path}", file=sys.stderr)
    if "info" in args:
        print(model.describe())
    elif "score" in args:
        adapt = args.get("adapt", 0.0)
        score = model.score_file(args["score"], args.get("encoding"), bool(args.get("skip_unknown")),
                                 args.get("label"), adapt)
        from charrnn.evaluate import describe_score

        print(describe_score(args["score"], score.nats, score.chars, score.items, adapt))
    elif "export_web" in args:
        index = model.export_web(args["export_web"], args.get("export_dtype", "float16"))
        print(f"wrote {index}; open it in a browser (it works offline, from disk)")
    elif "interactive" in args:
        from charrnn import interactive

        session = interactive.Session(model.net, model.vocab, sample, model.describe(), sys.stdout,
                                      bool(args.get("skip_unknown")), args.get("prime", ""), model.labels)
        session.label = model.label_index(args.get("label"))
        interactive.run(session)
    elif model.vocab.items:
        write_items(model, sample, args)
    else:
        if "label" in args or "novel" in args:
            raise CharRNNError(f"--{'label' if 'label' in args else 'novel'} needs a model trained on a list "
                               "(train.py --items); this one was trained on running text")
        write_samples(model, sample, args)
    return 0


def write_samples(model, sample: SampleConfig, args: dict) -> None:
    """Stream one sample to the terminal, print several, or write them to --output."""
    from charrnn.files import write_text
    from charrnn.sample import Streamer, generate

    prime, skip = args.get("prime", ""), bool(args.get("skip_unknown"))
    shown = model.seen_prime(prime, skip)  # what the model reads: checked before any output
    n = args.get("num_samples", 1)
    if "output" in args:  # a seed for every file, so that each sample can be made again
        if sample.seed is None:
            sample = replace(sample, seed=_new_seed())
    if n == 1 and "output" not in args:
        sys.stdout.write(shown)
        with Streamer(sys.stdout) as stream:
            generate(model.net, model.vocab, sample, prime, on_text=stream, skip_unknown=skip)
        print()
        return
    texts, _ = generate(model.net, model.vocab, sample, prime, num_samples=n, skip_unknown=skip)
    if "output" not in args:
        for i, text in enumerate(texts, 1):
            print(f"--- sample {i} ---\n{shown}{text}")
    elif args.get("format") == "jsonl":
        rows = [{"sample": i, "text": shown + t, **asdict(sample), "prime": shown,
                 "checkpoint": str(model.path)} for i, t in enumerate(texts)]
        write_text(Path(args["output"]), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        write_text(Path(args["output"]), "".join(shown + t + "\n" for t in texts))
    if "output" in args:
        print(f"wrote {n} sample{'s' * (n > 1)} to {args['output']}", file=sys.stderr)


def write_items(model, sample: SampleConfig, args: dict) -> None:
    """Print --num-samples whole items, one per line (or write them to --output), and say on
    stderr which reached --length before their end and what --novel threw away."""
    from charrnn import items
    from charrnn.files import write_text

    n, shown = args.get("num_samples", 1), model.seen_prime(args.get("prime", ""), bool(args.get("skip_unknown")))
    if sample.seed is None:  # drawn and recorded, so that any list can be made again
        sample = replace(sample, seed=_new_seed())
    draw = model.draw_items(sample, args.get("prime", ""), n, args.get("label"), bool(args.get("novel")),
                            bool(args.get("skip_unknown")))
    # one item a line; items that may hold line breaks (another separator): a blank line between
    separator = "\n" if items.separator(model.list["separator"]) == "\n" else "\n\n"
    if args.get("format") == "jsonl":
        text = "".join(json.dumps({"item": i, "text": t, "label": None if label is None else model.labels[label],
                                   "whole": whole, **asdict(sample), "prime": shown, "novel": bool(args.get("novel")),
                                   "checkpoint": str(model.path)}, ensure_ascii=False) + "\n"
                       for i, (t, whole, label) in enumerate(zip(draw.texts, draw.whole, draw.labels)))
    else:
        text = "".join(t + separator for t in draw.texts)
    if "output" in args:
        write_text(Path(args["output"]), text)
        print(f"wrote {len(draw.texts)} items to {args['output']}", file=sys.stderr)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    cut = [i for i, whole in enumerate(draw.whole, 1) if not whole]
    if cut:
        print(f"note: item{'s' * (len(cut) > 1)} {', '.join(map(str, cut[:10]))}{' ...' * (len(cut) > 10)} reached "
              f"--length {sample.length} before {'their' if len(cut) > 1 else 'its'} end: cut, not whole "
              "(raise --length)", file=sys.stderr)
    if args.get("novel"):
        print(f"novel: kept {len(draw.texts)} of {draw.draws:,} draws; threw away {draw.copies:,} copies of the "
              f"training list and {draw.repeats:,} repeats (seed {sample.seed})", file=sys.stderr)
    if draw.shortfall(n):
        raise CharRNNError(draw.shortfall(n))


def _new_seed() -> int:
    import numpy as np

    return int(np.random.SeedSequence().entropy % 2**63)


def run() -> None:
    """The console script's entry point."""
    flags.run_main(main)
