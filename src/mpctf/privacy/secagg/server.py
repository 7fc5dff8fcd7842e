"""The server's side of secure aggregation: routes messages, sums masked inputs, removes the masks.

Call order, one call per exchange with the list of replies that arrived (missing parties have dropped):

1. ``collect_keys(advertisements)``    → roster, broadcast to every party in it
2. ``route_shares(share_messages)``    → ``{party: inbox}``, each party gets the ciphertexts addressed to it
3. ``collect_masked(masked_inputs)``   → unmask request, broadcast to the survivors
4. ``unmask(unmask_replies)``          → the sum of the survivors' inputs, decoded

The server holds O(model) memory: masked inputs are folded into a running ring sum as they are collected. It
learns the sum of the survivors' inputs and who survived, nothing else (Bonawitz et al. 2017, Thm. 6.2).
"""

from __future__ import annotations

from typing import Any

import torch

from mpctf.messages import NamedTensors
from mpctf.privacy.crypto import public_bytes, x25519_from_seed
from mpctf.privacy.errors import IntegrityError, SecureAggregationError
from mpctf.privacy.layout import TensorLayout
from mpctf.privacy.secagg import masks, ring
from mpctf.privacy.secagg.graph import graph_seed, neighbours
from mpctf.privacy.secagg.params import SecAggParams
from mpctf.privacy.secagg.sharing import combine_shares

_KEY_FIELDS = ("enc_key", "mask_key", "commitment")


