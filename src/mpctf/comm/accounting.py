"""Byte accounting for codecs. The bytes actually sent are ``len(mpctf.messages.pack(...))``, measured by the
caller; these helpers give the reference points that number is compared with."""

from __future__ import annotations

from mpctf.messages import NamedTensors


def fp32_bytes(tensors: NamedTensors) -> int:
    """Bytes the tensors' values would take as float32, whatever their dtype: the baseline of a ratio."""
    return 4 * sum(t.numel() for t in tensors.values())


def tensor_bytes(tensors: NamedTensors) -> int:
    """Bytes of the tensors' data in their own dtypes, without any container overhead."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


#: A plain reply holds at most the update (the state's size, dense, fp32 or smaller; masked integers) and an
#: algorithm's extra of the same size (SCAFFOLD's control delta): 8 bytes per value of the state, doubled for
#: headroom, plus a header within the slack. Anything larger is refused (unread, where the transport allows).
REPLY_BYTES_PER_VALUE = 16
REPLY_SLACK_BYTES = 16 * 2**20


def reply_limit(num_values: int, bytes_per_value: int = REPLY_BYTES_PER_VALUE) -> int:
    """The largest reply a party may send for a state of ``num_values`` values (encrypted replies pass the
    ciphertext's own ``bytes_per_value``)."""
    return max(bytes_per_value, REPLY_BYTES_PER_VALUE) * num_values + REPLY_SLACK_BYTES
