"""Each conversation's KV cache, kept between batched `generate` calls.

A conversation grows by one turn at a time, so the prompt of every turn starts with the prompt of
the turn before plus what the model wrote. Without a cache every call re-reads the whole
conversation (and on the 2-core machine that prompt prefill, not decoding, is most of the build).
With it, a call only feeds each row's new tokens.

Reuse is keyed by the caller (a conversation id) and always checked on tokens: an entry holds
the token ids its keys and values were computed for, and a new prompt reuses the longest common
prefix. Re-tokenising the chat-template text of a sampled reply does not always give back the
sampled ids, and a retried turn rewrites its end; both just shorten the reused prefix.

Rows of one call reuse prefixes of different lengths and add suffixes of different lengths, so
the batch is laid out as two left-padded regions, the cached one and the new one:

    row 0:  [pad pad c c c c | pad s s]
    row 1:  [c c c c c c c c | s s s s]

with the attention mask zero on every pad. `generate` derives position ids from the mask's
cumulative sum, so each row's positions run on without gaps, exactly as when its cache was
written. Only models whose every layer keeps a plain growing cache (full attention) get the
buffers and reuse prefixes; for others (sliding windows, linear attention) `supported` is False
and every call starts from scratch with transformers' own cache.

With `static=True` (`--compile-decoding`) a call's cache is transformers' StaticCache instead,
laid out the same way: its length is fixed, so `generate` compiles the decoding step (CUDA graphs
on a GPU, where a step of a small model is bound by launching its kernels one by one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from pathlib import Path

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import DynamicLayer, StaticLayer

# A static cache's length is rounded up to a multiple of this, so that calls share the shapes a
# compiled decoding step was made for.
STATIC_LENGTH_STEP = 256


def static_length(tokens: int) -> int:
    """The length of a static cache that holds `tokens`: rounded up to STATIC_LENGTH_STEP."""
    return -(-tokens // STATIC_LENGTH_STEP) * STATIC_LENGTH_STEP


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class BufferLayer(DynamicLayer):
    """A cache layer writing into buffers sized once for the whole `generate` call.

    transformers' DynamicLayer grows by concatenation, which copies the whole cache at every
    decoding step: with 45 rows of 1000 cached tokens that copy was 63% of a decoding step on
    this machine. Keys and values handed to attention are views of the filled part."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def allocate(self, keys_like: torch.Tensor, values_like: torch.Tensor) -> None:
        """Buffers for tensors shaped like these ([batch, heads, any, dim])."""
        batch, heads, _, k_dim = keys_like.shape
        self.key_buffer = keys_like.new_zeros((batch, heads, self.capacity, k_dim))
        self.value_buffer = values_like.new_zeros((batch, heads, self.capacity, values_like.shape[-1]))
        self.device, self.is_initialized = keys_like.device, True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.allocate(key_states, value_states)

    def advance(self, n: int) -> None:
        """n more columns of the buffers are filled."""
        self.length += n
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.allocate(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.advance(key_states.shape[-2])
        return self.keys, self.values


def _buffers(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """A cache layer's whole key and value buffers, [batch, heads, capacity, dim]."""
    if isinstance(layer, BufferLayer):
        return layer.key_buffer, layer.value_buffer
    return layer.keys, layer.values


def _filled(layer, n: int) -> None:
    """The first n columns of a cache layer's buffers hold keys and values."""
    if isinstance(layer, StaticLayer):
        layer.cumulative_length.fill_(n)
    else:
        layer.advance(n)


class _HashingWriter:
    """A file's `write` that hashes what it writes (torch writes sequentially) and remembers the
    OSError that torch's zip writer would turn into a RuntimeError."""

    def __init__(self, f):
        self.f, self.error, self.sha256 = f, None, hashlib.sha256()

    def write(self, data) -> int:
        try:
            n = self.f.write(data)
        except OSError as e:
            self.error = e
            raise
        self.sha256.update(data)
        return n

    def flush(self) -> None:
        self.f.flush()


class PrefixCache:
    """token ids and their keys/values ([layers, 2, kv_heads, tokens, head_dim]) per key."""

    def __init__(self, model_config, *, reuse: bool = True, static: bool = False):
        self.config = model_config
        probe = DynamicCache(config=model_config)
        # every layer a plain growing cache (full attention): buffers and prefix reuse apply
        self.supported = bool(probe.layers) and all(type(layer) is DynamicLayer for layer in probe.layers)
        self.reuse = reuse and self.supported
        self.static = static and self.supported  # StaticCache, for a compiled decoding step
        self.entries: dict[Hashable, tuple[list[int], torch.Tensor]] = {}
        self.reused_tokens = 0  # prompt tokens not fed again thanks to the cache
        self.fed_tokens = 0  # prompt tokens fed

    def reusable(self, key: Hashable | None, ids: list[int]) -> int:
        """How many leading tokens of `ids` the entry for `key` covers; at least one token is
        always left to feed, since generation starts from the last prompt token's logits."""
        if key is None or key not in self.entries or not self.reuse:
            return 0
        return min(common_prefix(self.entries[key][0], ids), len(ids) - 1)

    def batch(self, keys: list[Hashable | None], rows: list[list[int]], pad_id: int, max_new_tokens: int):
        """input_ids and attention_mask (both [B, C + S]), and a cache holding the C reused
        columns with room for the rest and `max_new_tokens` (None for unsupported models): of
        BufferLayers, or a StaticCache whose length is rounded up to STATIC_LENGTH_STEP."""
        reuse = [self.reusable(k, r) for k, r in zip(keys, rows, strict=True)]
        width_c = max(reuse)
        width_s = max(len(r) - c for r, c in zip(rows, reuse, strict=True))
        ids = torch.full((len(rows), width_c + width_s), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, (row, c) in enumerate(zip(rows, reuse, strict=True)):
            ids[b, width_c - c : width_c] = torch.tensor(row[:c], dtype=torch.long)
            mask[b, width_c - c : width_c] = 1
            ids[b, width_c + width_s - (len(row) - c) :] = torch.tensor(row[c:], dtype=torch.long)
            mask[b, width_c + width_s - (len(row) - c) :] = 1
        self.reused_tokens += sum(reuse)
        self.fed_tokens += sum(len(r) for r in rows) - sum(reuse)
        if not self.supported:
            return ids, mask, None
        cache = self.new_cache(len(rows), width_c + width_s + max_new_tokens)
        if width_c:
            # [layers, 2, heads, tokens, dim] per entry -> [batch, heads, C, dim] per layer
            some = next(self.entries[k][1] for k, c in zip(keys, reuse, strict=True) if c)
            like = some.new_empty((len(rows), some.shape[2], 0, some.shape[4]))
            for layer in cache.layers:
                if not layer.is_initialized:
                    layer.lazy_initialization(like, like)
            for b, (key, c) in enumerate(zip(keys, reuse, strict=True)):
                if c:
                    kv = self.entries[key][1]
                    for i, layer in enumerate(cache.layers):
                        key_buffer, value_buffer = _buffers(layer)
                        key_buffer[b, :, width_c - c : width_c] = kv[i, 0, :, :c]
                        value_buffer[b, :, width_c - c : width_c] = kv[i, 1, :, :c]
            for layer in cache.layers:
                _filled(layer, width_c)
        return ids, mask, cache

    def new_cache(self, rows: int, capacity: int):
        """An empty cache for a call of `rows` rows holding up to `capacity` tokens: of BufferLayers,
        or a StaticCache whose length is rounded up to STATIC_LENGTH_STEP. (`batch` fills only
        layers not yet initialized, so a cache handed out again, already initialized and reset,
        keeps its tensors: `scripts/bench_gpu.py --generation` tries that for CUDA graphs.)"""
        if self.static:
            return StaticCache(config=self.config, max_cache_len=static_length(capacity))
        cache = DynamicCache(config=self.config)
        cache.layers = [BufferLayer(capacity) for _ in cache.layers]
        return cache

    def store(self, keys, rows, mask, cache, generated: list[list[int]]) -> None:
        """Keep, for each keyed row, its prompt and the generated tokens the cache now holds
        (the last sampled token was never fed back, so its keys and values do not exist)."""
        if not self.reuse or cache is None:
            return
        width, first = mask.shape[1], cache.layers[0].keys
        held = int(cache.get_seq_length()) - width  # a StaticCache's is a tensor
        for b, (key, row, new) in enumerate(zip(keys, rows, generated, strict=True)):
            if key is None:
                continue
            n = min(len(new), held)
            where = torch.cat([mask[b].nonzero().flatten(), torch.arange(width, width + n)]).to(first.device)
            kv = first.new_empty((len(cache.layers), 2, first.shape[1], len(where), first.shape[3]))
            for i, layer in enumerate(cache.layers):
                torch.index_select(layer.keys[b], 1, where, out=kv[i, 0])
                torch.index_select(layer.values[b], 1, where, out=kv[i, 1])
            self.entries[key] = (list(row) + list(new[:n]), kv)

    def keep(self, keys) -> None:
        """Forget every entry but these (conversations dropped, finished or not reused)."""
        keys = set(keys)
        self.entries = {k: v for k, v in self.entries.items() if k in keys}

    def forget(self, keys) -> None:
        for key in keys:
            self.entries.pop(key, None)

    def alias(self, key: Hashable, of: Hashable) -> None:
        """Let `key` start from the entry of `of` (the same tensors: entries are replaced, never
        written into), if it has one: a second reply to the same prompt reuses its prefix."""
        if of in self.entries:
            self.entries[key] = self.entries[of]

    def rename(self, key: Hashable, to: Hashable) -> None:
        """Move the entry of `key` to `to` (replacing what `to` held)."""
        if key in self.entries:
            self.entries[to] = self.entries.pop(key)

    def save(self, path: Path) -> str:
        """Write the entries to `path` (the caller makes it atomic: `writer.atomic_path`); returns
        the file's sha256, computed as it is written. A failed write raises its OSError (torch
        reports it as "unexpected pos ..." otherwise)."""
        with open(path, "wb") as f:
            sink = _HashingWriter(f)
            try:
                torch.save(self.entries, sink)
            except RuntimeError:
                if sink.error is not None:
                    raise sink.error from None
                raise
        return sink.sha256.hexdigest()

    def load(self, path: Path) -> None:
        self.entries = torch.load(path, weights_only=True)
