"""Chat-format rows (`messages: [{role, content}, ...]`): every assistant turn trained on, all else masked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from mpctf.config import DatasetConfig, TaskConfig
from mpctf.data.instruction import ChatTask
from mpctf.data.sources import load_rows
from mpctf.data.task_base import IGNORE, collate
from mpctf.errors import DataError
from mpctf.model.loading import load_tokenizer
from mpctf.preflight import _row_problems

CONVERSATION = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome"},
]


@pytest.fixture(scope="module")
def task() -> ChatTask:
    return ChatTask(TaskConfig(type="chat"), load_tokenizer("tiny-llama"), max_length=256)


def test_each_assistant_turn_is_supervised_in_its_context_and_nothing_else_is(task: ChatTask) -> None:
    tok = task.tokenizer
    examples = task.encode_conversation({"messages": CONVERSATION}, "row 1")
    assert len(examples) == 2
    batch = collate(examples, task.pad_id)
    for i, (example, reply) in enumerate(zip(examples, ["Paris", "Rome"], strict=True)):
        n = len(example.input_ids)
        supervised = batch.labels[i, :n][batch.labels[i, :n] != IGNORE].tolist()
        assert tok.decode(supervised) == reply + "<|im_end|>"
        # Everything before the reply (system, user turns, earlier replies, headers) and the padding is masked.
        assert (batch.labels[i, : example.prompt_len] == IGNORE).all()
        assert (batch.labels[i, n:] == IGNORE).all()
    # The last example is the whole conversation as the chat template renders it, so the first reply is context.
    whole = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    assert examples[1].input_ids == list(whole)[: len(examples[1].input_ids)]
    assert "Paris" in tok.decode(examples[1].input_ids[: examples[1].prompt_len])


def test_chat_rows_from_a_jsonl_file_become_examples(
    tmp_path: Path, task: ChatTask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MPCTF_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "chat.jsonl"
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!", "name": "bot"}]
    path.write_text(json.dumps({"messages": CONVERSATION}) + "\n" + json.dumps({"messages": short}) + "\n")
    rows = load_rows(DatasetConfig(path=path), seed=0)
    examples = task.encode_all(rows, "party data")
    assert len(examples) == 3
    last = examples[-1]
    assert task.tokenizer.decode(last.input_ids[last.prompt_len :]) == "Hello!<|im_end|>"


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([{"role": "user", "content": "Hi"}], "the conversation in 'messages' has no assistant turn"),
        ("Hi", "'messages' must be a list of {role, content} objects, got str"),
        ([{"role": "user", "content": ["part"]}], "message 1 of 'messages' is not a {role, content} object"),
    ],
)
def test_a_malformed_conversation_is_a_data_error_naming_its_row(
    task: ChatTask, messages: object, message: str
) -> None:
    with pytest.raises(DataError, match=rf"^party data row 1: {message.replace('{', '[{]')}"):
        task.encode_all([{"messages": messages}], "party data")  # type: ignore[list-item]


def test_preflight_checks_chat_rows_through_encode_all(task: ChatTask) -> None:
    good, bad = {"messages": CONVERSATION}, {"messages": CONVERSATION[:2]}
    assert _row_problems(task, [good], "party 'a'") == []
    assert _row_problems(task, [good, bad], "party 'a'") == [
        "party 'a' row 2: the conversation in 'messages' has no assistant turn to train on"
    ]


def test_chat_config_rejects_keys_of_other_task_types() -> None:
    assert TaskConfig(type="chat", messages_field="conversation", system="Be brief.").messages_field
    with pytest.raises(ValidationError, match="`prompt` has no effect with type 'chat'"):
        TaskConfig(type="chat", prompt="{question}")
    with pytest.raises(ValidationError, match="`messages_field` has no effect with type 'instruction'"):
        TaskConfig(type="instruction", messages_field="conversation")
