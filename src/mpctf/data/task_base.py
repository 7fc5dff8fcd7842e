"""The task contract: how rows become token examples, how a batch is scored in training and in evaluation.

Every task produces the same :class:`Example` (token ids and where supervision starts), so batching, the training
loss and the per-round data plans are shared; a task owns only its encoding and its evaluation metrics. The
worker, the trainer and the evaluator use a task only through :class:`Task`.
"""

from __future__ import annotations

import inspect
import math
import random
import string
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from mpctf.config import TaskConfig, TrainingConfig
from mpctf.data.sources import Row
from mpctf.errors import DataError
from mpctf.registry import Registry

IGNORE = -100


@dataclass
class Example:
    """One tokenized example: ``input_ids[prompt_len:]`` is supervised (all of it when ``prompt_len`` is 0)."""

    input_ids: list[int]
    prompt_len: int
    #: Classification: the label's index (other tasks leave it at -1).
    label: int = -1


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
    prompt_end = torch.tensor([max(e.prompt_len - 1, 0) for e in examples])
    return Batch(ids, mask, labels, prompt_end, torch.tensor([e.label for e in examples]))


def token_logits(model: torch.nn.Module, batch: Batch, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token logits at ``positions`` of ``batch.input_ids`` (every position when ``None``).

    Prompt tuning and P-tuning prepend virtual tokens and return their logits too; the input's own positions are
    always the last ones, so positions are counted from the end, which is right for every training mode.
    """
    width = batch.input_ids.size(1)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if positions is None:
        return model(**inputs).logits[:, -width:]
    from_end = positions.to(batch.input_ids.device) - width
    if _accepts_logits_to_keep(model):
        # Hugging Face's `logits_to_keep` applies the LM head to these positions only.
        return model(**inputs, logits_to_keep=from_end).logits
    return model(**inputs).logits[:, from_end]


def scored_logits(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits, targets, positions)``: the next-token logits at ``positions``, the positions whose next token
    is labelled in some row (ascending), and ``targets``, the tokens they predict (``IGNORE`` in a row whose
    next token there is not labelled); ``logits[:, j]`` scores ``targets[:, j]``.

    Only these positions go through the LM head. With a 49k-token vocabulary the head and the log-softmax of
    every prompt position were a third of a classification evaluation's time and most of its memory, and the
    span from the first predicting position to the end still cost ~10% of a classification training step
    against these few positions (benchmarks/evaluation.py).
    """
    positions = (batch.labels[:, 1:] != IGNORE).any(dim=0).nonzero().flatten()
    return token_logits(model, batch, positions), batch.labels[:, positions + 1], positions


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    # The first Hugging Face model inside any wrapper (PEFT, Opacus) is the one whose forward takes the argument.
    from transformers import PreTrainedModel  # deferred: transformers is slow to import

    hf = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    return hf is not None and "logits_to_keep" in inspect.signature(type(hf).forward).parameters


def next_token_pairs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every position's logits but the last, and the labels they predict (position t predicts token t+1): the
    ``(logits, targets)`` pairs of a full forward pass."""
    return logits[:, :-1], labels[:, 1:]


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(summed negative log-likelihood, number of scored tokens): ``logits[:, j]`` scores ``targets[:, j]``;
    targets equal to ``IGNORE`` do not count."""
    total = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return total, int((targets != IGNORE).sum())


def answer_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over answer tokens (``logits[:, j]`` scores ``targets[:, j]``)."""
    total, count = token_nll(logits, targets)
    return total / max(count, 1)


def perplexity(nll_sum: float, num_tokens: int) -> float:
    """``exp(mean token NLL)``; infinite when the mean overflows a float."""
    mean = nll_sum / max(num_tokens, 1)
    return math.exp(mean) if mean < 700 else math.inf


class Task(ABC):
    """A task format: encode rows, batch examples, the training loss, and evaluation metrics.

    ``config_keys`` names the ``task`` config keys the format reads (others set in YAML are errors);
    ``required_keys`` those it cannot do without.
    """

    registered_name: ClassVar[str]
    config_keys: ClassVar[tuple[str, ...]] = ()
    required_keys: ClassVar[tuple[str, ...]] = ()
    #: The metric that picks the best round on federated validation, and whether higher is better.
    selection_metric: ClassVar[str] = "eval_loss"
    higher_is_better: ClassVar[bool] = False

    def __init__(
        self, config: TaskConfig, tokenizer: object, max_length: int, *, truncation: str | None = None
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.max_length = max_length
        #: ``training.truncation``: which end of an over-long text field is kept.
        self.truncation = truncation or TrainingConfig.model_fields["truncation"].default
        self.pad_id = int(tokenizer.pad_token_id)  # type: ignore[attr-defined]

    def ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]

    def fit_text(self, render: Callable[[str], list[int]], text: str, budget: int, where: str) -> list[int]:
        """``render(text)`` (the filled template's token ids) in at most ``budget`` tokens, cutting ``text``
        alone: its end (``keep_start``) or its beginning (``keep_end``); ``DataError`` naming ``where`` when
        the template without any text is already longer than ``budget``."""
        out = render(text)
        if len(out) <= budget:
            return out
        pieces = self.ids(text)
        keep = len(pieces) - (len(out) - budget)
        # Tokens at the cut may merge differently once the text is re-rendered: shrink until it fits.
        while keep > 0:
            part = pieces[:keep] if self.truncation == "keep_start" else pieces[len(pieces) - keep :]
            out = render(self.tokenizer.decode(part))  # type: ignore[attr-defined]
            if len(out) <= budget:
                return out
            keep -= len(out) - budget
        out = render("")
        if len(out) > budget:
            raise DataError(
                f"{where}: the prompt without its text is {len(out)} tokens, more than training.max_length "
                f"leaves for it ({budget}); raise training.max_length or shorten task.prompt"
            )
        return out

    @abstractmethod
    def encode_all(self, rows: Sequence[Row], where: str) -> list[Example]:
        """Tokenize rows into examples; ``where`` names their source in errors (``DataError``)."""

    def collate(self, examples: Sequence[Example]) -> Batch:
        """Right-padded tensors of ``examples``."""
        return collate(examples, self.pad_id)

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """The training loss of one batch: mean cross-entropy over its supervised tokens."""
        logits, targets, _ = scored_logits(model, batch)
        return answer_loss(logits, targets)

    @torch.no_grad()
    def row_nll(
        self, model: torch.nn.Module, examples: Sequence[Example], *, batch_size: int, device: torch.device
    ) -> list[tuple[float, int]]:
        """``(summed negative log-likelihood, supervised tokens)`` of each example, in order: what membership
        tests and canary audits score a row by."""
        model.eval()
        out: list[tuple[float, int]] = []
        for i in range(0, len(examples), batch_size):
            batch = self.collate(examples[i : i + batch_size]).to(device)
            logits, targets, _ = scored_logits(model, batch)
            nll = torch.nn.functional.cross_entropy(
                logits.float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
            )
            counts = (targets != IGNORE).sum(dim=1)
            out += [(float(s), int(c)) for s, c in zip(nll.sum(dim=1), counts, strict=True)]
        return out

    def canary(self, like: Example, rng: random.Random) -> Example:
        """A canary row shaped like ``like``: random tokens throughout (at most 16), so only memorising it can
        lower its loss. Classification overrides it to answer with a random label."""
        vocab = len(self.tokenizer)  # type: ignore[arg-type]
        length = min(len(like.input_ids), 16)
        prompt_len = min(like.prompt_len, length - 1)
        return Example([rng.randrange(vocab) for _ in range(length)], prompt_len, like.label)

    @abstractmethod
    def evaluate(
        self, model: torch.nn.Module, examples: Sequence[Example], *, batch_size: int, device: torch.device
    ) -> dict[str, float]:
        """Metrics of ``model`` as it is now on held-out ``examples`` (the round loop logs every key)."""


TASKS: Registry[Task] = Registry("task type")


def template_fields(prompt: str) -> list[str]:
    """The ``{field}`` names of a prompt template, in order."""
    return [f for _, f, _, _ in string.Formatter().parse(prompt) if f]


def cut_field(fields: Sequence[str], row: Row, preferred: str) -> str:
    """The field an over-long row is cut in: ``preferred`` (``task.text_field``) when the template uses it,
    else the template's longest field in this row."""
    if preferred in fields:
        return preferred
    return max(fields, key=lambda f: len(str(row[f])))
