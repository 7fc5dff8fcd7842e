"""Instruction (chat) fine-tuning, rendered with the model's own chat template: question → answer pairs
(``instruction``), or whole conversations, ``messages: [{role, content}, ...]`` (``chat``).

The loss covers only the answer tokens (the assistant's reply and its end-of-turn token), as in supervised
fine-tuning of chat models (Ouyang et al., 2022). Held-out pairs are scored two ways: ``eval_loss``, the mean
negative log-likelihood per answer token, and ``exact_match``, the share of questions whose greedily generated
reply equals the reference answer after :func:`normalize_answer`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

from mpctf.config import TaskConfig
from mpctf.data.sources import Row
from mpctf.data.task_base import TASKS, Example, Task, cut_field, scored_logits, template_fields, token_nll
from mpctf.errors import DataError

_TRAILING_PUNCT = re.compile(r"[\s.!?,;:]+$")


def normalize_answer(text: str) -> str:
    """Case-folded, whitespace collapsed, trailing punctuation dropped ("The Andromeda Galaxy." → "the
    andromeda galaxy"): a reply that differs only in these ways is the same answer."""
    return _TRAILING_PUNCT.sub("", " ".join(text.casefold().split()))


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after :func:`normalize_answer`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    hits = sum(
        normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True)
    )
    return hits / max(len(references), 1)


def until_stop(ids: Sequence[int], stop: int) -> list[int]:
    """``ids`` up to, not including, the first ``stop`` token."""
    ids = list(ids)
    return ids[: ids.index(stop)] if stop in ids else ids


class ChatTemplateTask(Task):
    """What instruction and chat tuning share: conversations rendered with the model's chat template, one
    supervised assistant reply per example, greedy replies scored by exact match."""

    def __init__(
        self, config: TaskConfig, tokenizer: object, max_length: int, *, truncation: str | None = None
    ) -> None:
        super().__init__(config, tokenizer, max_length, truncation=truncation)
        if getattr(tokenizer, "chat_template", None) is None:
            raise DataError(
                f"task type {self.registered_name!r} needs a model whose tokenizer has a chat template"
            )
        self.eos_id = int(tokenizer.eos_token_id)  # type: ignore[attr-defined]

    def _chat(self, messages: list[dict[str, str]], *, generation_prompt: bool) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])

    def reply_example(
        self,
        messages: list[dict[str, str]],
        reply: str,
        where: str,
        *,
        render: Callable[[str], list[int]] | None = None,
        text: str = "",
    ) -> Example:
        """The conversation ``messages`` as the prompt, the assistant's ``reply`` (through its end-of-turn
        token) as the supervised answer. When the pair is too long for ``max_length``, the reply keeps its start;
        with ``render`` (the prompt rendered around another ``text``) the prompt loses part of ``text`` only
        (``training.truncation``), else it keeps its end (the latest turns and the assistant header)."""
        prompt = self._chat(messages, generation_prompt=True)
        full = self._chat([*messages, {"role": "assistant", "content": reply}], generation_prompt=False)
        if full[: len(prompt)] != prompt:
            raise DataError(
                f"{where}: the model's chat template does not render the conversation as prompt + answer, "
                "so the answer tokens cannot be told apart"
            )
        answer = [*until_stop(full[len(prompt) :], self.eos_id), self.eos_id][: self.max_length - 1]
        if len(prompt) + len(answer) <= self.max_length:
            return Example(input_ids=prompt + answer, prompt_len=len(prompt))
        if render is None:
            prompt = prompt[-(self.max_length - len(answer)) :]
        else:
            # The template (instruction, assistant header) stays whole: a long reply leaves room for it.
            answer = answer[: max(self.max_length - len(render("")), 1)]
            prompt = self.fit_text(render, text, self.max_length - len(answer), where)
        return Example(input_ids=prompt + answer, prompt_len=len(prompt))

    def generate(
        self, model: torch.nn.Module, prompts: Sequence[Sequence[int]], device: torch.device
    ) -> list[str]:
        """Greedy replies to tokenized prompts (left-padded into one batch), cut at the end-of-turn token."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(list(p))
            mask[i, width - len(p) :] = 1
        out = model.generate(  # type: ignore[operator]
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
        )
        return [
            self.tokenizer.decode(until_stop(row[width:].tolist(), self.eos_id), skip_special_tokens=True)  # type: ignore[attr-defined]
            for row in out
        ]

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, examples: Sequence[Example], *, batch_size: int, device: torch.device
    ) -> dict[str, float]:
        """``exact_match`` of greedy replies and ``eval_loss`` (mean NLL per answer token)."""
        model.eval()
        nll_sum, count, predictions, references = 0.0, 0, [], []
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            batch = self.collate(chunk).to(device)
            total, n = token_nll(*scored_logits(model, batch)[:2])
            nll_sum, count = nll_sum + float(total), count + n
            predictions += self.generate(model, [e.input_ids[: e.prompt_len] for e in chunk], device)
            references += [
                self.tokenizer.decode(
                    until_stop(e.input_ids[e.prompt_len :], self.eos_id), skip_special_tokens=True
                )  # type: ignore[attr-defined]
                for e in chunk
            ]
        return {"exact_match": exact_match(predictions, references), "eval_loss": nll_sum / max(count, 1)}


@TASKS.register("instruction")
class InstructionTask(ChatTemplateTask):
    """A user message filled from ``task.prompt``, the assistant's reply from ``task.answer_field``."""

    config_keys = ("prompt", "answer_field", "system", "max_new_tokens")

    def __init__(
        self, config: TaskConfig, tokenizer: object, max_length: int, *, truncation: str | None = None
    ) -> None:
        super().__init__(config, tokenizer, max_length, truncation=truncation)
        self.fields = template_fields(config.prompt)

    def encode(self, row: Row, where: str) -> Example:
        """Tokenize one pair: the templated prompt, then the answer through its end-of-turn token. An over-long
        pair loses part of the prompt's text field (``training.truncation``), never the template."""
        missing = [f for f in [*self.fields, self.config.answer_field] if f not in row]
        if missing:
            raise DataError(f"{where}: row lacks field(s) {', '.join(missing)}; it has {', '.join(row)}")
        values = {f: row[f] for f in self.fields}
        cut = cut_field(self.fields, row, self.config.text_field)

        def messages(text: str) -> list[dict[str, str]]:
            system = [{"role": "system", "content": self.config.system}] if self.config.system else []
            return [*system, {"role": "user", "content": self.config.prompt.format(**{**values, cut: text})}]

        def render(text: str) -> list[int]:
            return self._chat(messages(text), generation_prompt=True)

        text = str(row[cut])
        return self.reply_example(
            messages(text), str(row[self.config.answer_field]), where, render=render, text=text
        )

    def encode_all(self, rows: Sequence[Row], where: str) -> list[Example]:
        return [self.encode(r, f"{where} row {i + 1}") for i, r in enumerate(rows)]


