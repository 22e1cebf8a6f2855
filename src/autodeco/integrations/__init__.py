"""Integrations with other engines. Each sits beside autodeco's own engine, not inside it, and
imports only the torch-level modules it needs (heads, sampling, configuration)."""
