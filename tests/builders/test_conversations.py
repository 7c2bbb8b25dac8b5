import pytest

from turnphase.builders import conversations as conv


@pytest.mark.parametrize(
    ("reply", "question"),
    [
        (
            'One skeptical follow-up question is: "Why would that hold for every reef?"',
            "Why would that hold for every reef?",
        ),
        (
            "**Question:** How did the printing press spread so fast?",
            "How did the printing press spread so fast?",
        ),
        ("A curious student would ask: What made jazz popular?", "What made jazz popular?"),
        ("Sure, here it is.\nIs meditation measurable?", "Is meditation measurable?"),
        ("Meditation lowers stress.", None),
        ("", None),
    ],
)
def test_extract_question(reply, question):
    assert conv.extract_question(reply) == question


@pytest.mark.parametrize(
    ("text", "finished", "problem"),
    [
        ("Why is that?", True, None),
        ("User: Why is that?", True, "role label (User:/Assistant:)"),
        ("It is so.\n\nAssistant: and more", True, "role label (User:/Assistant:)"),
        ("   ", True, "empty"),
        ("It goes on and on", False, "cut off at the token limit"),
        ("What is one skeptical follow-up question to ask?", True, "repeats the instruction"),
    ],
)
def test_turn_problem(text, finished, problem):
    assert conv.turn_problem(text, finished) == problem


class ScriptedChat:
    """Stands in for BatchedChat: replies come from a per-conversation script, in order."""

    def __init__(self, scripts):
        self.scripts = {cid: list(replies) for cid, replies in scripts.items()}
        self.calls = []
        self.keys = []  # the cache keys each call passed
        self.kept = []  # the conversations kept in the cache after each step
        self.asked = []  # stop_at_question of each call
        self.temperatures = []  # the temperature each call passed (None: the settings')

    def __call__(
        self, chats, max_new_tokens, seed, keys=None, row_seeds=None, stop_at_question=False, temperature=None
    ):
        self.asked.append(stop_at_question)
        self.temperatures.append(temperature)
        self.calls.append(len(chats))
        self.keys.append(keys)
        return [self.scripts[self._id(chat)].pop(0) for chat in chats]

    def keep_cache(self, keys):
        self.kept.append(sorted(keys))

    @staticmethod
    def _id(chat):
        # the topic names the conversation in every prompt of the reply strategy
        text = " ".join(m["content"] for m in chat)
        return next(i for i in range(3) if f"topic {i}" in text)


def _convs(n):
    prompts = {
        "system": "About {topic}.",
        "first_user": "Ask about {topic}.",
        "followup_user": "{topic}: {last_answer}",
    }
    return [
        conv.Conversation(i, f"topic {i}", [{"role": "system", "content": f"About topic {i}."}])
        for i in range(n)
    ], prompts


def test_retries_drops_and_non_questions_are_recorded():
    convs, prompts = _convs(3)
    ok = ("Why is that?", True)
    chat = ScriptedChat(
        {
            0: [ok, ("Because.", True)],  # clean
            1: [("User: hi", True), ok, ("Because.", True)],  # user turn retried once
            2: [("No question here.", True), ("", True), ("runaway", False), ("Because.", True)],
        }
    )
    settings = conv.GenerationSettings(rounds=1, max_attempts=3, batch_size=2)
    conv.generate_conversations(convs, chat, prompts, settings)
    assert [c.dropped for c in convs] == [None, None, None]
    assert convs[0].attempts == [1, 1] and convs[1].attempts == [2, 1]
    # conversation 2 never produced a question: its sound non-question turn is kept and counted
    assert convs[2].attempts == [3, 1] and convs[2].non_question_user_turns == 1
    assert convs[2].messages[1] == {"role": "user", "content": "No question here."}
    # user turn: 3 in batches of 2+1, then retries for 2, then 1; assistant turn: 2+1
    assert chat.calls == [2, 1, 2, 1, 2, 1]
    # the reply strategy's user chats are separate text: only assistant turns reuse the
    # conversation's cache, under its id
    assert chat.keys == [None, None, None, None, [0, 1], [2]]
    assert chat.kept == [[0, 1, 2], [0, 1, 2]]