@TASKS.register("chat")
class ChatTask(ChatTemplateTask):
    """Conversations in ``task.messages_field`` (``[{role, content}, ...]``, as fine-tuning tools export them):
    every assistant turn is trained on, given the conversation before it; everything else is masked.

    A conversation with k assistant turns becomes k examples, the i-th with everything before the i-th
    assistant turn as its prompt (an :class:`Example` supervises one contiguous span), so each turn is trained
    on with the context the model would have had, and held-out replies are scored one by one.
    """

    config_keys = ("messages_field", "system", "max_new_tokens")

    def encode_all(self, rows: Sequence[Row], where: str) -> list[Example]:
        examples = []
        for i, row in enumerate(rows):
            examples += self.encode_conversation(row, f"{where} row {i + 1}")
        return examples

    def encode_conversation(self, row: Row, where: str) -> list[Example]:
        """One example per assistant turn of the row's conversation."""
        messages = conversation(row, self.config.messages_field, where)
        added = bool(self.config.system) and messages[0]["role"] != "system"
        if added:
            messages.insert(0, {"role": "system", "content": self.config.system})
        return [
            self.reply_example(messages[:t], m["content"], f"{where} message {t + 1 - added}")
            for t, m in enumerate(messages)
            if m["role"] == "assistant"
        ]


def conversation(row: Row, field: str, where: str) -> list[dict[str, str]]:
    """The row's ``field`` as a list of ``{role, content}`` messages with at least one assistant turn (other
    keys of a message, and null ones, are dropped); ``DataError`` naming ``where`` otherwise."""
    if field not in row:
        raise DataError(f"{where}: row lacks field {field!r}; it has {', '.join(row)}")
    value = row[field]
    shape = "a list of {role, content} objects"
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: {field!r} must be {shape}, got {type(value).__name__}")
    messages = []
    for n, m in enumerate(value, start=1):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(f"{where}: message {n} of {field!r} is not a {{role, content}} object with text")
        messages.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation in {field!r} has no assistant turn to train on")
    return messages
