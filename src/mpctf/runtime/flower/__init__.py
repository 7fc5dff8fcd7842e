"""The Flower runtime: MPCTF's tasks and replies carried by Flower's deployment engine (SuperLink + SuperNodes).

Every ``flwr`` import of the project lives under this package, because Flower's flags, config locations and wire
protocol change every few releases. ``protocol`` and ``commands`` import no ``flwr`` so that the launcher can
build command lines without loading Flower; ``wire``, ``backend``, ``clientapp`` and ``serverapp`` run inside
Flower's processes.
"""
