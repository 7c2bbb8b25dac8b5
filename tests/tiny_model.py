"""A tiny random Llama chat model, built in code and saved like a real one.

    folder = save_tiny_chat_model(tmp_path / "tiny")   # then: turnphase build --model FOLDER

The tokenizer is a byte-level BPE trained on a few sentences, with ChatML special tokens and
template, so offsets, decoding and chat rendering behave like SmolLM2's. The weights are random,
except that every embedding carries a constant feature the LM head reads as "end of turn", so
sampled turns end after a few tokens instead of running to the token limit.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A small build with the tiny model: 4 conversations x 2 rounds, layers 1 and 3, 2 shards.
TINY_BUILD_ARGS = ["-n", "4", "--rounds", "2", "--layers", "1,3", "--conversations-per-shard", "2"]
TINY_BUILD_ARGS += [
    "--batch-size",
    "3",
    "--user-max-new-tokens",
    "24",
    "--assistant-max-new-tokens",
    "24",
    "--seed",
    "7",
]

CORPUS = [
    "Why is the sky blue? Because air scatters short wavelengths of light more than long ones.",
    "How did jazz shape the twentieth century? It carried new rhythms into dance, film and protest.",
    "What is a coral reef? A living structure built by tiny animals that host algae.",
    "Is that really true? Yes, and the evidence comes from many careful measurements.",
]


def tiny_config_kwargs(tokenizer) -> dict:
    """The tiny sizes and the tokenizer's ids, for any decoder config class."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def save_tiny_chat_model(
    folder: Path, *, chat_template: str | None = CHATML, eos_bias: float = 0.25, seed: int = 0
) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    if chat_template:
        tokenizer.chat_template = chat_template

    torch.manual_seed(seed)
    config = LlamaConfig(**tiny_config_kwargs(tokenizer), num_hidden_layers=4)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 3.0  # a feature every position carries
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[tokenizer.eos_token_id, 0] = eos_bias
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