def test_retries_are_sampled_at_the_retry_temperature():
    """A turn's first attempt uses `temperature`, every retry `retry_temperature` (when given)."""
    convs, prompts = _convs(1)
    replies = [("No question.", True), ("Why is that?", True), ("too long", False), ("Because.", True)]
    for retry, expected in ((None, [0.7] * 4), (1.1, [0.7, 1.1, 0.7, 1.1])):
        chat, (c,) = ScriptedChat({0: list(replies)}), _convs(1)[0]
        settings = conv.GenerationSettings(rounds=1, temperature=0.7, retry_temperature=retry)
        conv.generate_conversations([c], chat, prompts, settings)
        assert c.dropped is None and c.attempts == [2, 2]
        assert chat.temperatures == expected


def test_a_turn_that_keeps_failing_drops_the_conversation():
    convs, prompts = _convs(2)
    chat = ScriptedChat(
        {
            0: [("Why is that?", True), ("Because.", True)],
            1: [("Why is that?", True)] + [("too long", False)] * 3,
        }
    )
    conv.generate_conversations(convs, chat, prompts, conv.GenerationSettings(rounds=1, max_attempts=3))
    assert convs[0].dropped is None
    assert convs[1].dropped == "round 0 assistant turn: cut off at the token limit after 3 attempts"
    assert [m["role"] for m in convs[1].messages] == ["system", "user"]
    assert chat.kept == [[0, 1], [0]]  # a dropped conversation's cache is let go


def test_study_strategy_uses_a_temporary_instruction_and_removes_it():
    convs, _ = _convs(1)
    prompts = conv.load_prompts("study")
    seen, keys = [], []

    class Chat:
        def __call__(
            self, chats, max_new_tokens, seed, keys_=None, row_seeds=None, stop_at_question=False, **_
        ):
            seen.append(chats[0])
            keys.append(keys_)
            n = len(seen)  # a new turn each call: a repeated one would be retried
            return [
                (f"Why does point {n} matter?", True)
                if chats[0][-1]["role"] == "system"
                else (f"Point {n} matters because it is true.", True)
            ]

        def keep_cache(self, keys_):
            pass

    conv.generate_conversations(convs, Chat(), prompts, conv.GenerationSettings(strategy="study", rounds=2))
    assert keys == [[0]] * 4  # every chat continues the conversation, so every call reuses its cache
    assert seen[0][-1]["content"].startswith("Now, act as the User. Write an initial question")
    assert seen[2][-1]["content"].startswith("Now, act as the User. Write a skeptical follow-up")
    assert [m["role"] for m in convs[0].messages] == ["system", "user", "assistant", "user", "assistant"]


def test_topics_and_prompts_ship_with_the_package():
    topics = conv.load_topics()
    assert len(topics) == 50 and topics[0].startswith("The cultural impact of jazz")
    for strategy in ("study", "reply"):
        prompts = conv.load_prompts(strategy)
        assert {"system", "first_user", "followup_user", "description"} <= prompts.keys()


