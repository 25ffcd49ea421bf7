"""Studies: each a client of the one training loop (attnzoo.train); see common.py."""
