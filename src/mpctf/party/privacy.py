"""A party's side of the round's privacy stages: clip and noise (client DP), then mask (SecAgg) or encrypt (CKKS).

The worker calls :meth:`PartyPrivacy.protect` on ``local − global`` after training, and hands every privacy
exchange (an op in :data:`mpctf.privacy.rounds.OPS`) to :meth:`PartyPrivacy.handle`. The algorithms are the pure
ones of :mod:`mpctf.privacy`; this class only keeps the keys this party holds between exchanges:

- its secure-aggregation state for the round in flight (fresh keys every round);
- its X25519 key for receiving the CKKS secret context, and that context once installed.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import torch

from mpctf.messages import NamedTensors, RoundTask, pack
from mpctf.privacy import rounds
from mpctf.privacy.config import PrivacyConfig

#: Associated data binding a sealed CKKS context to its recipient.
_HE_AAD = b"mpctf ckks secret context|"


def hides_update(task: RoundTask) -> bool:
    """Whether the server asked for this round's update masked or encrypted (the uplink codecs then unused)."""
    return task.instructions.get("privacy", {}).get("hide") is not None


class PartyPrivacy:
    """The privacy stages of one party for a whole run."""

    def __init__(self, config: PrivacyConfig, party: str) -> None:
        self.config = config
        self.party = party
        self._secagg: Any = None  # SecAggParty of the round in flight
        self._he_key: Any = None  # X25519PrivateKey awaiting the sealed CKKS context
        self._ckks: Any = None  # CkksParty once the context is installed

    # --- the update ------------------------------------------------------------------------------
    def protect(
        self, task: RoundTask, delta: NamedTensors, *, num_samples: int, num_tokens: int
    ) -> tuple[NamedTensors, dict[str, Any], dict[str, float]]:
        """``(tensors to send, header, metrics)``: clipped, noised, weighted, then masked or encrypted.

        Every step follows the task's ``privacy`` instructions, not this party's own config: the server's ledger
        accounts for what it asked for, so a party whose config differs still clips and noises as the ledger
        says (and a task without instructions leaves the update as it is).
        """
        from mpctf.privacy import adaptive_clip, dp

        start = time.perf_counter()
        instructions = task.instructions.get("privacy", {})
        hide = instructions.get("hide")
        metrics: dict[str, float] = {}
        tensors = {k: v.detach().float().cpu() for k, v in delta.items()}
        indicator = None
        if "clip_norm" in instructions:
            clip_norm = float(instructions["clip_norm"])
            tensors, norm = dp.clip_update(tensors, clip_norm)
            if instructions.get("adaptive"):
                indicator = adaptive_clip.centred_indicator(norm, clip_norm)
            if instructions.get("noise_std", 0.0) > 0:
                tensors = dp.add_gaussian_noise(tensors, instructions["noise_std"], dp.make_generator())
        weight = {"samples": num_samples, "tokens": num_tokens}.get(instructions.get("weight", ""), 1)
        scale = weight / float(instructions.get("weight_total", 1.0))
        if scale != 1.0:
            tensors = {k: v * scale for k, v in tensors.items()}
        if hide is None:
            if indicator is not None:
                metrics["dp_unclipped"] = indicator  # the server sees the clipped update anyway
            return tensors, {}, metrics
        if indicator is not None:
            # b_k − ½ rides in the hidden vector (the server learns only the noised Σ); the party adds its share of
            # the count noise in distributed mode, scaled to stay inside the fixed-point range.
            if (count_std := instructions.get("count_noise_std", 0.0)) > 0:
                indicator += float(torch.randn((), generator=dp.make_generator())) * count_std
            tensors[rounds.UNCLIPPED] = torch.tensor(
                [indicator * float(instructions.get("indicator_scale", 1))]
            )
        if hide == "secagg":
            sent, header = self._mask(task, tensors, metrics)
        else:
            sent, header = self._encrypt(tensors)
        metrics["privacy_seconds"] = time.perf_counter() - start
        return sent, header, metrics

    def _mask(
        self, task: RoundTask, tensors: NamedTensors, metrics: dict[str, float]
    ) -> tuple[NamedTensors, dict[str, Any]]:
        from mpctf.privacy.secagg import wire

        if self._secagg is None or self._secagg.round != task.round:
            raise RuntimeError(f"party {self.party!r}: no secure-aggregation keys for round {task.round}")
        inbox = wire.loads(base64.b64decode(task.instructions["privacy"]["inbox"]))
        message = self._secagg.masked_input(inbox, tensors)
        metrics["secagg_clamped"] = float(self._secagg.clamped)
        return {rounds.MASKED: message["masked"]}, {"layout": message["layout"]}

    def _encrypt(self, tensors: NamedTensors) -> tuple[NamedTensors, dict[str, Any]]:
        if self._ckks is None:
            raise RuntimeError(f"party {self.party!r} holds no CKKS context (it joined after the key setup)")
        encrypted = self._ckks.encrypt(tensors)
        return rounds.ckks_tensors(encrypted.chunks), {"layout": encrypted.layout.to_json()}

    # --- the exchanges ---------------------------------------------------------------------------
    def handle(self, task: RoundTask) -> bytes:
        """Answer one privacy exchange (``task.instructions['op']`` in :data:`~mpctf.privacy.rounds.OPS`)."""
        op = task.instructions["op"]
        handler = {
            rounds.SECAGG_ADVERTISE: self._secagg_advertise,
            rounds.SECAGG_SHARE: self._secagg_share,
            rounds.SECAGG_UNMASK: self._secagg_unmask,
            rounds.HE_KEY: self._he_key_reply,
            rounds.HE_CONTEXT: self._he_context,
            rounds.HE_INSTALL: self._he_install,
            rounds.HE_DECRYPT: self._he_decrypt,
        }[op]
        return handler(task)

    def _secagg_advertise(self, task: RoundTask) -> bytes:
        from mpctf.privacy.secagg import SecAggParty, wire
        from mpctf.privacy.secagg.params import SecAggParams

        # The server's ring parameters: every party of the round must encode into the same ring.
        params = SecAggParams.model_validate(task.instructions["secagg"])
        self._secagg = SecAggParty(self.party, params, task.round)
        return rounds.reply(task.instructions["op"], {"message": wire.dumps(self._secagg.advertise_keys())})

    def _secagg_step(self, task: RoundTask, method: str) -> bytes:
        from mpctf.privacy.secagg import wire

        if self._secagg is None or self._secagg.round != task.round:
            raise RuntimeError(f"party {self.party!r}: no secure-aggregation state for round {task.round}")
        incoming = wire.loads(rounds.request_blobs(task)["message"])
        answer = getattr(self._secagg, method)(incoming)
        return rounds.reply(task.instructions["op"], {"message": wire.dumps(answer)})

    def _secagg_share(self, task: RoundTask) -> bytes:
        return self._secagg_step(task, "share_keys")

    def _secagg_unmask(self, task: RoundTask) -> bytes:
        answer = self._secagg_step(task, "unmask")
        self._secagg = None  # its secrets were dropped by unmask; the next round starts afresh
        return answer

    def _he_key_reply(self, task: RoundTask) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        from mpctf.privacy.crypto import public_bytes

        self._he_key = X25519PrivateKey.generate()
        return rounds.reply(task.instructions["op"], {"public": public_bytes(self._he_key)})

    def _he_context(self, task: RoundTask) -> bytes:
        """As the key holder: make the secret context, keep it, seal it to every other party."""
        from mpctf.privacy import he
        from mpctf.privacy.crypto import seal

        params = self._he_params()
        secret = he.create_secret_context(params)
        self._ckks = he.CkksParty(secret, params)
        blobs = {"public_context": he.public_context(secret)}
        for party, public in rounds.request_blobs(task).items():
            if party != self.party:
                blobs[f"sealed/{party}"] = seal(public, secret, _HE_AAD + party.encode())
        return rounds.reply(task.instructions["op"], blobs)

    def _he_install(self, task: RoundTask) -> bytes:
        from mpctf.privacy import he
        from mpctf.privacy.crypto import open_sealed

        if self._he_key is None:
            raise RuntimeError(f"party {self.party!r} was sent a CKKS context before its key exchange")
        sealed = rounds.request_blobs(task)["sealed"]
        secret = open_sealed(self._he_key, sealed, _HE_AAD + self.party.encode())
        self._ckks = he.CkksParty(secret, self._he_params())
        self._he_key = None
        return rounds.reply(task.instructions["op"])

    def _he_decrypt(self, task: RoundTask) -> bytes:
        """Decrypt the round's aggregate (never a single party's ciphertext: the server sends only sums)."""
        from mpctf.privacy.he import EncryptedUpdate

        if self._ckks is None:
            raise RuntimeError(f"party {self.party!r} holds no CKKS context")
        aggregate = EncryptedUpdate.from_bytes(rounds.request_blobs(task)["aggregate"])
        return pack(self._ckks.decrypt(aggregate), {"kind": "privacy", "op": task.instructions["op"]})

    def _he_params(self) -> Any:
        params = self.config.homomorphic_encryption
        if params is None:
            raise RuntimeError(f"party {self.party!r}: homomorphic encryption is off in this party's config")
        return params