def _periodic(block, n):
    return (block * (n // len(block) + 1))[:n]


def _sentence(i, changed=None):
    # a 20-token sentence; `changed` replaces one of its words
    words = list(range(1000 + 20 * (i % 3), 1020 + 20 * (i % 3)))
    if changed is not None:
        words[changed % 20] = 5000 + changed
    return words


@pytest.mark.parametrize(
    ("ids", "loops"),
    [
        (list(range(200)), False),  # no repetition
        ([7] * 20, False),  # too short to call
        ([7] * 40, True),  # one token over and over
        (list(range(100)) + _periodic([1, 2, 3, 4, 5], 48), True),  # a phrase
        (list(range(100)) + _periodic(list(range(500, 570)), 139), True),  # a 70-token sentence, twice
        # one sentence said again and again, a word changed each time: no exact period
        (list(range(50)) + sum((_sentence(0, changed=k) for k in range(6)), []), True),
        (_periodic([1, 2, 3, 4, 5], 60) + list(range(100)), False),  # repeated, then moved on
        # three different sentences, each said once, then one of them again: 1 in 4 repeated
        (sum((_sentence(i) for i in range(3)), []) + _sentence(0), False),
    ],
)
def test_runaway(ids, loops):
    assert conv.runaway(ids) == loops


@pytest.mark.parametrize(
    ("ids", "first", "last"),
    [
        # a 20-token sentence said first at 50, then over and over with a word changed each time:
        # cut inside its first saying (where its first phrase said again begins)
        (list(range(50)) + sum((_sentence(0, changed=k) for k in range(6)), []), 50, 69),
        (list(range(30)) + [7] * 40, 30, 30),  # one token over and over: cut where it began
        (list(range(100)) + _periodic([1, 2, 3, 4, 5], 48), 100, 100),  # a phrase from 100 on
        (list(range(200)), 200, 200),  # nothing said before: nothing to cut
    ],
)
def test_loop_start(ids, first, last):
    assert first <= conv.loop_start(ids) <= last


def test_reply_repetition_sees_the_earlier_chunks_of_each_reply():
    """The ban and penalty cover what a row wrote in earlier chunks (not in this call's input_ids)
    and what this call generated, never the prompt."""
    torch = pytest.importorskip("torch")
    # row 0 wrote [1, 2, 3] in an earlier chunk, row 1 nothing; the call's prompt column holds 1, 2
    input_ids = torch.tensor([[9, 1, 2], [1, 2, 2]])  # column 0: prompt, then generated
    scores = torch.zeros(2, 10)
    out = conv.ReplyRepetition([[1, 2, 3], []], start=1, penalty=None, ngram=3)(input_ids, scores.clone())
    # row 0's reply is 1 2 3 1 2: "1 2" was followed by 3, so 3 is banned; row 1's is "2 2": "2 2"
    # never came before another token, nothing banned
    assert torch.isinf(out[0, 3]) and torch.isinf(out).sum() == 1
    scores = torch.tensor([[2.0, -2.0, 2.0, 1.0] + [0.0] * 6] * 2)
    out = conv.ReplyRepetition([[3], []], start=1, penalty=2.0, ngram=0)(input_ids, scores.clone())
    # row 0: tokens 1, 2, 3 penalised (positive halved, negative doubled); token 0 (not said) kept
    assert out[0, :4].tolist() == [2.0, -4.0, 1.0, 0.5]
    assert out[1, :4].tolist() == [2.0, -2.0, 1.0, 1.0]  # row 1 said 2 only; the prompt's 1 is not counted


def test_repeats_and_conversation_problems():
    earlier = "The answer is no, it is not possible to travel with bicycles on that train."
    assert conv.repeats(earlier, earlier)
    assert conv.repeats("the answer is NO it is not possible to travel with bicycles on that train", earlier)
    assert conv.repeats(earlier.replace("that train", "the train"), earlier)  # near-exact
    # the same ten-word opening, whatever follows: a flaw of its own, not a repeat
    same_start = "The answer is no, it is not possible to travel with bikes at all, sadly."
    assert conv.same_opening(same_start, earlier) and not conv.repeats(same_start, earlier)
    assert not conv.same_opening("The answer is no, it is not possible.", earlier)  # under ten words
    assert not conv.repeats("Bicycles can travel on most regional trains outside rush hours.", earlier)
    messages = [
        {"role": "system", "content": "You help."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    assert conv.conversation_problem("mean?", "user", messages) == "user turn under 3 words"
    assert conv.conversation_problem("Why is the sky blue?", "user", messages) == "repeats an earlier turn"
    assert (
        conv.conversation_problem("Why is the sky blue?", "assistant", messages) == "repeats an earlier turn"
    )
    assert conv.conversation_problem("Because air scatters blue light.", "assistant", messages) is None
    assert (
        conv.conversation_problem("You help.", "assistant", messages) is None
    )  # the system prompt is no turn
    answered = [*messages, {"role": "assistant", "content": earlier}]
    assert conv.conversation_problem(same_start, "assistant", answered) == conv.SAME_OPENING


def test_a_turn_opening_like_an_earlier_one_is_retried_then_kept_and_counted():
    """An opening said before is retried like a user turn without a question, and the first such
    turn is kept (and counted) when no attempt did better; a turn that repeats one is never kept."""
    q1, q2 = "Why is the sky blue at noon?", "And why is it red at sunset, then?"
    a1 = "The sky is blue because air molecules scatter the short wavelengths of sunlight more."
    again = "The sky is blue because air molecules scatter the short wavelengths, in the evening too."
    for later, kept in ((again, again), (a1, None)):
        convs, prompts = _convs(1)
        chat = ScriptedChat({0: [(q1, True), (a1, True), (q2, True)] + [(later, True)] * 3})
        settings = conv.GenerationSettings(rounds=2, max_attempts=3, check_repeats=True)
        conv.generate_conversations(convs, chat, prompts, settings)
        (c,) = convs
        if kept is None:
            assert c.dropped == "round 1 assistant turn: repeats an earlier turn after 3 attempts"
            continue
        assert c.dropped is None and c.messages[-1]["content"] == kept and c.attempts == [1, 1, 1, 3]
        assert c.same_opening_turns == 1 and c.rejected == {conv.SAME_OPENING: 3}


def test_repeated_short_and_runaway_turns_are_retried_and_counted():
    convs, prompts = _convs(1)
    q1, a1 = "Why is the sky blue?", "Air scatters short wavelengths more than long ones."
    chat = ScriptedChat(
        {
            0: [
                ("Why?", True),  # too short
                (q1, True),
                conv.Reply("la la la", False, True),  # stopped as a runaway
                (a1, True),
                (q1, True),  # the same question again
                ("And at sunset, why is it red?", True),
                (a1, True),  # the same answer again
                ("At sunset light crosses more air, so the blue is scattered away.", True),
            ]
        }
    )
    settings = conv.GenerationSettings(rounds=2, max_attempts=3, check_repeats=True)
    conv.generate_conversations(convs, chat, prompts, settings)
    (c,) = convs
    assert c.dropped is None and c.attempts == [2, 2, 2, 2]
    assert c.rejected == {
        "user turn under 3 words": 1,
        "repeats itself (runaway)": 1,
        "repeats an earlier turn": 2,
    }
    turns = [m["content"] for m in c.messages[1:]]
    assert len(set(turns)) == len(turns) == 4


@pytest.mark.parametrize(
    "text, kept",
    [
        ("Tea is a drink. It is brewed from leaves and then served hot or", None),  # under half kept
        (
            "Tea is brewed from the leaves of one plant. Black tea is oxidised and green is",
            "Tea is brewed from the leaves of one plant.",
        ),
        ("Ask why. Then ask how! Then ask when? And the", "Ask why. Then ask how! Then ask when?"),
        ('He said "boil it for a minute." Then steep', 'He said "boil it for a minute."'),
        (
            "Steps to brew a cup:\n1. Boil the water first.\n2. Pour it",
            "Steps to brew a cup:\n1. Boil the water first.",
        ),
        ("Steps to brew a cup of tea at home:\n1. Boil\n2. Pour", None),  # a list number ends nothing
        ("It is **very good.** And you can", "It is **very good.**"),
        ("no sentence ends anywhere in this reply at all", None),
    ],
)
def test_trim_to_sentence(text, kept):
    """A cut-off reply ends at its last full sentence, if that keeps half of it, else None."""
    assert conv.trim_to_sentence(text) == kept


def test_a_cut_off_turn_is_kept_to_its_last_sentence_with_trim_cut_off():
    """With trim_cut_off a reply cut off at the limit is judged as its text up to its last full
    sentence, kept and counted; a loop cut off at the limit, or a reply with no sentence to keep,
    is still retried. Without the option the cut-off reply is retried."""
    q = "Why is tea brewed with boiling water?"
    cut = "Boiling water pulls the flavour out of the leaves quickly. It also makes the tea"
    kept = "Boiling water pulls the flavour out of the leaves quickly."
    loop = conv.Reply("Hot water is hot. Hot water is hot. Hot water is", False, True)
    for trim, expected, rejected in (
        (True, kept, {"repeats itself (runaway)": 1, "cut off at the token limit": 1}),
        (False, "Because it is hot.", {"repeats itself (runaway)": 1, "cut off at the token limit": 2}),
    ):
        convs, prompts = _convs(1)
        replies = [(q, True), loop, ("So hot that it", False), (cut, False), ("Because it is hot.", True)]
        settings = conv.GenerationSettings(rounds=1, max_attempts=4, stop_runaway=True, trim_cut_off=trim)
        conv.generate_conversations(convs, ScriptedChat({0: replies}), prompts, settings)
        (c,) = convs
        assert c.dropped is None and c.messages[-1]["content"] == expected, trim
        assert c.trimmed_turns == trim and c.rejected == rejected


@pytest.fixture
def endless(tmp_path):
    """(model, tokenizer): the tiny chat model, made never to end its turn."""
    from tiny_model import save_tiny_chat_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = save_tiny_chat_model(tmp_path / "endless", eos_bias=-20.0)
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_the_clock_counts_every_decoding_forward_and_times_each_stage(endless):
    """A model that never ends its turn writes 2 x 256 tokens in 4 `generate` calls of 64 forwards;
    each call's first forward (the prompt, then the chunk's last sampled token) is prefill, the
    other 4 x 63 are `decoding_steps`; the stages that ran have their seconds."""
    model, tok = endless
    forwards = []
    hook = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        chat = conv.BatchedChat(model, tok, conv.GenerationSettings())
        chat([[{"role": "user", "content": "Tell me a story."}]] * 2, 256, seed=0)
    finally:
        hook.remove()
    assert len(forwards) == 256 and chat.decoding_steps == 4 * 63
    assert set(chat.clock.seconds) == {"prefill", "decoding", "cache"}
    assert all(seconds > 0 for seconds in chat.clock.seconds.values())


@pytest.mark.parametrize("stop", [True, False])
def test_batched_chat_stops_a_runaway_at_the_end_of_a_chunk(stop, endless, monkeypatch):
    """Wiring: a reply the detector calls a runaway stops after its first chunk (256 -> 64 tokens)
    unless `stop_runaway` is off; the tiny model is made never to end its turn."""
    model, tok = endless
    monkeypatch.setattr(conv, "runaway", lambda ids: len(ids) >= 64)
    chat = conv.BatchedChat(model, tok, conv.GenerationSettings(stop_runaway=stop))
    replies = chat([[{"role": "user", "content": "Tell me a story."}]] * 2, 256, seed=0)
    assert [r.finished for r in replies] == [False, False]
    assert [r.runaway for r in replies] == [stop, stop]
    assert chat.new_tokens == 2 * (64 if stop else 256)


def test_batched_chat_bans_repeated_phrases_across_chunks(endless, monkeypatch):
    """Wiring: with no_repeat_ngram_size, a 256-token reply (4 chunks of 64, each its own
    `generate` call on a reused cache) holds no bigram twice; without it the tiny model repeats."""
    model, tok = endless
    seen = []
    monkeypatch.setattr(conv, "runaway", lambda ids: seen.append(list(ids)) and False)

    def bigrams(ngram):
        seen.clear()
        settings = conv.GenerationSettings(stop_runaway=True, no_repeat_ngram_size=ngram)
        conv.BatchedChat(model, tok, settings)(
            [[{"role": "user", "content": "Tell me a story."}]], 256, seed=0
        )
        ids = seen[-1]
        assert len(ids) == 256
        pairs = list(zip(ids, ids[1:], strict=False))
        return len(pairs), len(set(pairs))

    total, distinct = bigrams(2)
    assert total == distinct
    total, distinct = bigrams(0)
    assert distinct < total


@pytest.mark.parametrize(
    "top_p, spread, wide",
    [(0.9, 2.0, False), (0.9, 1.0, True), (1.0, 1.0, True)],  # nuclei of 58, 1258 and 3000 tokens
)
def test_row_sampler_draws_the_nucleus_in_proportion(top_p, spread, wide):
    """RowSampler draws from the set transformers' TopPLogitsWarper keeps, each token in proportion
    to its probability: 6,000 rows of the same scores, each from its own generator, binned into 10
    groups of equal expected mass (chi-square), and a draw at the top of [0, 1) picks the nucleus's
    last token."""
    import numpy as np
    import torch
    from scipy.stats import chisquare
    from transformers import TopPLogitsWarper

    vocab, rows, temperature = 3000, 6000, 0.7
    scores = torch.randn(vocab, generator=torch.Generator().manual_seed(0)) * spread
    warped = scores / temperature
    if top_p < 1:
        warped = TopPLogitsWarper(top_p)(None, warped[None])[0]
    kept = torch.isfinite(warped)
    expected = torch.where(kept, warped, -float("inf")).softmax(-1).double().numpy()
    generators = [torch.Generator().manual_seed(1000 + i) for i in range(rows)]
    out = conv.RowSampler(generators, temperature, top_p)(None, scores.expand(rows, vocab).clone())
    assert (torch.isfinite(out).sum(-1) == 1).all()
    drawn = out.argmax(-1).numpy()
    assert kept[drawn].all()  # nothing outside the nucleus
    order = np.argsort(-expected)
    group = np.empty(vocab, dtype=int)
    before = np.cumsum(expected[order]) - expected[order]  # the mass of the likelier tokens
    group[order] = np.minimum((before * 10).astype(int), 9)
    observed = np.bincount(group[drawn], minlength=10)
    mass = np.bincount(group, weights=expected, minlength=10)
    bins = mass > 0  # a token holding over a tenth of the mass leaves a group empty
    assert observed[~bins].sum() == 0 and bins.sum() >= 6
    mass = mass[bins] / mass[bins].sum()
    assert chisquare(observed[bins], mass * rows).pvalue > 1e-3, (observed, mass * rows)
    assert (int(kept.sum()) > conv.NUCLEUS_CANDIDATES) == wide  # ranked whole: the sort, not topk
    if top_p < 1:  # the nucleus's edge: a draw just under 1 picks its least likely token
        probs = (scores / temperature).softmax(-1)
        ranked = probs.sort(descending=True).values
        last = conv.nucleus_draw(ranked.cumsum(-1)[None], torch.tensor([1 - 1e-7]), top_p)
        assert int(last) == int(kept.sum()) - 1


def test_row_sampler_gives_a_chat_the_same_reply_whatever_its_batch(endless):
    """A chat sampled from its own generator replies the same alone or beside two others (other
    lengths, so other padding) under another call seed; one generator per call does not."""
    model, tok = endless
    chat = conv.BatchedChat(model, tok, conv.GenerationSettings())
    story = [{"role": "user", "content": "Tell me a story."}]
    others = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "A much longer question about rivers?"}],
    ]
    alone = chat([story], 48, seed=1, row_seeds=[7])[0]
    batched = chat([others[0], story, others[1]], 48, seed=2, row_seeds=[5, 7, 9])[1]
    assert alone == batched and len(alone.text) > 0
    assert chat([story], 48, seed=1, row_seeds=[8])[0] != alone  # the row seed is what is followed
    shared = [chat([story], 48, seed=1)[0], chat([others[0], story, others[1]], 48, seed=1)[1]]
    assert shared[0] != shared[1]


def test_a_calls_temperature_replaces_the_settings_one(endless, monkeypatch):
    """Wiring: `temperature=` reaches the sampler of a call (generate's warpers, or RowSampler with
    row seeds, and then generate decodes greedily); a call without it keeps the settings' one."""
    model, tok = endless
    used, generate = [], model.generate
    monkeypatch.setattr(
        model, "generate", lambda **kw: used.append((kw["do_sample"], kw["temperature"])) or generate(**kw)
    )
    sampler = conv.RowSampler
    monkeypatch.setattr(conv, "RowSampler", lambda g, t, p: used.append(("row", t)) or sampler(g, t, p))
    chat = conv.BatchedChat(model, tok, conv.GenerationSettings(temperature=0.2))
    story = [{"role": "user", "content": "Tell me a story."}]
    chat([story], 32, 1, temperature=3.0)
    chat([story], 32, 1, row_seeds=[7], temperature=3.0)
    chat([story], 32, 1, row_seeds=[7])
    assert used == [(True, 3.0), ("row", 3.0), (False, None), ("row", 0.2), (False, None)]


def test_batched_chat_cuts_a_loop_back_and_samples_on(endless, monkeypatch):
    """Wiring of runaway_rewinds: a reply called a runaway at 64 tokens is cut back to where its
    loop began (here token 32) and goes on from there, twice, then is stopped as a runaway: three
    64-token chunks are spent, not four attempts of 256."""
    model, tok = endless
    monkeypatch.setattr(conv, "runaway", lambda ids: len(ids) >= 64)
    monkeypatch.setattr(conv, "loop_start", lambda ids: 32)
    settings = conv.GenerationSettings(stop_runaway=True, runaway_rewinds=2)
    chat = conv.BatchedChat(model, tok, settings)
    replies = chat([[{"role": "user", "content": "Tell me a story."}]] * 2, 256, seed=0)
    assert [(r.finished, r.runaway, r.rewinds) for r in replies] == [(False, True, 2)] * 2
    assert chat.new_tokens == 2 * 3 * 64


def test_a_rewound_reply_gets_its_room_back_and_no_more(endless, monkeypatch):
    """A reply cut back from 64 to 32 tokens may write up to the budget again (256), not past it:
    the last chunk is only as long as its room, and it ends cut off at the limit."""
    model, tok = endless
    calls = []
    monkeypatch.setattr(conv, "runaway", lambda ids: calls.append(len(ids)) or len(calls) == 1)
    monkeypatch.setattr(conv, "loop_start", lambda ids: 32)
    settings = conv.GenerationSettings(stop_runaway=True, runaway_rewinds=3)
    chat = conv.BatchedChat(model, tok, settings)
    (reply,) = chat([[{"role": "user", "content": "Tell me a story."}]], 256, seed=0)
    assert (reply.finished, reply.runaway, reply.rewinds) == (False, False, 1)
    assert calls == [64, 96, 160, 224, 256]  # the reply's length after each chunk
    assert chat.new_tokens == 64 + 224


def test_question_stop_ends_a_reply_at_its_first_real_question(endless):
    """QuestionStop calls a row done at the token that completes a question of 3 words or more,
    not at a shorter one ("What?"), and counts the tokens this call generated up to it."""
    torch = pytest.importorskip("torch")
    _, tok = endless
    text = "Sure. What? One question a student would ask: Why is the sky blue? It is"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    marks = frozenset(i for i, t in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))) if "?" in t)
    written = ids[:3]  # an earlier chunk of the reply
    stop = conv.QuestionStop(tok, marks, [written, []], start=1)
    done_at = None
    for k in range(4, len(ids) + 1):
        row = torch.tensor([[0] + ids[3:k], [0] + [ids[0]] * (k - 3)])  # column 0: the prompt
        done = stop(row, None)
        assert not done[1]
        if done[0] and done_at is None:
            done_at = k
    assert tok.decode(ids[:done_at]).rstrip().endswith("Why is the sky blue?")
    assert stop.stopped == {0: done_at - 3}


