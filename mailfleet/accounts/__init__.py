"""Accounts: the mail database's schema (versioned migrations) and its domain/user/alias
operations, always with parameterised SQL."""
