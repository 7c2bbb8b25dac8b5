"""The dataset card carries the metadata the Hub reads and documents what a user needs."""

from __future__ import annotations

import datasets
import yaml
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard

from turnphase.builders import card, schema
from turnphase.builders.provenance import read_provenance


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_yaml_has_what_the_hub_reads(dataset):
    text = (dataset / schema.CARD_FILE).read_text()
    meta = _front_matter(text)
    prov = read_provenance(dataset)
    assert meta["license"] == prov["license"]
    assert "feature-extraction" in meta["task_categories"]
    assert {"interpretability", "activations", "turnphase"} <= set(meta["tags"])
    expected = schema.config_names(prov["layers"])
    assert [c["config_name"] for c in meta["configs"]] == expected
    for c in meta["configs"]:
        assert c["data_files"] == [{"split": "train", "path": schema.data_files_glob(c["config_name"])}]
    d_model, dtype = prov["model"]["d_model"], prov["dtype"]
    # read back through datasets' public reader of card metadata
    infos = DatasetInfosDict.from_dataset_card_data(DatasetCard(text).data)
    assert sorted(infos) == sorted(expected)
    for info in meta["dataset_info"]:
        features = infos[info["config_name"]].features
        want = datasets.Features.from_arrow_schema(schema.schema_for(info["config_name"], d_model, dtype))
        assert features == want
        assert info["splits"][0]["num_examples"] == prov["counts"]["rows"][info["config_name"]]
    # huggingface_hub's own parser accepts it
    assert DatasetCard.load(dataset / schema.CARD_FILE).data.license == prov["license"]


def test_card_body_documents_the_dataset(dataset):
    prov = read_provenance(dataset)
    body = card.render_card(prov, "alice/turnphase-synthetic", revision="v2")
    for needed in (
        "0.5*k/(n-1)",  # the study's phase scheme
        "phase_round",  # the second scheme
        "hidden_states[L+1]",  # layer convention
        "## How it was generated",
        prov["generation"]["description"],
        'with_format("numpy")',
        'load_dataset("alice/turnphase-synthetic", "layer_1", split="train", streaming=True, revision="v2")',
        "turnphase analyze alice/turnphase-synthetic --streaming --revision v2",
        "turnphase push",
        "turnphase-synthetic-helix",  # this variant's name under the naming scheme
        prov["model"]["id"],
    ):
        assert needed in body, needed
    assert 'revision="' not in card.render_card(prov, "alice/turnphase-synthetic")


def test_variant_repo_names():
    assert card.variant_repo_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "turnphase-smollm2-135m-instruct"
    assert card.variant_repo_name("meta-llama/Llama-3.2-1B-Instruct") == "turnphase-llama-3.2-1b-instruct"
    assert (
        card.variant_repo_name("/models/SmolLM2-135M-Instruct.Q4_1.gguf") == "turnphase-smollm2-135m-instruct"
    )
    assert card.variant_repo_name("./my_model/") == "turnphase-my-model"
