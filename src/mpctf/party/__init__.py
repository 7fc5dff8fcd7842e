"""The party side: local training on the party's own data, in a long-lived process."""
