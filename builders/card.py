"""The dataset card: YAML metadata the Hub reads, rendered from `dataset_cards/`."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import datasets
from huggingface_hub import DatasetCard, DatasetCardData

from turnphase.builders import schema

TEMPLATE = "turnphase_dataset.md"


def template_path() -> Path:
    return Path(str(resources.files("turnphase.dataset_cards") / TEMPLATE))


def variant_repo_name(model_id: str) -> str:
    """The naming scheme for variant repos: `turnphase-<model name>`, lower case.

    `HuggingFaceTB/SmolLM2-135M-Instruct` -> `turnphase-smollm2-135m-instruct`;
    a local folder or GGUF file uses its file name.
    """
    name = Path(model_id.rstrip("/")).name
    name = re.sub(r"\.gguf$", "", name, flags=re.I)
    name = re.sub(r"\.(q\d\w*|f16|f32|bf16)$", "", name, flags=re.I)
    slug = re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.")
    return f"turnphase-{slug}"[:96]


def config_names(layers: list[int]) -> list[str]:
    return [schema.CONVERSATIONS, schema.TOKENS] + [schema.layer_config(L) for L in layers]


def card_data(provenance: dict) -> DatasetCardData:
    layers = provenance["layers"]
    d_model, dtype = provenance["model"]["d_model"], provenance["dtype"]
    rows = provenance["counts"]["rows"]
    configs, infos = [], []
    for name in config_names(layers):
        configs.append(
            {
                "config_name": name,
                "data_files": [{"split": schema.SPLIT, "path": schema.data_files_glob(name)}],
            }
        )
        features = datasets.Features.from_arrow_schema(schema.schema_for(name, d_model, dtype))
        infos.append(
            {
                "config_name": name,
                "features": features._to_yaml_list(),
                "splits": [
                    {
                        "name": schema.SPLIT,
                        "num_bytes": provenance["counts"]["bytes"][name],
                        "num_examples": rows[name],
                    }
                ],
            }
        )
    n_tokens = provenance["counts"]["tokens"]
    size = (
        "n<1K"
        if n_tokens < 1_000
        else "1K<n<10K"
        if n_tokens < 10_000
        else ("10K<n<100K" if n_tokens < 100_000 else "100K<n<1M" if n_tokens < 1_000_000 else "1M<n<10M")
    )
    return DatasetCardData(
        license=provenance.get("license", "other"),
        language=["en"],
        language_creators=["machine-generated"],
        annotations_creators=["machine-generated"],
        source_datasets=["original"],
        task_categories=["feature-extraction", "text-generation"],
        size_categories=[size],
        pretty_name=f"turnphase: {provenance['model']['id']}",
        tags=["interpretability", "activations", "turn-taking", "synthetic", "turnphase"],
        configs=configs,
        dataset_info=infos,
    )


def render_card(provenance: dict, repo_id: str | None = None, revision: str | None = None) -> str:
    """The card's Markdown; `repo_id` and `revision` (a branch) name the repo in its examples."""
    model = provenance["model"]
    gen = provenance["generation"]
    branch = revision if revision and revision != "main" else None
    card = DatasetCard.from_template(
        card_data(provenance),
        template_path=str(template_path()),
        pretty_name=f"turnphase: {model['id']}",
        turnphase_version=provenance["turnphase_version"],
        model_id=model["id"],
        model_revision=model.get("revision") or "n/a",
        weights_sha256=model.get("weights_sha256") or "n/a",
        chat_template_sha256=model.get("chat_template_sha256") or "n/a",
        n_layers=model["n_layers"],
        d_model=model["d_model"],
        layers=provenance["layers"],
        dtype=provenance["dtype"],
        n_conversations=provenance["counts"]["conversations"],
        n_dropped=len(provenance["counts"]["dropped"]),
        dropped=provenance["counts"]["dropped"],
        rejected=provenance["counts"].get("rejected_attempts") or {},
        rounds=gen["rounds"],
        n_tokens=provenance["counts"]["tokens"],
        strategy=gen["strategy"],
        seed=provenance["seed"],
        generation_text=gen["description"],
        source=gen.get("source"),
        regenerate=gen.get("regenerate"),
        prompts_json=json.dumps(gen["prompts"], indent=2),
        repo_id=repo_id or f"YOUR_NAME/{variant_repo_name(model['id'])}",
        variant_name=variant_repo_name(model["id"]),
        revision_arg=f', revision="{revision}"' if branch else "",
        revision_flag=f" --revision {branch}" if branch else "",
    )
    return str(card)