class SecAggServer:
    """The server in one round of secure aggregation."""

    def __init__(self, params: SecAggParams, round_num: int) -> None:
        self.params = params
        self.round = round_num
        self._roster: dict[str, dict[str, bytes]] = {}
        self._graph: dict[str, frozenset[str]] = {}
        self._threshold = 0
        self._shared: set[str] = set()
        self._survivors: set[str] = set()
        self._sum: torch.Tensor | None = None
        self._layout: TensorLayout | None = None

    def _fail(self, message: str) -> SecureAggregationError:
        return SecureAggregationError(f"secure aggregation round {self.round}: {message}")

    def _require(self, count: int, what: str) -> None:
        if count < self._threshold:
            raise self._fail(
                f"only {count} parties {what}; at least {self._threshold} (the threshold) are needed to "
                "finish the round"
            )

    def _senders(
        self, messages: list[dict[str, Any]], allowed: set[str], what: str
    ) -> dict[str, dict[str, Any]]:
        by_party: dict[str, dict[str, Any]] = {}
        for message in messages:
            party = message.get("party")
            if message.get("round") != self.round:
                raise self._fail(f"{what} from {party!r} is for round {message.get('round')}")
            if party not in allowed or party in by_party:
                raise self._fail(f"unexpected or repeated {what} from {party!r}")
            by_party[party] = message
        return by_party

    # --- 1 -------------------------------------------------------------------------------------------------
    def collect_keys(self, advertisements: list[dict[str, Any]]) -> dict[str, Any]:
        by_party = self._senders(
            advertisements, {m.get("party") for m in advertisements}, "key advertisement"
        )
        self._roster = {p: {f: bytes(m[f]) for f in _KEY_FIELDS} for p, m in by_party.items()}
        self._graph = neighbours(list(self._roster), self.params.num_neighbours, graph_seed(self._roster))
        holders = len(next(iter(self._graph.values()), ())) + 1
        self._threshold = max(2, self.params.threshold_for(holders))
        self._require(len(self._roster), "advertised keys")
        return {"round": self.round, "parties": self._roster}

    # --- 2 -------------------------------------------------------------------------------------------------
    def route_shares(self, share_messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        by_party = self._senders(share_messages, set(self._roster), "key shares")
        self._require(len(by_party), "shared their keys")
        self._shared = set(by_party)
        inboxes: dict[str, dict[str, Any]] = {
            v: {"round": self.round, "shares": {}} for v in sorted(self._shared)
        }
        for u, message in by_party.items():
            if set(message["shares"]) != set(self._graph[u]):
                raise self._fail(
                    f"party {u!r} sent shares to {sorted(message['shares'])}, not to its neighbours"
                )
            for v, ciphertext in message["shares"].items():
                if (
                    v in inboxes
                ):  # shares for parties that dropped already are useless: they never get an inbox
                    inboxes[v]["shares"][u] = ciphertext
        return inboxes

    # --- 3 -------------------------------------------------------------------------------------------------
    def collect_masked(self, masked_inputs: list[dict[str, Any]]) -> dict[str, Any]:
        by_party = self._senders(masked_inputs, self._shared, "masked input")
        self._require(len(by_party), "sent a masked input, too few to unmask the sum")
        for party in sorted(by_party):
            self._fold(party, by_party[party])
        self._survivors = set(by_party)
        return {
            "round": self.round,
            "survivors": sorted(self._survivors),
            "dropped": sorted(self._shared - self._survivors),
        }

    def _fold(self, party: str, message: dict[str, Any]) -> None:
        layout = TensorLayout.from_json(message["layout"])
        if self._layout is not None and layout != self._layout:
            raise self._fail(f"party {party!r} sent tensors laid out differently from the others")
        masked = ring.from_wire(message["masked"], self.params.bits)
        if masked.numel() != layout.numel:
            raise self._fail(f"party {party!r} sent {masked.numel()} values, its layout says {layout.numel}")
        self._layout = layout
        self._sum = masked if self._sum is None else ring.ring_add(self._sum, masked, self.params.bits)

    # --- 4 -------------------------------------------------------------------------------------------------
    def unmask(self, replies: list[dict[str, Any]]) -> NamedTensors:
        """Rebuild the secrets, strip every mask and decode the sum; raises if too few parties answered."""
        by_party = self._senders(replies, self._survivors, "unmask reply")
        self._require(len(by_party), "answered the unmask request")
        assert (
            self._sum is not None and self._layout is not None
        )  # collect_masked enforced at least one input
        bits, count, total = self.params.bits, self._layout.numel, self._sum
        for v in sorted(self._survivors):
            seed = self._rebuild(v, by_party, "self_mask_shares")
            if masks.commitment(seed) != self._roster[v]["commitment"]:
                raise IntegrityError(
                    f"round {self.round}: self-mask seed rebuilt for {v!r} does not match its commitment"
                )
            total = ring.ring_sub(total, masks.self_mask(seed, count, bits, self.round), bits)
        for v in sorted(self._shared - self._survivors):
            key = x25519_from_seed(self._rebuild(v, by_party, "mask_key_shares"))
            if public_bytes(key) != self._roster[v]["mask_key"]:
                raise IntegrityError(
                    f"round {self.round}: mask key rebuilt for {v!r} does not match its public key"
                )
            for u in sorted(self._graph[v] & self._survivors):
                pair = masks.pairwise_mask(key, self._roster[u]["mask_key"], count, bits, self.round)
                # u added sign(u, v)·PRG(s_uv); take exactly that back out
                total = (
                    ring.ring_sub(total, pair, bits)
                    if masks.sign(u, v) > 0
                    else ring.ring_add(total, pair, bits)
                )
        return ring.decode(total, self._layout, self.params)

    def _rebuild(self, owner: str, replies: dict[str, dict[str, Any]], field: str) -> bytes:
        shares = [r[field][owner] for _, r in sorted(replies.items()) if owner in r.get(field, {})]
        if len(shares) < self._threshold:
            raise self._fail(
                f"only {len(shares)} shares of {owner!r}'s secret arrived, {self._threshold} are needed "
                "to unmask"
            )
        try:
            return combine_shares(shares, self._threshold)
        except ValueError as exc:
            raise IntegrityError(
                f"round {self.round}: shares of {owner!r}'s secret are malformed: {exc}"
            ) from None

    @property
    def survivors(self) -> list[str]:
        """Parties whose inputs are in the sum."""
        return sorted(self._survivors)
