"""Task formats: how a row becomes tokens to train on and how predictions are scored.

Classification with a verbalizer: the prompt is filled from the row, the answer is the label's verbalizer text;
the loss covers the answer tokens only, and accuracy compares the next-token logits of each label's first
answer token at the end of the prompt (so it is exactly what a user of the model would see).

The other formats live in their own modules (``instruction``, ``causal_lm``); :func:`make_task` builds the one a
config names.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from mpctf.config import RunConfig, TaskConfig
from mpctf.data import causal_lm, instruction  # noqa: F401  (registration side effect)
from mpctf.data.sources import Row
from mpctf.data.task_base import (
    IGNORE,
    TASKS,
    Batch,
    Example,
    Task,
    answer_loss,
    collate,
    cut_field,
    scored_logits,
    template_fields,
)
from mpctf.errors import DataError

__all__ = ["IGNORE", "TASKS", "Batch", "ClassificationTask", "Example", "Task", "answer_loss", "collate"]


def make_task(config: RunConfig, tokenizer: object) -> Task:
    """The task format ``config.task.type`` names, for ``config.training.max_length``-token examples."""
    return TASKS.get(config.task.type)(
        config.task, tokenizer, config.training.max_length, truncation=config.training.truncation
    )


@TASKS.register("classification")
class ClassificationTask(Task):
    """Fill ``prompt`` from a row, train on the verbalized label, score by verbalizer logits."""

    config_keys = ("prompt", "labels")
    required_keys = ("labels",)
    selection_metric = "accuracy"
    higher_is_better = True

    def __init__(
        self, config: TaskConfig, tokenizer: object, max_length: int, *, truncation: str | None = None
    ) -> None:
        super().__init__(config, tokenizer, max_length, truncation=truncation)
        assert config.labels is not None  # guaranteed by TaskConfig's validator
        self.labels = config.labels
        self.label_values = list(config.labels)
        self.answer_ids = [self.ids(text) for text in config.labels.values()]
        empty = [label for label, ids in zip(config.labels, self.answer_ids, strict=True) if not ids]
        if empty:
            raise DataError(f"task.labels: the answer text of label {empty[0]!r} is empty; give it a word")
        first = [ids[0] for ids in self.answer_ids]
        if len(set(first)) != len(first):
            raise DataError(
                "task.labels: two verbalizers start with the same token, so they cannot be told apart"
            )
        self.first_answer_ids = torch.tensor(first)
        self.fields = template_fields(config.prompt)

    def encode(self, row: Row, where: str) -> Example:
        """Tokenize one row; ``where`` names its source in errors."""
        missing = [f for f in [*self.fields, self.config.label_field] if f not in row]
        if missing:
            raise DataError(f"{where}: row lacks field(s) {', '.join(missing)}; it has {', '.join(row)}")
        value = row[self.config.label_field]
        if value not in self.labels:
            raise DataError(
                f"{where}: label {value!r} is not in task.labels ({', '.join(self.label_values)})"
            )
        label = self.label_values.index(value)
        answer = self.answer_ids[label]
        cut = cut_field(self.fields, row, self.config.text_field)
        values = {f: row[f] for f in self.fields}

        def render(text: str) -> list[int]:
            return self.ids(self.config.prompt.format(**{**values, cut: text}))

        prompt = self.fit_text(render, str(row[cut]), self.max_length - len(answer), where)
        return Example(input_ids=prompt + answer, prompt_len=len(prompt), label=label)

    def encode_all(self, rows: Sequence[Row], where: str) -> list[Example]:
        return [self.encode(r, f"{where} row {i + 1}") for i, r in enumerate(rows)]

    def canary(self, like: Example, rng: random.Random) -> Example:
        """Random prompt tokens (as many as ``like``'s prompt, at most 16) answered by a random label."""
        label = rng.randrange(len(self.answer_ids))
        vocab = len(self.tokenizer)  # type: ignore[arg-type]
        prompt = [rng.randrange(vocab) for _ in range(max(min(like.prompt_len, 16), 1))]
        return Example(prompt + self.answer_ids[label], len(prompt), label)

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, examples: Sequence[Example], *, batch_size: int, device: torch.device
    ) -> dict[str, float]:
        """``accuracy`` of the verbalizer predictions, ``eval_loss`` (the mean per-row answer loss) and
        ``predicted_share_<label>``: the share of rows predicted as each label (a model that has collapsed onto
        one label shows it at once, whatever its accuracy on a balanced or skewed test set)."""
        model.eval()
        correct, loss_sum = 0, 0.0
        predicted_counts = torch.zeros(len(self.label_values), dtype=torch.long)
        # Batches of similar lengths pad less; the metrics are sums over rows, so the order does not matter.
        by_length = sorted(examples, key=lambda e: len(e.input_ids))
        for i in range(0, len(by_length), batch_size):
            chunk = by_length[i : i + batch_size]
            batch = self.collate(chunk).to(device)
            logits, targets, positions = scored_logits(model, batch)
            # Each row's prompt end predicts its first answer token, so it is one of the scored positions.
            at_end = torch.searchsorted(positions, batch.prompt_end)
            predicted = verbalizer_predictions(logits, at_end, self.first_answer_ids)
            correct += int((predicted == batch.label).sum())
            predicted_counts += torch.bincount(predicted.cpu(), minlength=len(self.label_values))
            loss_sum += float(answer_loss(logits, targets)) * len(chunk)
        n = max(len(examples), 1)
        shares = {
            f"predicted_share_{label}": int(count) / n
            for label, count in zip(self.label_values, predicted_counts, strict=True)
        }
        return {"accuracy": correct / n, "eval_loss": loss_sum / n, **shares}


def verbalizer_predictions(
    logits: torch.Tensor, prompt_end: torch.Tensor, first_answer_ids: torch.Tensor
) -> torch.Tensor:
    """Predicted label index per row: argmax over the labels' first answer tokens at the prompt's end
    (``prompt_end``: each row's column of ``logits`` that its last prompt token predicts from)."""
    rows = torch.arange(logits.size(0), device=logits.device)
    at_end = logits[rows, prompt_end.to(logits.device)]
    return at_end[:, first_answer_ids.to(logits.device)].argmax(dim=-1)
