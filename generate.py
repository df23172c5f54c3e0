"""Generate text from a trained checkpoint: python generate.py --prime "ROMEO:" --length 300.

The flags and the command live in charrnn/cli_generate.py (also installed as `charrnn-generate`).
"""
from charrnn import flags
from charrnn.cli_generate import build_parser, main  # noqa: F401  (build_parser: --help, tests)

if __name__ == "__main__":
    flags.run_main(main)
