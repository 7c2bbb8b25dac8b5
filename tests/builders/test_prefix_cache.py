"""Reusing each conversation's KV cache between generate calls gives what a full re-read gives."""

import pytest
from tiny_model import tiny_config_kwargs

from turnphase.builders import conversations as conv
from turnphase.builders import variants
from turnphase.builders.prefix_cache import STATIC_LENGTH_STEP, common_prefix

torch = pytest.importorskip("torch")

QWEN = "qwen2.5-coder-1.5b-instruct"  # `pytest -m variant` after `make qwen`


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(
    scope="module",
    params=[
        "tiny",
        pytest.param("default", marks=pytest.mark.slow),
        pytest.param(QWEN, marks=pytest.mark.variant),
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
            ],
        ),
    ],
)
def any_model(request, tiny):
    """(model, tokenizer, atol): the tiny model, SmolLM2-135M whose logits run to ~35, the 1.5B
    variant (grouped-query attention, 2 KV heads for 12 query heads; attention biases), and
    SmolLM2-135M in bfloat16 on CUDA (`pytest -m gpu`, not run on this project's CPU machines)."""
    if request.param == "tiny":
        # float32 agrees to ~1e-9 here; keys/values of the wrong tokens move logits by ~1e-5
        # even in this tiny random model, whose logits barely depend on attention
        return (*tiny, 1e-6)
    from turnphase.builders.model import load_model

    if request.param == QWEN:
        variants.part_files(variants.VARIANTS[QWEN])  # one line saying `make qwen` when missing
    if request.param == "cuda":
        loaded = load_model(None, layers="auto", device="cuda", dtype="bfloat16")
        # bfloat16 keeps 8 bits of mantissa: logits of ~35 are good to ~0.14 per rounding, and
        # cached keys/values were rounded in another batch shape than the full forward's
        return loaded.model, loaded.tokenizer, 0.5
    loaded = load_model(None if request.param == "default" else request.param, layers="auto")
    return loaded.model, loaded.tokenizer, 1e-3


def _chats():
    # different lengths, so rows reuse prefixes of different lengths and the batch has holes
    return [
        [{"role": "system", "content": "About jazz."}, {"role": "user", "content": "Why is jazz?"}],
        [
            {"role": "system", "content": "About coral reefs and the tiny animals that build them."},
            {"role": "user", "content": "What is a coral reef made of?"},
        ],
    ]


def _ids(tokenizer, chat):
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _add_turns(chats, replies):
    # follow-ups of different lengths: the new tokens are left-padded after the cached ones,
    # so a row's real tokens have a hole between them
    follow_ups = ["Is that really true?", "Why?"]
    for c, (text, *_), follow_up in zip(chats, replies, follow_ups, strict=True):
        c += [{"role": "assistant", "content": text}, {"role": "user", "content": follow_up}]


def _two_turns(chat, chats):
    first = chat(chats, 12, seed=1, keys=[0, 1])
    _add_turns(chats, first)
    return first, chat(chats, 12, seed=2, keys=[0, 1])


