"""Causal language modelling on raw text: documents packed into fixed-length blocks, scored by perplexity.

Packing follows GPT-2-style pre-training (Radford et al., 2019): every document's tokens followed by the
end-of-sequence token are concatenated into one stream, which is cut into blocks of ``training.max_length``
tokens; the incomplete tail is dropped so that every block is full and no padding is trained on. Every token of
a block is supervised, and perplexity is ``exp`` of the mean negative log-likelihood per predicted token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpctf.data.sources import Row
from mpctf.data.task_base import TASKS, Example, Task, perplexity, scored_logits, token_nll
from mpctf.errors import DataError


def pack(documents: Sequence[Sequence[int]], block_size: int, separator: int) -> list[list[int]]:
    """Concatenate ``documents`` (each followed by ``separator``) and cut the stream into full blocks."""
    stream: list[int] = []
    for doc in documents:
        stream.extend(doc)
        stream.append(separator)
    return [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]


@TASKS.register("causal_lm")
class CausalLmTask(Task):
    """Plain text in ``task.text_field``, packed into ``training.max_length``-token blocks."""

    config_keys = ("text_field",)

    def encode_all(self, rows: Sequence[Row], where: str) -> list[Example]:
        field = self.config.text_field
        lacking = next((i for i, r in enumerate(rows) if field not in r), None)
        if lacking is not None:
            raise DataError(
                f"{where} row {lacking + 1}: row lacks field {field} (task.text_field); "
                f"it has {', '.join(rows[lacking])}"
            )
        texts = [r[field] for r in rows]
        documents = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []  # type: ignore[operator]
        separator = int(self.tokenizer.eos_token_id)  # type: ignore[attr-defined]
        blocks = pack(documents, self.max_length, separator)
        if not blocks:
            tokens = sum(len(d) + 1 for d in documents)
            raise DataError(
                f"{where}: {tokens} tokens of text do not fill one block of training.max_length="
                f"{self.max_length} tokens; add text or lower training.max_length"
            )
        return [Example(input_ids=block, prompt_len=0) for block in blocks]

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, examples: Sequence[Example], *, batch_size: int, device: torch.device
    ) -> dict[str, float]:
        """``perplexity`` and ``eval_loss`` (mean NLL per predicted token) over every held-out block."""
        model.eval()
        nll_sum, count = 0.0, 0
        for i in range(0, len(examples), batch_size):
            batch = self.collate(examples[i : i + batch_size]).to(device)
            total, n = token_nll(*scored_logits(model, batch)[:2])
            nll_sum += float(total)
            count += n
        return {"perplexity": perplexity(nll_sum, count), "eval_loss": nll_sum / max(count, 1)}
