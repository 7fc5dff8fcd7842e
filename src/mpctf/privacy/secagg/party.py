"""The party's side of secure aggregation: a state machine over four server exchanges, no I/O.

Call order (each call takes what the server sent, returns what to send back; see ``docs/privacy.md``):

1. ``advertise_keys()``              → public encryption and mask keys, commitment to the self-mask seed
2. ``share_keys(roster)``            → Shamir shares of both seeds, AES-GCM-encrypted per neighbour
3. ``masked_input(inbox, tensors)``  → the masked, fixed-point-encoded update
4. ``unmask(request)``               → shares of survivors' self-mask seeds and dropped parties' mask seeds

A party object serves one round; its secrets are dropped after ``unmask``. Threat model: an honest-but-curious
server and honest-but-curious parties, any coalition smaller than the threshold learns nothing beyond the sum.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from mpctf.messages import NamedTensors
from mpctf.privacy.crypto import aead_decrypt, aead_encrypt, public_bytes, x25519_from_seed
from mpctf.privacy.errors import SecureAggregationError
from mpctf.privacy.secagg import masks, ring
from mpctf.privacy.secagg.graph import graph_seed, neighbours
from mpctf.privacy.secagg.params import SecAggParams
from mpctf.privacy.secagg.sharing import SECRET_BYTES, SHARE_BYTES, split_secret

_ORDER = ("advertise", "share", "mask", "unmask", "done")


class SecAggParty:
    """One party in one round of secure aggregation."""

    def __init__(
        self,
        name: str,
        params: SecAggParams,
        round_num: int,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """``random_bytes`` is the source of every secret; only tests pass anything but the OS's CSPRNG."""
        self.name = name
        self.params = params
        self.round = round_num
        self._stage = "advertise"
        self._enc_key = x25519_from_seed(random_bytes(SECRET_BYTES))
        self._mask_seed = random_bytes(SECRET_BYTES)
        self._mask_key = x25519_from_seed(self._mask_seed)
        self._self_seed = random_bytes(SECRET_BYTES)
        self._roster: dict[str, dict[str, bytes]] = {}
        self._neighbours: frozenset[str] = frozenset()
        self._threshold = 0
        # shares this party holds: owner -> (share of owner's mask seed, share of owner's self-mask seed)
        self._held: dict[str, tuple[bytes, bytes]] = {}
        #: Float values clamped by the fixed-point encoder (many: clip_range is too small; report it).
        self.clamped = 0

    def _advance(self, stage: str) -> None:
        if self._stage != stage:
            raise SecureAggregationError(
                f"party {self.name!r}: {stage!r} called during stage {self._stage!r}"
            )
        self._stage = _ORDER[_ORDER.index(stage) + 1]

    def _check_round(self, message: dict[str, Any]) -> None:
        if message.get("round") != self.round:
            raise SecureAggregationError(
                f"party {self.name!r}: message for round {message.get('round')}, this is round {self.round}"
            )

    # --- 1. advertise keys ---------------------------------------------------------------------------------
    def advertise_keys(self) -> dict[str, Any]:
        self._advance("advertise")
        return {
            "party": self.name,
            "round": self.round,
            "enc_key": public_bytes(self._enc_key),
            "mask_key": public_bytes(self._mask_key),
            "commitment": masks.commitment(self._self_seed),
        }

    # --- 2. share keys -------------------------------------------------------------------------------------
    def share_keys(self, roster: dict[str, Any]) -> dict[str, Any]:
        """Check the roster, then send each neighbour its shares of this party's two seeds, encrypted."""
        self._advance("share")
        self._check_round(roster)
        self._roster = {name: dict(keys) for name, keys in roster["parties"].items()}
        self._check_roster()
        graph = neighbours(list(self._roster), self.params.num_neighbours, graph_seed(self._roster))
        self._neighbours = graph[self.name]
        holders = sorted(self._neighbours | {self.name})
        self._threshold = self.params.threshold_for(len(holders))
        if len(holders) < max(2, self._threshold):
            raise SecureAggregationError(
                f"party {self.name!r}: {len(holders)} holders for its secrets, threshold {self._threshold}"
            )
        mask_shares = split_secret(self._mask_seed, self._threshold, holders)
        self_shares = split_secret(self._self_seed, self._threshold, holders)
        self._held[self.name] = (mask_shares[self.name], self_shares[self.name])
        ciphertexts = {}
        for v in sorted(self._neighbours):
            key = masks.share_key(self._enc_key, self._roster[v]["enc_key"])
            plaintext = mask_shares[v] + self_shares[v]
            ciphertexts[v] = aead_encrypt(key, plaintext, masks.share_aad(self.round, self.name, v))
        return {"party": self.name, "round": self.round, "shares": ciphertexts}

    def _check_roster(self) -> None:
        mine = self._roster.get(self.name)
        if (
            mine is None
            or mine.get("enc_key") != public_bytes(self._enc_key)
            or mine.get("mask_key") != public_bytes(self._mask_key)
            or mine.get("commitment") != masks.commitment(self._self_seed)
        ):
            raise SecureAggregationError(
                f"party {self.name!r}: the roster does not carry this party's own keys"
            )
        for field in ("enc_key", "mask_key"):
            keys = [entry[field] for entry in self._roster.values()]
            if len(set(keys)) != len(keys):
                raise SecureAggregationError(f"party {self.name!r}: two parties advertise the same {field}")

    # --- 3. masked input -----------------------------------------------------------------------------------
    def masked_input(self, inbox: dict[str, Any], tensors: NamedTensors) -> dict[str, Any]:
        """Decrypt the shares received (any tampering raises), then mask and send the update."""
        self._advance("mask")
        self._check_round(inbox)
        senders = set(inbox["shares"])
        if not senders <= self._neighbours:
            raise SecureAggregationError(
                f"party {self.name!r}: shares from non-neighbours {sorted(senders - self._neighbours)}"
            )
        for u in sorted(senders):
            self._held[u] = self._open_share(u, inbox["shares"][u])
        if len(senders) + 1 < self._threshold:
            raise SecureAggregationError(
                f"party {self.name!r}: only {len(senders)} neighbours shared keys, so its own secrets could "
                f"never be rebuilt (threshold {self._threshold}); aborting the round"
            )
        encoded, layout, self.clamped = ring.encode(tensors, self.params)
        ring.check_headroom(layout, self.params, len(self._roster))
        bits, count = self.params.bits, encoded.numel()
        masked = ring.ring_add(encoded, masks.self_mask(self._self_seed, count, bits, self.round), bits)
        for v in sorted(senders):
            pair = masks.pairwise_mask(self._mask_key, self._roster[v]["mask_key"], count, bits, self.round)
            masked = (
                ring.ring_add(masked, pair, bits)
                if masks.sign(self.name, v) > 0
                else ring.ring_sub(masked, pair, bits)
            )
        return {
            "party": self.name,
            "round": self.round,
            "masked": ring.to_wire(masked, bits),
            "layout": layout.to_json(),
        }

    def _open_share(self, sender: str, blob: bytes) -> tuple[bytes, bytes]:
        key = masks.share_key(self._enc_key, self._roster[sender]["enc_key"])
        what = f"round {self.round}: key shares from {sender!r} to {self.name!r}"
        plaintext = aead_decrypt(key, blob, masks.share_aad(self.round, sender, self.name), what)
        if len(plaintext) != 2 * SHARE_BYTES:
            raise SecureAggregationError(f"{what}: {len(plaintext)} bytes, expected {2 * SHARE_BYTES}")
        return plaintext[:SHARE_BYTES], plaintext[SHARE_BYTES:]

    # --- 4. unmask -----------------------------------------------------------------------------------------
    def unmask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Reveal, for each party whose shares this party holds, exactly one of its two secrets."""
        self._advance("unmask")
        self._check_round(request)
        survivors, dropped = set(request["survivors"]), set(request["dropped"])
        if survivors & dropped:
            raise SecureAggregationError(
                f"party {self.name!r}: {sorted(survivors & dropped)} listed both alive and dropped"
            )
        if self.name not in survivors:
            raise SecureAggregationError(
                f"party {self.name!r}: the unmask request lists this party as dropped"
            )
        unknown = (survivors | dropped) & (self._neighbours - set(self._held))
        if unknown:
            raise SecureAggregationError(
                f"party {self.name!r}: neighbours {sorted(unknown)} never shared keys"
            )
        reply = {
            "party": self.name,
            "round": self.round,
            "self_mask_shares": {v: self._held[v][1] for v in sorted(survivors & set(self._held))},
            "mask_key_shares": {v: self._held[v][0] for v in sorted(dropped & set(self._held))},
        }
        self._held.clear()
        self._mask_seed = self._self_seed = b""
        return reply
