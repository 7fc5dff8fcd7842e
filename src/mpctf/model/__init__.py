"""Model loading and the trainable state (what a party trains and ships)."""
