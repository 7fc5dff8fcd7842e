"""Task formats against hand-computed values: packing, chat-template masking, exact match, perplexity."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mpctf.config import TaskConfig, load_config
from mpctf.data.causal_lm import CausalLmTask, pack
from mpctf.data.instruction import InstructionTask, exact_match, normalize_answer
from mpctf.data.task_base import IGNORE, Example, next_token_pairs, perplexity, token_nll
from mpctf.data.tasks import TASKS, ClassificationTask, make_task
from mpctf.errors import ConfigError, DataError
from mpctf.model.loading import load_tokenizer
from support import tiny_config_dict


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-llama")


class FixedLogits(torch.nn.Module):
    """A stand-in model that returns the same logits whatever the input (and echoes known answers)."""

    def __init__(self, logits: torch.Tensor, answers: dict[tuple[int, ...], list[int]] | None = None) -> None:
        super().__init__()
        self.logits, self.answers = logits, answers or {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits[: input_ids.size(0), : input_ids.size(1)])

    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, **_
    ) -> torch.Tensor:
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            reply = self.answers.get(tuple(ids[mask.bool()].tolist()), [])[:max_new_tokens]
            rows.append(torch.cat([ids, torch.tensor(reply + [0] * (max_new_tokens - len(reply)))]))
        return torch.stack(rows)


# --- packing ---------------------------------------------------------------------------------------------
def test_pack_joins_documents_with_the_separator_and_cuts_full_blocks() -> None:
    docs = [[1, 2], [3], [4, 5, 6]]
    # stream: 1 2 0 3 0 4 5 6 0
    assert pack(docs, 3, separator=0) == [[1, 2, 0], [3, 0, 4], [5, 6, 0]]
    assert pack(docs, 4, separator=0) == [[1, 2, 0, 3], [0, 4, 5, 6]]  # the tail "0" is dropped
    assert pack(docs, 10, separator=0) == []


def test_causal_lm_examples_are_full_blocks_all_supervised(tokenizer) -> None:
    task = CausalLmTask(TaskConfig(type="causal_lm"), tokenizer, max_length=8)
    rows = [{"text": "It is a truth universally acknowledged, that a single man"}, {"text": "in possession"}]
    examples = task.encode_all(rows, "test")
    assert examples and all(len(e.input_ids) == 8 and e.prompt_len == 0 for e in examples)
    stream = [t for e in examples for t in e.input_ids]
    first, second = (tokenizer(r["text"], add_special_tokens=False)["input_ids"] for r in rows)
    eos = tokenizer.eos_token_id
    assert len(stream) == 8 * ((len(first) + len(second) + 2) // 8)
    assert stream == [*first, eos, *second, eos][: len(stream)]
    batch = task.collate(examples)
    assert bool((batch.labels == batch.input_ids).all())


def test_causal_lm_too_little_text_names_the_limit(tokenizer) -> None:
    task = CausalLmTask(TaskConfig(type="causal_lm"), tokenizer, max_length=64)
    with pytest.raises(DataError, match=r"do not fill one block of training\.max_length=64 tokens"):
        task.encode_all([{"text": "Emma"}], "party 'a' data")
    with pytest.raises(DataError, match="row 1: row lacks field text"):
        task.encode_all([{"body": "Emma"}], "party 'a' data")


# --- perplexity ------------------------------------------------------------------------------------------
def test_perplexity_is_exp_of_mean_token_nll_on_a_hand_example(tokenizer) -> None:
    # Vocabulary of two tokens, sequence [0, 1, 1]: position 0 predicts 1 with p = 1/2, position 1 predicts 1
    # with p = 3/4 (logits 0 and ln 3); the last position predicts nothing.
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [5.0, -5.0]]])
    labels = torch.tensor([[0, 1, 1]])
    total, count = token_nll(*next_token_pairs(logits, labels))
    assert count == 2
    assert float(total) == pytest.approx(math.log(2) + math.log(4 / 3))
    assert perplexity(float(total), count) == pytest.approx(math.sqrt(8 / 3))
    task = CausalLmTask(TaskConfig(type="causal_lm"), tokenizer, max_length=3)
    scores = task.evaluate(
        FixedLogits(logits), [Example([0, 1, 1], 0)], batch_size=4, device=torch.device("cpu")
    )
    assert scores["perplexity"] == pytest.approx(math.sqrt(8 / 3))
    assert scores["eval_loss"] == pytest.approx(math.log(8 / 3) / 2)


def test_perplexity_of_an_overflowing_mean_is_infinite() -> None:
    assert perplexity(1e6, 10) == math.inf


# --- instruction -----------------------------------------------------------------------------------------
def instruction_task(tokenizer, max_length: int = 128, **keys) -> InstructionTask:
    return InstructionTask(TaskConfig(type="instruction", prompt="{question}", **keys), tokenizer, max_length)


def test_chat_template_masking_trains_on_the_answer_only(tokenizer) -> None:
    task = instruction_task(tokenizer, system="Answer briefly.")
    (example,) = task.encode_all(
        [{"question": "Who was the 37th President?", "answer": "Richard Nixon"}], "t"
    )
    batch = task.collate([example])
    supervised = batch.input_ids[0][batch.labels[0] != IGNORE].tolist()
    assert tokenizer.decode(supervised) == "Richard Nixon<|im_end|>"
    assert bool((batch.labels[0, : example.prompt_len] == IGNORE).all())
    prompt = tokenizer.decode(example.input_ids[: example.prompt_len])
    assert prompt == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWho was the 37th President?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_long_instruction_keeps_the_answer_and_the_assistant_header(tokenizer) -> None:
    task = instruction_task(tokenizer, max_length=64)
    (example,) = task.encode_all([{"question": "word " * 50 + "Which year?", "answer": "1963"}], "t")
    assert len(example.input_ids) <= 64
    assert tokenizer.decode(example.input_ids[example.prompt_len :]) == "1963<|im_end|>"
    assert tokenizer.decode(example.input_ids[: example.prompt_len]).endswith("<|im_start|>assistant\n")


def test_an_instruction_template_longer_than_max_length_is_an_error_not_a_cut_instruction(tokenizer) -> None:
    # The chat template's default system message alone is longer than 24 tokens: cutting it would train the
    # model on a conversation it never sees at inference.
    task = instruction_task(tokenizer, max_length=24)
    with pytest.raises(DataError, match=r"^t row 1: the prompt without its text is"):
        task.encode_all([{"question": "word " * 50 + "Which year?", "answer": "1963"}], "t")


def test_instruction_row_without_the_answer_field(tokenizer) -> None:
    with pytest.raises(DataError, match="row 1: row lacks field\\(s\\) answer; it has question"):
        instruction_task(tokenizer).encode_all([{"question": "Hi"}], "evaluation data")


def test_normalize_answer() -> None:
    assert normalize_answer("  The Andromeda   Galaxy. ") == "the andromeda galaxy"
    assert normalize_answer("Sputnik 1!?") == "sputnik 1"
    assert normalize_answer("U.S.A.") == "u.s.a"


def test_exact_match_counts_normalized_equal_pairs() -> None:
    assert exact_match(
        ["richard nixon", "1964", "Brown."], ["Richard Nixon", "1963", "brown"]
    ) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        exact_match(["a"], [])


def test_instruction_evaluate_scores_greedy_replies(tokenizer) -> None:
    task = instruction_task(tokenizer, max_new_tokens=8)
    rows = [
        {"question": "Who?", "answer": "Richard Nixon"},
        {"question": "When was it, exactly?", "answer": "1963"},
    ]
    examples = task.encode_all(rows, "t")
    prompts = [tuple(e.input_ids[: e.prompt_len]) for e in examples]
    right = tokenizer("richard nixon.", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id,
        5,
        6,
    ]
    wrong = tokenizer("1964", add_special_tokens=False)["input_ids"]
    logits = torch.zeros(2, max(len(e.input_ids) for e in examples), len(tokenizer))
    model = FixedLogits(logits, {prompts[0]: right, prompts[1]: wrong})
    scores = task.evaluate(model, examples, batch_size=2, device=torch.device("cpu"))
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["eval_loss"] == pytest.approx(math.log(len(tokenizer)))  # uniform logits


# --- registry and config ---------------------------------------------------------------------------------
def test_make_task_builds_the_configured_format(tmp_path: Path, tokenizer) -> None:
    assert TASKS.names() == ["causal_lm", "chat", "classification", "instruction"]
    task = make_task(load_config(tiny_config_dict(tmp_path)), tokenizer)
    assert isinstance(task, ClassificationTask) and task.max_length == 64
    cfg = tiny_config_dict(tmp_path, task={"type": "causal_lm", "text_field": "text"})
    assert isinstance(make_task(load_config(cfg), tokenizer), CausalLmTask)


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"type": "classification"}, "config key `task`: `labels` is required with type 'classification'"),
        (
            {"type": "causal_lm", "labels": {"a": "x", "b": "y"}},
            "config key `task`: `labels` has no effect with type 'causal_lm'",
        ),
        (
            {"type": "instruction", "prompt": "{question}", "labels": {"a": "x", "b": "y"}},
            "`labels` has no effect",
        ),
        (
            {"type": "classify"},
            "config key `task`: `type`: unknown task type 'classify'; known: causal_lm, chat, classification",
        ),
        ({"type": "causal_lm", "max_new_tokens": 3}, "`max_new_tokens` has no effect with type 'causal_lm'"),
    ],
)
def test_task_config_errors(tmp_path: Path, task: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tiny_config_dict(tmp_path, task=task))
    assert message in str(info.value)