def test_batched_chat_stops_rows_at_a_question(endless, monkeypatch):
    """Wiring of stop_at_question: every row holds a question after one token (the question
    finder is stubbed), so each stops there and is not continued, and no row is cut off."""
    model, tok = endless
    monkeypatch.setattr(conv, "extract_question", lambda text: "why is it so?" if text else None)
    chat = conv.BatchedChat(model, tok, conv.GenerationSettings())
    chat.question_marks = frozenset(range(len(tok)))  # every token may end a question
    replies = chat([[{"role": "user", "content": "Ask me."}]] * 3, 64, seed=0, stop_at_question=True)
    assert chat.new_tokens == 3
    assert [len(tok(r.text, add_special_tokens=False)["input_ids"]) >= 1 for r in replies] == [True] * 3
    replies = chat([[{"role": "user", "content": "Ask me."}]] * 3, 64, seed=0)
    assert chat.new_tokens == 3 + 3 * 64  # without it: to the limit


def test_generation_asks_for_question_stops_and_counts_rewinds():
    """stop_at_question reaches the user turns of the reply strategy only; a reply's rewinds are
    counted under REWOUND with the rejected attempts, without being an attempt."""
    convs, prompts = _convs(1)
    chat = ScriptedChat(
        {0: [("Why is the sky blue?", False), conv.Reply("Air scatters blue light most.", True, False, 2)]}
    )
    settings = conv.GenerationSettings(rounds=1, stop_at_question=True)
    conv.generate_conversations(convs, chat, prompts, settings)
    (c,) = convs
    assert chat.asked == [True, False]
    assert c.dropped is None and c.attempts == [1, 1]
    assert c.rejected == {conv.REWOUND: 2}
