"""Instruction (chat) fine-tuning: question → answer pairs rendered with the model's own chat template.

The loss covers only the answer tokens (the assistant's reply and its end-of-turn token), as in supervised
fine-tuning of chat models (Ouyang et al., 2022). Held-out pairs are scored two ways: ``eval_loss``, the mean
negative log-likelihood per answer token, and ``exact_match``, the share of questions whose greedily generated
reply equals the reference answer after :func:`normalize_answer`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import torch

from mpctf.config import TaskConfig
from mpctf.data.sources import Row
from mpctf.data.task_base import TASKS, Example, Task, scored_logits, token_nll
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


@TASKS.register("instruction")
class InstructionTask(Task):
    """A user message filled from ``task.prompt``, the assistant's reply from ``task.answer_field``."""

    config_keys = ("prompt", "answer_field", "system", "max_new_tokens")

    def __init__(self, config: TaskConfig, tokenizer: object, max_length: int) -> None:
        super().__init__(config, tokenizer, max_length)
        if getattr(tokenizer, "chat_template", None) is None:
            raise DataError("task type 'instruction' needs a model whose tokenizer has a chat template")
        self.fields = [f for _, f, _, _ in string.Formatter().parse(config.prompt) if f]
        self.eos_id = int(tokenizer.eos_token_id)  # type: ignore[attr-defined]

    def _chat(self, messages: list[dict[str, str]], *, generation_prompt: bool) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])

    def encode(self, row: Row, where: str) -> Example:
        """Tokenize one pair: the templated prompt, then the answer through its end-of-turn token."""
        missing = [f for f in [*self.fields, self.config.answer_field] if f not in row]
        if missing:
            raise DataError(f"{where}: row lacks field(s) {', '.join(missing)}; it has {', '.join(row)}")
        messages = [{"role": "system", "content": self.config.system}] if self.config.system else []
        messages.append(
            {"role": "user", "content": self.config.prompt.format(**{f: row[f] for f in self.fields})}
        )
        prompt = self._chat(messages, generation_prompt=True)
        full = self._chat(
            [*messages, {"role": "assistant", "content": row[self.config.answer_field]}],
            generation_prompt=False,
        )
        if full[: len(prompt)] != prompt:
            raise DataError(
                f"{where}: the model's chat template does not render the conversation as prompt + answer, "
                "so the answer tokens cannot be told apart"
            )
        # The reply through its end-of-turn token; an over-long reply keeps its start (and one prompt token).
        answer = [*until_stop(full[len(prompt) :], self.eos_id), self.eos_id][: self.max_length - 1]
        # Keep the end of the prompt (the question and the assistant header) when the pair is too long.
        prompt = prompt[-(self.max_length - len(answer)) :]
        return Example(input_ids=prompt + answer, prompt_len=len(prompt))

    def encode_all(self, rows: Sequence[Row], where: str) -> list[Example]:
        return [self.encode(r, f"{where} row {i + 1}") for i, r in enumerate(rows)]

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
