"""Privacy and security building blocks; each is pure (no files, sockets or processes) and documented in
``docs/privacy.md`` with its threat model and how a round uses it.

- :mod:`~mpctf.privacy.dp`: clipping and Gaussian noise of DP-FedAvg (central or distributed);
- :mod:`~mpctf.privacy.adaptive_clip`: quantile-tracking clip norm;
- :mod:`~mpctf.privacy.accountant`: the client-level (ε, δ) ledger (``dp_accounting``);
- :mod:`~mpctf.privacy.dpsgd`: sample-level DP-SGD inside a party (Opacus);
- :mod:`~mpctf.privacy.secagg`: secure aggregation (SecAgg / SecAgg+);
- :mod:`~mpctf.privacy.he`: CKKS homomorphic aggregation (TenSEAL);
- :mod:`~mpctf.privacy.stages`: each mechanism as a stage with its party and server halves, registered by its
  ``privacy:`` key;
- :mod:`~mpctf.privacy.config` and :mod:`~mpctf.privacy.compat`: the config section and what cannot combine.

Submodules are imported on demand: Opacus and dp_accounting take seconds to import.
"""
