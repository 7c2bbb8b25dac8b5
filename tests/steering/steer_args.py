"""Arguments the steering tests share: a tiny build big enough for 3 analysis folds, a small grid."""

from tiny_model import TINY_BUILD_ARGS

# 6 conversations x 2 rounds (3 analysis folds of 2)
TINY_DATA_ARGS = [*TINY_BUILD_ARGS, "-n", "6"]
FAST_STEER = ["--prompts", "4", "--max-new-tokens", "6", "--add", "0.1,0.5", "--rotate", "90"]
FAST_STEER += ["--random", "3", "--kl-tokens", "4", "--bootstrap", "50"]
