"""Secure aggregation (Bonawitz et al. 2017; SecAgg+ of Bell et al. 2020): the server learns only the sum.

Pure state machines: :class:`SecAggParty` and :class:`SecAggServer` exchange dicts that
:func:`~mpctf.privacy.secagg.wire.dumps` turns into bytes; :func:`secure_sum` runs a whole round in memory.
"""

from mpctf.privacy.secagg.params import SecAggParams
from mpctf.privacy.secagg.party import SecAggParty
from mpctf.privacy.secagg.server import SecAggServer
from mpctf.privacy.secagg.simulate import SecAggRun, secure_sum

__all__ = ["SecAggParams", "SecAggParty", "SecAggRun", "SecAggServer", "secure_sum"]
