"""The server side: the round loop, evaluation, checkpoints."""
