"""Thin adapters from LLM frameworks to the core.

Each adapter imports its framework at its top, so importing ``quota_hooks`` never imports
openai, litellm or langchain. They live here, not in a top-level ``adapters`` package, because
``adapters`` is already a widely installed distribution on PyPI: a second top-level
``adapters`` would overwrite it.
"""
