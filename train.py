"""Train a character-level language model: python train.py --corpus FILE [--time-budget 10m].

The flags and the command live in charrnn/cli_train.py (also installed as `charrnn-train`).
"""
from charrnn import flags
from charrnn.cli_train import build_parser, main  # noqa: F401  (build_parser: --help, tests)

if __name__ == "__main__":
    flags.run_main(main)
