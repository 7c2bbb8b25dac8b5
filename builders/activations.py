"""Per-layer activations, read with nnsight during one forward pass per conversation.

"Layer L" is the output of decoder block L (0-based), which equals `hidden_states[L + 1]` of a
plain transformers forward with `output_hidden_states=True` for every block but the last (there
transformers applies the final norm to `hidden_states[-1]`; turnphase stores the block output).
"""

from __future__ import annotations

import numpy as np
import torch


def decoder_blocks(envoy):
    """The envoy of the model's list of decoder blocks (Llama/Mistral/Qwen `model.layers`,
    GPT-2 style `transformer.h`)."""
    for path in ("model.layers", "model.model.layers", "transformer.h", "model.language_model.layers"):
        node = envoy
        try:
            for part in path.split("."):
                node = getattr(node, part)
            return node
        except AttributeError:
            continue
    raise ValueError("cannot find the decoder blocks of this model (tried model.layers, transformer.h)")


def hidden_of(output):
    """A decoder block's hidden states (some models return them first in a tuple)."""
    return output[0] if isinstance(output, tuple) else output


class LayerReader:
    """Read the residual stream after chosen decoder blocks.

    reader = LayerReader(model, tokenizer, layers=[13, 17])
    acts = reader(input_ids)  # {13: (n_tokens, d_model) float32 array, 17: ...}
    many = reader.batch([ids_a, ids_b])  # one forward: [{13: (len_a, d_model), ...}, {...}]

    dtype: the arrays' dtype ("float32", or the dataset's "float16"), cast on the model's device
    before the copy to the host (torch rounds to float16 bit for bit as numpy does).
    """

    def __init__(self, model, tokenizer, layers: list[int], dtype: str = "float32"):
        from nnsight import TransformersModel

        self.lm = TransformersModel(model, tokenizer=tokenizer)
        self.blocks = decoder_blocks(self.lm)
        self.layers = list(layers)
        self.device = next(model.parameters()).device
        self.dtype = getattr(torch, dtype)

    def __call__(self, input_ids: list[int]) -> dict[int, np.ndarray]:
        ids = torch.tensor([input_ids], device=self.device)
        saved = []
        with torch.inference_mode(), self.lm.trace(ids):
            for L in self.layers:
                saved.append(hidden_of(self.blocks[L].output).save())
        return {
            L: s[0].to(self.dtype).cpu().numpy() for L, s in zip(self.layers, saved, strict=True)
        }  # (n, d_model)

    def batch(self, sequences: list[list[int]]) -> list[dict[int, np.ndarray]]:
        """Several sequences in one forward, right-padded with the padding masked out: a causal
        model's real tokens never see the pads after them, so each sequence gets its own
        activations up to the last bits of a batched matrix product. One sequence: __call__."""
        if len(sequences) == 1:
            return [self(sequences[0])]
        return self.submit(sequences).result()

    def submit(self, sequences: list[list[int]]) -> Pending:
        """Start `batch`'s forward and return at once. On CUDA the read layers are copied to pinned
        host memory on a side stream, so submitting the next batch before taking this one's
        `result()` overlaps the copies with the next forward (not yet run on a GPU here)."""
        longest = max(len(s) for s in sequences)
        ids = torch.zeros((len(sequences), longest), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(sequences):
            ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
        saved = []
        with (
            torch.inference_mode(),
            self.lm.trace(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)),
        ):
            for L in self.layers:
                saved.append(hidden_of(self.blocks[L].output).save())
        lengths = [len(s) for s in sequences]
        cast = [t.to(self.dtype) for t in saved]  # on the device: fewer bytes to copy, no host cast
        if self.device.type != "cuda":
            return Pending(self.layers, cast, lengths)
        copies = torch.cuda.Stream(self.device)
        copies.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(copies):
            host = [
                torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in cast
            ]
            done = torch.cuda.Event()
            done.record(copies)
        for t in cast:
            t.record_stream(copies)  # the forward's stream may reuse their memory only after the copy
        return Pending(self.layers, host, lengths, done)


class Pending:
    """A submitted batch's read layers; `result()` waits for their copy to the host.

    On CUDA the arrays are views of the pinned memory the copies went to. (Until 2026-12-07 they
    were copied out of it on the main thread, and a build then copied them again when it joined a
    shard's arrays; the H200's 1.57x was measured so.) The pinned memory is held while the arrays
    are; once they are dropped, torch's caching host allocator gives it to a later batch's copies.
    A caller that keeps many batches' arrays holds that much page-locked memory (a build holds one
    shard's)."""

    def __init__(self, layers: list[int], host: list, lengths: list[int], done=None):
        self.layers, self.host, self.lengths, self.done = layers, host, lengths, done

    def result(self) -> list[dict[int, np.ndarray]]:
        if self.done is not None:  # CUDA: wait for the copies
            self.done.synchronize()
        arrays = [t.numpy() for t in self.host]  # (batch, longest, d_model) per layer
        return [
            {L: a[i, :n] for L, a in zip(self.layers, arrays, strict=True)}
            for i, n in enumerate(self.lengths)
        ]
