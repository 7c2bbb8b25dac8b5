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

    def __call__(self, chats, max_new_tokens, seed, keys=None):
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
    ok = ("Why?", True)
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


def test_a_turn_that_keeps_failing_drops_the_conversation():
    convs, prompts = _convs(2)
    chat = ScriptedChat(
        {0: [("Why?", True), ("Because.", True)], 1: [("Why?", True)] + [("too long", False)] * 3}
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
        def __call__(self, chats, max_new_tokens, seed, keys_=None):
            seen.append(chats[0])
            keys.append(keys_)
            return [
                ("Why does it matter?", True) if chats[0][-1]["role"] == "system" else ("It matters.", True)
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
