"""A step-by-step driver of one secure-aggregation round: tests drop, inspect or tamper between steps."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from mpctf.privacy.secagg import SecAggParams, SecAggParty, SecAggServer


class Round:
    """Parties ``p0..p{n-1}`` and a server; each method runs one exchange for the parties still alive."""

    def __init__(self, n: int, params: SecAggParams, seed: int = 0, round_num: int = 3) -> None:
        rng = random.Random(seed)
        self.params = params
        self.parties = {
            f"p{i}": SecAggParty(f"p{i}", params, round_num, random_bytes=rng.randbytes) for i in range(n)
        }
        self.server = SecAggServer(params, round_num)
        self.alive = sorted(self.parties)

    def drop(self, *names: str) -> None:
        self.alive = [n for n in self.alive if n not in names]

    def advertise(self) -> dict[str, Any]:
        self.roster = self.server.collect_keys([self.parties[n].advertise_keys() for n in self.alive])
        return self.roster

    def share(self) -> dict[str, dict[str, Any]]:
        self.inboxes = self.server.route_shares([self.parties[n].share_keys(self.roster) for n in self.alive])
        return self.inboxes

    def mask(self, updates: dict[str, dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
        self.masked = [self.parties[n].masked_input(self.inboxes[n], updates[n]) for n in self.alive]
        return self.masked

    def collect(self) -> dict[str, Any]:
        self.request = self.server.collect_masked(self.masked)
        return self.request

    def reveal(self) -> list[dict[str, Any]]:
        self.replies = [self.parties[n].unmask(self.request) for n in self.alive]
        return self.replies

    def result(self) -> dict[str, torch.Tensor]:
        return self.server.unmask(self.replies)


@pytest.fixture
def make_round():
    return Round


def random_updates(names: list[str], seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return {
        n: {
            "lora_A": torch.randn(4, 8, generator=generator) * 0.1,
            "lora_B": torch.randn(8, 4, generator=generator) * 0.1,
        }
        for n in names
    }


@pytest.fixture
def updates():
    return random_updates([f"p{i}" for i in range(5)])
