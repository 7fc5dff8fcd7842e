"""CKKS parameters, apart from :mod:`mpctf.privacy.he` so the config schema validates them without TenSEAL."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Largest total coefficient modulus (bits) with 128-bit security, HomomorphicEncryption.org standard (2018).
_MAX_MODULUS_BITS = {4096: 109, 8192: 218, 16384: 438, 32768: 881}


class CkksParams(BaseModel):
    """CKKS parameters: ring degree (``slots = degree / 2``), modulus chain, and fixed-point scale."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = Field(40, ge=20, le=60)

    @model_validator(mode="after")
    def _check(self) -> CkksParams:
        limit = _MAX_MODULUS_BITS.get(self.poly_modulus_degree)
        if limit is None:
            raise ValueError(
                f"`poly_modulus_degree` must be one of {sorted(_MAX_MODULUS_BITS)}, "
                f"got {self.poly_modulus_degree}"
            )
        if sum(self.coeff_mod_bit_sizes) > limit:
            raise ValueError(
                f"`coeff_mod_bit_sizes` sum to {sum(self.coeff_mod_bit_sizes)} bits, above {limit} "
                f"(128-bit security at degree {self.poly_modulus_degree})"
            )
        if len(self.coeff_mod_bit_sizes) < 3:
            raise ValueError(
                "`coeff_mod_bit_sizes` needs at least 3 primes (one level for the plaintext weights)"
            )
        return self

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def max_bytes_per_value(self) -> int:
        """An upper bound on the serialized size of one encrypted value: a fresh ciphertext is two polynomials of
        ``degree`` 8-byte coefficients per prime and holds ``degree / 2`` values (TenSEAL's compression only
        makes it smaller: 83 bytes measured at the defaults, against this bound's 128)."""
        return 2 * 8 * len(self.coeff_mod_bit_sizes) * 2
