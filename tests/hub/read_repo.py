"""Read a turnphase dataset from the Hub endpoint in HF_ENDPOINT, as a user would; print a summary.

    HF_ENDPOINT=http://127.0.0.1:PORT python tests/hub/read_repo.py REPO_ID layer_1 --streaming

Runs in a subprocess because huggingface_hub reads HF_ENDPOINT when it is imported. Prints one
JSON line: rows, the (conversation_id, position) keys' checksum, activation shape and sum, and the
provenance fetched with hf_hub_download, for comparison with the local folder
(`summarize_folder` in conftest.py computes the same numbers with pyarrow).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from datasets import load_dataset
from huggingface_hub import hf_hub_download


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("repo_id")
    p.add_argument("config")
    p.add_argument("--streaming", action="store_true")
    p.add_argument("--revision", default=None)
    args = p.parse_args()

    ds = load_dataset(
        args.repo_id, args.config, split="train", streaming=args.streaming, revision=args.revision
    )
    rows, keys, act_sum, width = 0, 0, 0.0, None
    for batch in ds.with_format("numpy").iter(batch_size=1000):
        rows += len(batch["conversation_id"])
        if "position" in batch:
            keys += int((batch["conversation_id"].astype(np.int64) * 100_003 + batch["position"]).sum())
        if "activation" in batch:
            acts = batch["activation"]  # (batch, d_model)
            width = acts.shape[1]
            act_sum += float(acts.astype(np.float64).sum())
    prov_path = hf_hub_download(args.repo_id, "turnphase.json", repo_type="dataset", revision=args.revision)
    with open(prov_path) as f:
        provenance = json.load(f)
    print(
        json.dumps({"rows": rows, "keys": keys, "act_sum": act_sum, "width": width, "provenance": provenance})
    )


if __name__ == "__main__":
    main()
