"""The dataset card: YAML metadata the Hub reads, rendered from `dataset_cards/`.

The YAML goes through the libraries' own metadata types: `configs` through huggingface_hub's
`DatasetCardData` (in the dataset's order), `dataset_info` through `datasets`' `DatasetInfosDict`.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from importlib import resources
from pathlib import Path

import datasets
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard, DatasetCardData

from turnphase.builders import schema
from turnphase.builders.config import BuildConfig, sampling_copy
from turnphase.builders.conversations import FLAWED_TURN_COUNTS, GenerationSettings

TEMPLATE = "turnphase_dataset.md"
config_names = schema.config_names  # the card's configs are the schema's, in the schema's order


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


def dataset_infos(provenance: dict) -> DatasetInfosDict:
    """Each config's features and split sizes, as `datasets` records them.

    `num_bytes` and `dataset_size` are the Arrow (in-memory) size `datasets` computes on loading,
    `download_size` the Parquet bytes. Builds from before turnphase recorded the Arrow size
    (`counts.arrow_bytes`) get no `splits`: a split without its size would not parse.
    """
    d_model, dtype = provenance["model"]["d_model"], provenance["dtype"]
    counts = provenance["counts"]
    arrow, parquet = counts.get("arrow_bytes") or {}, counts.get("bytes") or {}
    infos = {}
    for name in config_names(provenance["layers"]):
        splits = None
        if name in arrow:
            splits = datasets.SplitDict()
            splits.add(
                datasets.SplitInfo(
                    name=schema.SPLIT, num_bytes=arrow[name], num_examples=counts["rows"][name]
                )
            )
        infos[name] = datasets.DatasetInfo(
            config_name=name,
            features=datasets.Features.from_arrow_schema(schema.schema_for(name, d_model, dtype)),
            splits=splits,
            download_size=parquet.get(name),
            dataset_size=arrow.get(name),
        )
    return DatasetInfosDict(infos)


def _size_category(n: int) -> str:
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return label
    return "1M<n<10M" if n < 10_000_000 else "10M<n<100M"


def card_data(provenance: dict) -> DatasetCardData:
    configs = [
        {"config_name": name, "data_files": [{"split": schema.SPLIT, "path": schema.data_files_glob(name)}]}
        for name in config_names(provenance["layers"])
    ]
    data = DatasetCardData(
        license=provenance.get("license", "other"),
        language=["en"],
        language_creators=["machine-generated"],
        annotations_creators=["machine-generated"],
        source_datasets=["original"],
        task_categories=["feature-extraction", "text-generation"],
        size_categories=[_size_category(provenance["counts"]["tokens"])],
        pretty_name=f"turnphase: {provenance['model']['id']}",
        tags=["interpretability", "activations", "turn-taking", "synthetic", "turnphase"],
        configs=configs,
    )
    dataset_infos(provenance).to_dataset_card_data(data)
    for info in data["dataset_info"]:  # an unknown size is left out, not written as `null`
        for key in [k for k, v in info.items() if v is None]:
            del info[key]
    return data


def _parameters(n: int | None) -> str | None:
    """134515008 -> '134.5M'."""
    if not n:
        return None
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def limitations(provenance: dict) -> dict:
    """This build's numbers for the card's Limitations section (older provenances lack some)."""
    counts, model = provenance["counts"], provenance["model"]
    kept, dropped = counts["conversations"], len(counts["dropped"])
    return {
        "kept": kept,
        "dropped": dropped,
        "asked": kept + dropped,
        "drop_rate": f"{dropped / (kept + dropped):.0%}" if kept + dropped else "n/a",
        "turns": counts.get("turns"),
        "retries": counts.get("retries"),
        **{name: counts.get(name) for name in FLAWED_TURN_COUNTS},
        "parameters": _parameters(model.get("n_params")),
        "small": bool(model.get("n_params")) and model["n_params"] < 1e9,
    }


def generation_flags(build_options: dict) -> str:
    """The generation options a build set away from their defaults, as `turnphase build` flags
    (the strategy and seed have rows of their own)."""
    defaults, flags = GenerationSettings(), []
    for f in fields(GenerationSettings):
        value = build_options.get(f.name, getattr(defaults, f.name))
        if f.name in ("strategy", "seed", "seed_per_conversation") or value == getattr(defaults, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        flags.append(flag if value is True else f"{flag} {value}")
    return " ".join(flags)


def render_card(provenance: dict, repo_id: str | None = None, revision: str | None = None) -> str:
    """The card's Markdown; `repo_id` and `revision` (a branch) name the repo in its examples."""
    model = provenance["model"]
    gen = provenance["generation"]
    options = provenance.get("build_options") or {}
    weights = options.get("model_dtype", BuildConfig.model_dtype)  # left out of options at its default
    branch = revision if revision and revision != "main" else None
    card = DatasetCard.from_template(
        card_data(provenance),
        template_path=str(template_path()),
        pretty_name=f"turnphase: {model['id']}",
        turnphase_version=provenance["turnphase_version"],
        model_id=model["id"],
        model_revision=model.get("revision") or "n/a",
        model_license=model.get("license"),  # None: not recorded (older builds)
        variant=model.get("variant"),  # a named embedded variant (variants.py), or None
        data_license=provenance.get("license", "other"),
        weights_sha256=model.get("weights_sha256") or "n/a",
        chat_template_sha256=model.get("chat_template_sha256") or "n/a",
        n_layers=model["n_layers"],
        d_model=model["d_model"],
        layers=provenance["layers"],
        dtype=provenance["dtype"],
        n_conversations=provenance["counts"]["conversations"],
        n_dropped=len(provenance["counts"]["dropped"]),
        dropped=provenance["counts"]["dropped"],
        rejected=provenance["counts"].get("rejected_attempts"),  # None: not recorded (older builds)
        limits=limitations(provenance),
        rounds=gen["rounds"],
        n_tokens=provenance["counts"]["tokens"],
        strategy=gen["strategy"],
        seed=provenance["seed"],
        seed_per_conversation=options.get("seed_per_conversation", False),
        model_dtype=weights,
        generation_dtype=sampling_copy(weights, options.get("generation_dtype")),
        generation_options=generation_flags(options),
        generation_text=gen["description"],
        source=gen.get("source"),
        regenerate=gen.get("regenerate"),
        prompts_json=json.dumps(gen["prompts"], indent=2),
        repo_id=repo_id or f"YOUR_NAME/{variant_repo_name(model['id'])}",
        published=repo_id is not None,
        variant_name=variant_repo_name(model["id"]),
        revision_arg=f', revision="{branch}"' if branch else "",
        revision_flag=f" --revision {branch}" if branch else "",
        revision_note=f", branch {branch}" if branch else "",
    )
    return str(card)
