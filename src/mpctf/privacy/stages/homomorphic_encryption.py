"""CKKS homomorphic encryption as a privacy stage: the server adds ciphertexts it cannot decrypt.

At run start the first party (by name) makes the secret context and seals it to every other party's X25519 key;
the server keeps only the public context. Each round every party encrypts its update, the server adds the
ciphertexts, and the first party that answers decrypts the sum for it: the server then holds the round's sum in
the clear, as with secure aggregation. Every party holds the secret key and decrypts whatever it is sent, so the
protection against the server rests on the server sending only sums (``docs/privacy.md``, threat model).
"""

from __future__ import annotations

from typing import Any

from mpctf.errors import FederationError, UpdateRejected
from mpctf.messages import NamedTensors, RoundTask, Update, pack, unpack
from mpctf.privacy import rounds
from mpctf.privacy.ckks_params import CkksParams
from mpctf.privacy.stages.base import (
    STAGES,
    Exchange,
    MechanismTraits,
    PartyContext,
    PartyStage,
    PrivacyStage,
    RoundState,
    check_hidden_layout,
)

#: Associated data binding a sealed CKKS context to its recipient.
_AAD = b"mpctf ckks secret context|"
_ENCRYPTED = "homomorphic_encryption.encrypted"


class CkksPartyStage(PartyStage):
    """A party's X25519 key until the secret context arrives, then the context."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._key: Any = None  # X25519PrivateKey awaiting the sealed context
        self._ckks: Any = None  # CkksParty once the context is installed

    def protect(self, tensors: NamedTensors, instructions: dict[str, Any], ctx: PartyContext) -> NamedTensors:
        if self._ckks is None:
            raise RuntimeError(f"party {self.name!r} holds no CKKS context (it joined after the key setup)")
        encrypted = self._ckks.encrypt(tensors)
        ctx.header["layout"] = encrypted.layout.to_json()
        return rounds.ckks_tensors(encrypted.chunks)

    def handle(self, task: RoundTask) -> bytes:
        op = task.instructions["op"]
        handler = {
            rounds.HE_KEY: self._key_reply,
            rounds.HE_CONTEXT: self._make_context,
            rounds.HE_INSTALL: self._install,
            rounds.HE_DECRYPT: self._decrypt,
        }[op]
        return handler(task)

    def _key_reply(self, task: RoundTask) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        from mpctf.privacy.crypto import public_bytes

        self._key = X25519PrivateKey.generate()
        return rounds.reply(task.instructions["op"], {"public": public_bytes(self._key)})

    def _make_context(self, task: RoundTask) -> bytes:
        """As the key holder: make the secret context, keep it, seal it to every other party."""
        from mpctf.privacy import he
        from mpctf.privacy.crypto import seal

        params = CkksParams.model_validate(task.instructions["ckks"])
        secret = he.create_secret_context(params)
        self._ckks = he.CkksParty(secret, params)
        blobs = {"public_context": he.public_context(secret)}
        for party, public in rounds.request_blobs(task).items():
            if party != self.name:
                blobs[f"sealed/{party}"] = seal(public, secret, _AAD + party.encode())
        return rounds.reply(task.instructions["op"], blobs)

    def _install(self, task: RoundTask) -> bytes:
        from mpctf.privacy import he
        from mpctf.privacy.crypto import open_sealed

        if self._key is None:
            raise RuntimeError(f"party {self.name!r} was sent a CKKS context before its key exchange")
        secret = open_sealed(self._key, rounds.request_blobs(task)["sealed"], _AAD + self.name.encode())
        self._ckks = he.CkksParty(secret, CkksParams.model_validate(task.instructions["ckks"]))
        self._key = None
        return rounds.reply(task.instructions["op"])

    def _decrypt(self, task: RoundTask) -> bytes:
        from mpctf.privacy.he import EncryptedUpdate

        if self._ckks is None:
            raise RuntimeError(f"party {self.name!r} holds no CKKS context")
        aggregate = EncryptedUpdate.from_bytes(rounds.request_blobs(task)["aggregate"])
        return pack(self._ckks.decrypt(aggregate), {"kind": "privacy", "op": task.instructions["op"]})


@STAGES.register("homomorphic_encryption")
class HomomorphicEncryptionStage(PrivacyStage):
    traits = MechanismTraits("homomorphic encryption", hides_updates=True)
    order = 20
    ops = frozenset({rounds.HE_KEY, rounds.HE_CONTEXT, rounds.HE_INSTALL, rounds.HE_DECRYPT})
    params: CkksParams

    def __init__(self, params: CkksParams, run: Any) -> None:
        super().__init__(params, run)
        self.public_context: bytes | None = None

    @classmethod
    def party_stage(cls, name: str, own: Any | None) -> PartyStage:
        return CkksPartyStage(name)

    def setup(self, exchange: Exchange, parties: list[str]) -> dict[str, Any]:
        keys = exchange({p: rounds.request(rounds.HE_KEY, 0) for p in parties})
        publics = {p: rounds.read_reply(r, rounds.HE_KEY)[0]["public"] for p, r in keys.items()}
        if not publics:
            raise FederationError("no party answered the CKKS key exchange")
        holder, params = min(publics), self.params.model_dump()
        reply = exchange({holder: rounds.request(rounds.HE_CONTEXT, 0, publics, ckks=params)})
        if holder not in reply:
            raise FederationError(f"party {holder!r} could not create the CKKS context")
        blobs, _ = rounds.read_reply(reply[holder], rounds.HE_CONTEXT)
        self.public_context = blobs["public_context"]
        installs = {
            p: rounds.request(rounds.HE_INSTALL, 0, {"sealed": blobs[f"sealed/{p}"]}, ckks=params)
            for p in publics
            if p != holder
        }
        installed = exchange(installs)
        return {
            "he_key_holder": holder,
            "he_parties": sorted([holder, *installed]),
            "he_public_context_bytes": len(self.public_context),
        }

    def begin_round(self, state: RoundState, exchange: Exchange) -> None:
        state.scratch[_ENCRYPTED] = []
        state.instructions[self.registered_name] = {}

    def receive(self, state: RoundState, update: Update, reference: NamedTensors) -> bool:
        from mpctf.privacy.he import EncryptedUpdate

        layout = check_hidden_layout(update, reference, state.extra_coordinates)
        if len(update.tensors) != -(-layout.numel // self.params.slots):
            raise UpdateRejected(
                f"party {update.party!r}: {len(update.tensors)} ciphertexts do not fit its layout"
            )
        state.scratch[_ENCRYPTED].append(EncryptedUpdate(layout, rounds.ckks_chunks(update.tensors)))
        return True

    def finish(self, state: RoundState, total: NamedTensors, exchange: Exchange) -> NamedTensors:
        """``Σ_k c_k`` in ciphertext, decrypted by the first party that can."""
        from mpctf.privacy.he import aggregate_encrypted

        if self.public_context is None:
            raise FederationError("no CKKS public context: the key setup did not run")
        aggregate = aggregate_encrypted(self.public_context, state.scratch[_ENCRYPTED]).to_bytes()
        for party in sorted(state.weights):
            task = rounds.request(rounds.HE_DECRYPT, state.round, {"aggregate": aggregate})
            reply = exchange({party: task}).get(party)
            if reply is not None:
                tensors, header = unpack(reply)
                if header.get("op") == rounds.HE_DECRYPT:
                    state.metrics["he_decrypted_by"] = party
                    return tensors
        raise FederationError(f"round {state.round}: no party could decrypt the aggregate")
