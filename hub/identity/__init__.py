"""Identities: people (users, sessions, login throttle), API tokens, and agents (enrollment, broker
accounts). Secrets are created here and only their hashes are stored."""
