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
    """

    def __init__(self, model, tokenizer, layers: list[int]):
        from nnsight import TransformersModel

        self.lm = TransformersModel(model, tokenizer=tokenizer)
        self.blocks = decoder_blocks(self.lm)
        self.layers = list(layers)
        self.device = next(model.parameters()).device

    def __call__(self, input_ids: list[int]) -> dict[int, np.ndarray]:
        ids = torch.tensor([input_ids], device=self.device)
        saved = []
        with torch.inference_mode(), self.lm.trace(ids):
            for L in self.layers:
                saved.append(hidden_of(self.blocks[L].output).save())
        return {
            L: s[0].float().cpu().numpy() for L, s in zip(self.layers, saved, strict=True)
        }  # (n, d_model)
