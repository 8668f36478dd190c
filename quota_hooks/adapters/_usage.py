"""Usage shapes shared by the adapters (no framework imports)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["as_mapping", "usage_fields"]


def as_mapping(usage: Any) -> Mapping[str, Any] | None:
    """A usage object (dict, pydantic model or plain object) as a mapping, or None."""
    if usage is None:
        return None
    if isinstance(usage, Mapping):
        return usage
    dump = getattr(usage, "model_dump", None)
    if callable(dump):
        data = dump()
        return data if isinstance(data, Mapping) else None
    fields = getattr(usage, "__dict__", None)
    return fields if isinstance(fields, Mapping) else None


def _int(value: Any) -> Any:
    return value if value is not None else 0


def usage_fields(usage: Mapping[str, Any]) -> dict[str, Any]:
    """UsageRecord token fields from any OpenAI usage object (chat, responses, embeddings,
    images, transcriptions, runs). Numbers pass through unchanged: the record validates them."""
    fields: dict[str, Any] = {}
    if usage.get("type") == "duration":
        fields["audio_seconds"] = usage.get("seconds") or 0.0
        return fields
    if "prompt_tokens" in usage or "completion_tokens" in usage:  # chat, completions, runs
        fields["input_tokens"] = _int(usage.get("prompt_tokens"))
        fields["output_tokens"] = _int(usage.get("completion_tokens"))
        inputs = usage.get("prompt_tokens_details") or {}
        outputs = usage.get("completion_tokens_details") or {}
    else:  # responses, images, transcriptions
        fields["input_tokens"] = _int(usage.get("input_tokens"))
        fields["output_tokens"] = _int(usage.get("output_tokens"))
        inputs = usage.get("input_tokens_details") or usage.get("input_token_details") or {}
        outputs = usage.get("output_tokens_details") or {}
    if usage.get("total_tokens") is not None:
        fields["total_tokens"] = usage["total_tokens"]
    if isinstance(inputs, Mapping):
        fields["cached_input_tokens"] = _int(inputs.get("cached_tokens"))
        fields["cache_write_tokens"] = _int(
            inputs.get("cache_write_tokens") or inputs.get("cache_creation_tokens")
        )
        fields["audio_input_tokens"] = _int(inputs.get("audio_tokens"))
    if isinstance(outputs, Mapping):
        fields["reasoning_tokens"] = _int(outputs.get("reasoning_tokens"))
        fields["audio_output_tokens"] = _int(outputs.get("audio_tokens"))
    return fields


