"""Task formats: how a row becomes tokens to train on and how predictions are scored.

Classification with a verbalizer: the prompt is filled from the row, the answer is the label's verbalizer text;
the loss covers the answer tokens only, and accuracy compares the next-token logits of each label's first
answer token at the end of the prompt (so it is exactly what a user of the model would see).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mpctf.config import TaskConfig
from mpctf.data.sources import Row
from mpctf.errors import DataError

IGNORE = -100


@dataclass
class Example:
    """One tokenized example: prompt then answer ids, and which label it is."""

    input_ids: list[int]
    prompt_len: int
    label: int


class ClassificationTask:
    """Fill ``prompt`` from a row, train on the verbalized label, score by verbalizer logits."""

    def __init__(self, config: TaskConfig, tokenizer: object, max_length: int) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.label_values = list(config.labels)
        self.answer_ids = [self._ids(text) for text in config.labels.values()]
        first = [ids[0] for ids in self.answer_ids]
        if len(set(first)) != len(first):
            raise DataError(
                "task.labels: two verbalizers start with the same token, so they cannot be told apart"
            )
        self.first_answer_ids = torch.tensor(first)
        self.fields = [f for _, f, _, _ in string.Formatter().parse(config.prompt) if f]

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]

    def encode(self, row: Row, where: str) -> Example:
        """Tokenize one row; ``where`` names its source in errors."""
        missing = [f for f in [*self.fields, self.config.label_field] if f not in row]
        if missing:
            raise DataError(f"{where}: row lacks field(s) {', '.join(missing)}; it has {', '.join(row)}")
        value = row[self.config.label_field]
        if value not in self.config.labels:
            raise DataError(
                f"{where}: label {value!r} is not in task.labels ({', '.join(self.label_values)})"
            )
        label = self.label_values.index(value)
        answer = self.answer_ids[label]
        prompt = self._ids(self.config.prompt.format(**{f: row[f] for f in self.fields}))
        # Keep the end of the prompt (where the question is) when the row is too long.
        keep = max(1, self.max_length - len(answer))
        prompt = prompt[-keep:]
        return Example(input_ids=prompt + answer, prompt_len=len(prompt), label=label)

    def encode_all(self, rows: Sequence[Row], where: str) -> list[Example]:
        return [self.encode(r, f"{where} row {i + 1}") for i, r in enumerate(rows)]


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    #: Index of the last prompt token of each row (where the answer's first token is predicted).
    prompt_end: torch.Tensor
    label: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(
            *(
                t.to(device)
                for t in (self.input_ids, self.attention_mask, self.labels, self.prompt_end, self.label)
            )
        )

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    """Right-pad a list of examples into tensors; labels mask the prompt and the padding."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        labels[i, e.prompt_len : n] = ids[i, e.prompt_len : n]
    prompt_end = torch.tensor([e.prompt_len - 1 for e in examples])
    return Batch(ids, mask, labels, prompt_end, torch.tensor([e.label for e in examples]))


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over answer tokens (position t predicts token t+1)."""
    shifted = logits[:, :-1, :].float()
    target = labels[:, 1:]
    return torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.size(-1)), target.reshape(-1), ignore_index=IGNORE
    )


def verbalizer_predictions(
    logits: torch.Tensor, prompt_end: torch.Tensor, first_answer_ids: torch.Tensor
) -> torch.Tensor:
    """Predicted label index per row: argmax over the labels' first answer tokens at the prompt's end."""
    rows = torch.arange(logits.size(0), device=logits.device)
    at_end = logits[rows, prompt_end.to(logits.device)]
    return at_end[:, first_answer_ids.to(logits.device)].argmax(dim=-1)
