"""``mpctf tune``: federated hyperparameter search by successive halving, scored by federated validation."""
