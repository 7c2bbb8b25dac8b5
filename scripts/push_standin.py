"""Push a built dataset folder to the STAND-IN Hub and read it back, as `turnphase push` users would.

    .venv/bin/python scripts/push_standin.py data/qwen --layer layer_17

For a dataset that is pushed nowhere for real (no Hub is reachable here): starts the in-process
stand-in of tests/hub/standin_hub.py (it is not the Hub: it imitates the endpoints huggingface_hub
and `datasets` call, over the LFS protocol), runs `turnphase push` on the folder in a subprocess
pointed at it, then checks that the remote files equal the folder's byte for byte and that
`load_dataset(REPO, CONFIG, streaming=True)` gives the folder's rows, keys and activation sum for
the tokens config and one layer. Prints what it checked; exit 1 on any difference.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "hub"))

from hub_clients import folder_files, hub_env, read_repo, summarize_folder  # noqa: E402
from standin_hub import StandinHub  # noqa: E402

TOKEN = "hf_standinTOKEN_scripts_push"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a dataset folder `turnphase validate` accepts")
    p.add_argument("--repo", default="alice/turnphase-dataset", help="NAMESPACE/NAME on the stand-in")
    p.add_argument("--layer", default=None, help="the layer config read back (default: the first)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds the push may take")
    args = p.parse_args()
    layers = sorted(d.name for d in args.folder.glob("layer_*"))
    if not layers:
        p.error(f"{args.folder}: no layer_* folder; is it a turnphase dataset?")
    layer = args.layer or layers[0]
    with StandinHub() as hub, tempfile.TemporaryDirectory() as home:
        env = hub_env(hub.endpoint, Path(home), token=TOKEN)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "turnphase.builders.cli", "push", str(args.folder), args.repo],
            env=env,
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            print(f"turnphase push failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
            return 1
        local, remote = folder_files(args.folder), hub.files(args.repo)
        remote.pop(".gitattributes", None)
        size = sum(len(b) for b in local.values())
        print(f"pushed {len(local)} files, {size / 2**20:.0f} MiB, in {seconds:.0f} s to the stand-in Hub")
        same = remote == local
        print(f"remote files equal the folder's byte for byte: {same}")
        for config in ("tokens", layer):
            read = read_repo(args.repo, config, env, streaming=True)
            mine = summarize_folder(args.folder, config)
            equal = read == mine
            same &= equal
            print(
                f"load_dataset({args.repo!r}, {config!r}, streaming=True): {read['rows']:,} rows, "
                f"width {read['width']}, activation sum {read['act_sum']:.6g}; equals the folder: {equal}"
            )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
