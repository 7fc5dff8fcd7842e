"""Global evaluation on the server's held-out rows: verbalizer accuracy and answer loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpctf.data.tasks import ClassificationTask, Example, answer_loss, collate, verbalizer_predictions
from mpctf.messages import NamedTensors
from mpctf.model.bundle import ModelBundle


@torch.no_grad()
def evaluate_examples(
    bundle: ModelBundle, task: ClassificationTask, examples: Sequence[Example], batch_size: int
) -> dict[str, float]:
    """Accuracy and mean answer loss of the model as it is now."""
    model = bundle.model
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        batch = collate(chunk, bundle.pad_id).to(bundle.device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        predicted = verbalizer_predictions(logits, batch.prompt_end, task.first_answer_ids)
        correct += int((predicted == batch.label).sum())
        loss_sum += float(answer_loss(logits, batch.labels)) * len(chunk)
    n = max(len(examples), 1)
    return {"accuracy": correct / n, "eval_loss": loss_sum / n}


class Evaluator:
    """Evaluates a trainable state on fixed examples (the state is loaded first, so a shared model is fine)."""

    def __init__(
        self, bundle: ModelBundle, task: ClassificationTask, examples: Sequence[Example], batch_size: int
    ):
        self.bundle, self.task, self.examples, self.batch_size = bundle, task, list(examples), batch_size

    def __call__(self, state: NamedTensors) -> dict[str, float]:
        self.bundle.mode.set_state(self.bundle.model, state)
        return evaluate_examples(self.bundle, self.task, self.examples, self.batch_size)
