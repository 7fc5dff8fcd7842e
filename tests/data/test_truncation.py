"""``training.truncation``: an over-long row loses part of its text field, never the template (instruction and
answer cue), and the chosen end of the text is what stays."""

from __future__ import annotations

import pytest

from mpctf.config import TaskConfig
from mpctf.data.instruction import InstructionTask
from mpctf.data.tasks import ClassificationTask
from mpctf.errors import DataError
from mpctf.model.loading import load_tokenizer

PROMPT = "Subject and body: {text}\nIs this e-mail spam? Answer:"
LABELS = {"spam": " yes", "ham": " no"}
#: Forty distinct words: which of them survive tells which end of the text was kept.
WORDS = " ".join(f"w{i}" for i in range(40))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-llama")


def classification(tokenizer, max_length: int, truncation: str | None = None, prompt: str = PROMPT):
    config = TaskConfig(type="classification", prompt=prompt, labels=LABELS)
    return ClassificationTask(config, tokenizer, max_length, truncation=truncation)


def decoded_prompt(task, example) -> str:
    return task.tokenizer.decode(example.input_ids[: example.prompt_len])


@pytest.mark.parametrize("truncation", ["keep_start", "keep_end"])
def test_an_overlong_row_keeps_the_template_and_the_chosen_end_of_its_text(tokenizer, truncation) -> None:
    task = classification(tokenizer, max_length=40, truncation=truncation)
    example = task.encode({"text": WORDS, "label": "spam"}, "row 1")
    prompt = decoded_prompt(task, example)
    assert len(example.input_ids) <= 40
    assert prompt.startswith("Subject and body: ")
    assert prompt.endswith("\nIs this e-mail spam? Answer:")
    kept = prompt.removeprefix("Subject and body: ").removesuffix("\nIs this e-mail spam? Answer:").split()
    assert 0 < len(kept) < 40
    if truncation == "keep_start":
        assert kept[0] == "w0" and "w39" not in kept
    else:
        assert kept[-1] == "w39" and "w0" not in kept
    # The answer (the verbalizer) is the supervised tail.
    assert example.input_ids[example.prompt_len :] == task.ids(" yes")


def test_the_default_keeps_the_end_of_the_text_and_the_whole_template(tokenizer) -> None:
    task = classification(tokenizer, max_length=40)
    prompt = decoded_prompt(task, task.encode({"text": WORDS, "label": "ham"}, "row 1"))
    assert prompt.startswith("Subject and body: ") and "w0 " not in prompt
    assert prompt.endswith(" w39\nIs this e-mail spam? Answer:")


def test_a_row_that_fits_is_untouched(tokenizer) -> None:
    task = classification(tokenizer, max_length=128)
    example = task.encode({"text": "short", "label": "ham"}, "row 1")
    assert decoded_prompt(task, example) == PROMPT.format(text="short")


def test_a_template_longer_than_max_length_is_a_one_line_error(tokenizer) -> None:
    task = classification(tokenizer, max_length=8)
    with pytest.raises(
        DataError, match=r"^row 3: the prompt without its text is \d+ tokens.*max_length"
    ) as err:
        task.encode({"text": WORDS, "label": "ham"}, "row 3")
    assert "\n" not in str(err.value)


def test_without_the_text_field_in_the_template_the_longest_field_is_cut(tokenizer) -> None:
    task = classification(
        tokenizer, max_length=40, truncation="keep_start", prompt="From {sender}: {body}\nSpam? Answer:"
    )
    example = task.encode({"sender": "Ann Lee", "body": WORDS, "label": "spam"}, "row 1")
    prompt = decoded_prompt(task, example)
    assert prompt.startswith("From Ann Lee: w0 ") and prompt.endswith("\nSpam? Answer:")


@pytest.mark.parametrize("truncation", ["keep_start", "keep_end"])
def test_an_instruction_row_keeps_its_instruction_and_the_assistant_header(tokenizer, truncation) -> None:
    config = TaskConfig(type="instruction", prompt="Summarize this e-mail: {text}", answer_field="answer")
    task = InstructionTask(config, tokenizer, 60, truncation=truncation)
    example = task.encode({"text": WORDS, "answer": "spam"}, "row 1")
    prompt = decoded_prompt(task, example)
    full = task.tokenizer.decode(
        task._chat([{"role": "user", "content": "Summarize this e-mail: x"}], generation_prompt=True)
    )
    assert len(example.input_ids) <= 60
    assert "Summarize this e-mail: " in prompt
    # The chat template's assistant header (what makes the model answer) closes the prompt.
    assert prompt.endswith(full[full.index("x") + 1 :])
    assert ("w0" in prompt) == (truncation == "keep_start")
    assert ("w39" in prompt) == (truncation == "keep_end")


def test_a_reply_longer_than_max_length_leaves_room_for_the_whole_template(tokenizer) -> None:
    config = TaskConfig(type="instruction", prompt="Reply to: {text}", answer_field="answer")
    task = InstructionTask(config, tokenizer, 60)
    example = task.encode({"text": "hello there", "answer": WORDS}, "row 1")
    prompt = decoded_prompt(task, example)
    empty = task.tokenizer.decode(
        task._chat([{"role": "user", "content": "Reply to: "}], generation_prompt=True)
    )
    assert len(example.input_ids) == 60
    # Nothing of the template is lost; the reply keeps its start.
    assert prompt.startswith(empty[: empty.index("Reply to: ")]) and "Reply to: " in prompt
    assert task.tokenizer.decode(example.input_ids[example.prompt_len :]).startswith("w0 w1")


def test_an_empty_answer_text_is_a_one_line_error(tokenizer) -> None:
    config = TaskConfig(type="classification", prompt=PROMPT, labels={"spam": "", "ham": " no"})
    with pytest.raises(DataError, match=r"task\.labels: the answer text of label 'spam' is empty"):
        ClassificationTask(config, tokenizer, 40)
