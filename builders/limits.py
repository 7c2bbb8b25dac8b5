"""What a build may ask of the model and the machine, checked after the model loads and before
anything is written: a build that cannot fit fails in seconds with one line, not after minutes
with a MemoryError or an allocation of 64 GB.

- context: the longest conversation the options allow (system prompt, every round's turns at
  their token limits, the template's markup, the longest generation instruction) must fit the
  model's context window;
- memory: every live conversation keeps its KV cache between calls (`prefix_cache`), and one
  batched call holds a buffer per row besides (with --compile-decoding, a static cache rounded up
  to prefix_cache.STATIC_LENGTH_STEP tokens); at the token limits that must fit the memory
  available now (RAM, or the GPU's free memory).
"""

from __future__ import annotations

from turnphase.builders.config import BuildConfig
from turnphase.builders.errors import TurnphaseError
from turnphase.builders.model import text_config_of

GIB = 1024**3


def chat_tokens(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> int:
    """Tokens of `messages` rendered with the chat template (as the build tokenizes them)."""
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def longest_conversation(cfg: BuildConfig, tokenizer, prompts: dict) -> int:
    """Tokens of the longest conversation the options allow (an upper bound)."""
    empty = [{"role": "system", "content": prompts["system"]}]
    empty += [{"role": r, "content": ""} for _ in range(cfg.rounds) for r in ("user", "assistant")]
    markup = chat_tokens(tokenizer, empty, add_generation_prompt=True)
    instructions = max(
        len(tokenizer(v, add_special_tokens=False)["input_ids"])
        for k, v in prompts.items()
        if k not in ("description", "system") and isinstance(v, str)
    )
    turns = cfg.rounds * (cfg.user_max_new_tokens + cfg.assistant_max_new_tokens)
    return markup + instructions + turns + 16  # 16: the instruction message's own markup


def context_length(model) -> int | None:
    config = text_config_of(model.config)
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if n else None


def kv_bytes_per_token(model, dtype: str | None = None) -> int:
    """Bytes of keys and values per token, in the model's dtype or `dtype` (generation_dtype)."""
    import torch

    config = text_config_of(model.config)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    element = next(model.parameters()).element_size() if dtype is None else getattr(torch, dtype).itemsize
    return config.num_hidden_layers * 2 * kv_heads * head_dim * element


def available_memory(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    import psutil

    return int(psutil.virtual_memory().available)


def check_build_limits(cfg: BuildConfig, loaded, prompts: dict, longest: int | None = None) -> dict:
    """Raise TurnphaseError if the build cannot fit; returns what was checked (for the log).
    `longest`: the longest conversation when they are read from a source (already checked
    against the context, one by one), instead of the bound the generation options allow."""
    import torch

    longest = longest or longest_conversation(cfg, loaded.tokenizer, prompts)
    window = context_length(loaded.model)
    if window is not None and longest > window:
        raise TurnphaseError(
            f"--rounds {cfg.rounds} with up to {cfg.user_max_new_tokens} + {cfg.assistant_max_new_tokens} "
            f"new tokens per round makes conversations of up to {longest} tokens, beyond the model's "
            f"context of {window}; lower --rounds, --user-max-new-tokens or --assistant-max-new-tokens"
        )
    call_length = longest  # the buffers of one batched call, per row
    if cfg.compile_decoding:
        from turnphase.builders.prefix_cache import static_length

        call_length = static_length(longest)
    rows = cfg.n_conversations * longest + min(cfg.batch_size, cfg.n_conversations) * call_length
    need = rows * kv_bytes_per_token(loaded.model, cfg.generation_dtype)
    what = "KV caches"
    if cfg.generation_copy is not None:  # build.generation_model's copy
        element = getattr(torch, cfg.generation_copy).itemsize
        need += sum(p.numel() for p in loaded.model.parameters()) * element
        what += f" and a {cfg.generation_copy} copy of the weights"
    have = available_memory(cfg.device)
    if need > have:
        raise TurnphaseError(
            f"{cfg.n_conversations} conversations of up to {longest} tokens need up to "
            f"{need / GIB:.1f} GiB of {what}, and {have / GIB:.1f} GiB of memory is available on "
            f"{cfg.device}; lower -n (and build more datasets), --rounds or the max-new-tokens options"
        )
    return {"longest_conversation": longest, "context": window, "kv_cache_bytes": need, "available": have}