def test_reused_prefix_gives_the_logits_of_a_full_forward(any_model):
    model, tokenizer, atol = any_model
    chat = conv.BatchedChat(model, tokenizer, conv.GenerationSettings())
    chats = _chats()
    # the second call's batch already has holes; the third reuses what it stored
    _add_turns(chats, _two_turns(chat, chats)[1])
    rows = [_ids(tokenizer, c) for c in chats]
    ids, mask, cache = chat.cache.batch([0, 1], rows, chat.pad_id, 1)
    reused = cache.get_seq_length()
    assert 0 < reused < ids.shape[1]
    assert (mask[:, reused:] == 0).any()  # a hole between one row's cached and new tokens
    ids, mask = ids.to(model.device), mask.to(model.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        out = model(
            input_ids=ids[:, reused:], attention_mask=mask, position_ids=positions[:, reused:], cache=cache
        )
        for b, row in enumerate(rows):
            full = model(input_ids=torch.tensor([row], device=model.device)).logits[0, -1]
            torch.testing.assert_close(out.logits[b, -1], full, atol=atol, rtol=0)


def test_generation_with_and_without_the_cache_agree(tiny):
    model, tokenizer = tiny
    settings = conv.GenerationSettings()
    cached = conv.BatchedChat(model, tokenizer, settings)
    plain = conv.BatchedChat(model, tokenizer, settings, reuse_cache=False)
    with_cache, without = _two_turns(cached, _chats()), _two_turns(plain, _chats())
    assert with_cache == without
    assert cached.cache.reused_tokens > 0 and plain.cache.reused_tokens == 0
    assert cached.cache.fed_tokens < plain.cache.fed_tokens


def test_an_entry_holds_the_prompt_and_the_reply_it_computed(tiny):
    model, tokenizer = tiny
    chat = conv.BatchedChat(model, tokenizer, conv.GenerationSettings())
    chats = _chats()
    replies = chat(chats, 12, seed=1, keys=["a", None])
    assert list(chat.cache.entries) == ["a"]  # unkeyed chats are forgotten after the call
    tokens, kv = chat.cache.entries["a"]
    prompt = _ids(tokenizer, chats[0])
    assert tokens[: len(prompt)] == prompt
    text, finished = replies[0].text, replies[0].finished
    held = tokenizer.decode(tokens[len(prompt) :], skip_special_tokens=True).strip()
    # a reply cut off at the limit lacks its last token: it was sampled but never fed back
    assert held == text if finished else text.startswith(held)
    n_layers = model.config.num_hidden_layers
    heads, dim = (
        model.config.num_key_value_heads,
        model.config.hidden_size // model.config.num_attention_heads,
    )
    assert kv.shape == (n_layers, 2, heads, len(tokens), dim)


def test_a_static_cache_holds_what_the_buffers_hold(tiny):
    """--compile-decoding's StaticCache: the same batch, the reused keys and values in the same
    columns and nothing after them, and a length rounded up to STATIC_LENGTH_STEP."""
    model, tokenizer = tiny
    chat = conv.BatchedChat(model, tokenizer, conv.GenerationSettings())
    chats = _chats()
    _add_turns(chats, _two_turns(chat, chats)[1])
    rows = [_ids(tokenizer, c) for c in chats]
    ids, mask, buffers = chat.cache.batch([0, 1], rows, chat.pad_id, 5)
    chat.cache.static = True
    static_ids, static_mask, static = chat.cache.batch([0, 1], rows, chat.pad_id, 5)
    assert torch.equal(static_ids, ids) and torch.equal(static_mask, mask)
    reused = buffers.get_seq_length()
    assert int(static.get_seq_length()) == reused > 0
    length = static.layers[0].max_cache_len
    assert length % STATIC_LENGTH_STEP == 0 and length - STATIC_LENGTH_STEP < ids.shape[1] + 5 <= length
    for filled, whole in zip(buffers.layers, static.layers, strict=True):
        assert torch.equal(whole.keys[:, :, :reused], filled.keys)
        assert torch.equal(whole.values[:, :, :reused], filled.values)
        assert not whole.keys[:, :, reused:].any() and not whole.values[:, :, reused:].any()


def test_compiled_decoding_writes_what_eager_decoding_writes(tiny, monkeypatch):
    """--compile-decoding on this CPU: over calls that reuse the cache, with the call's generator
    and with a generator per row, the replies are eager decoding's, and the steps ran compiled."""
    model, tokenizer = tiny
    compiled_steps = []
    get_compiled_call = type(model).get_compiled_call

    def counting(self, config):
        call = get_compiled_call(self, config)
        return lambda *args, **kwargs: compiled_steps.append(1) or call(*args, **kwargs)

    monkeypatch.setattr(type(model), "get_compiled_call", counting)

    def replies(settings):
        chat, chats = conv.BatchedChat(model, tokenizer, settings), _chats()
        first, second = _two_turns(chat, chats)
        _add_turns(chats, second)
        return [first, second, chat(chats, 12, seed=3, keys=[0, 1], row_seeds=[5, 6])], chat

    eager, _ = replies(conv.GenerationSettings())
    assert not compiled_steps
    compiled, chat = replies(conv.GenerationSettings(compile_decoding=True))
    assert chat.cache.static and chat.cache.reused_tokens > 0
    assert len(compiled_steps) > 10  # every decoding step after a call's first token
    assert compiled == eager


def test_reuse_stops_at_the_first_different_token(tiny):
    model, tokenizer = tiny
    chat = conv.BatchedChat(model, tokenizer, conv.GenerationSettings())
    chat([_chats()[0]], 8, seed=1, keys=[0])
    tokens = chat.cache.entries[0][0]
    changed = tokens[:5] + [tokens[5] + 1] + tokens[6:]
    assert chat.cache.reusable(0, changed) == 5
    # the same prompt again (a retried turn): all but its last token, which must be fed
    assert chat.cache.reusable(0, tokens) == len(tokens) - 1
    assert chat.cache.reusable(1, tokens) == 0
    assert common_prefix([1, 2, 3], [1, 2]) == 2 and common_prefix([], [1]) == 0


def test_sliding_window_models_generate_without_reuse(tiny):
    """A sliding-window cache cannot be laid out as buffers: such models keep transformers' own
    cache, start every call from scratch, and still generate."""
    from transformers import MistralConfig, MistralForCausalLM

    _, tokenizer = tiny
    config = MistralConfig(**tiny_config_kwargs(tokenizer), num_hidden_layers=2, sliding_window=16)
    torch.manual_seed(0)
    model = MistralForCausalLM(config).eval()
    chat = conv.BatchedChat(model, tokenizer, conv.GenerationSettings())
    assert not chat.cache.supported and not chat.cache.reuse
    first, second = _two_turns(chat, _chats())
    assert len(first) == len(second) == 2
    assert chat.cache.entries == {} and chat.cache.reused_tokens == 0
