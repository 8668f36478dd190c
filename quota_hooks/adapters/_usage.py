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


def _modalities(details: Any) -> dict[str, Any] | None:
    """Gemini's token details by modality (``[{"modality": "IMAGE", "token_count": 1290}]``,
    ``tokenCount`` in its JSON) as ``{"image_tokens": 1290}``; None for another shape.
    Counts of one modality add up; an odd value passes through, for the usage rule to judge."""
    if not isinstance(details, (list, tuple)):
        return None
    counts: dict[str, Any] = {}
    for item in details:
        if not isinstance(item, Mapping) or not isinstance(item.get("modality"), str):
            continue
        key = item["modality"].strip().lower() + "_tokens"
        count = item.get("token_count", item.get("tokenCount"))
        if key not in counts or (_whole(counts[key]) and not _whole(count)):
            counts[key] = count
        elif _whole(counts[key]):
            counts[key] += count
    return counts


def _whole(value: Any) -> bool:
    return type(value) is int and value >= 0


def _details(usage: Mapping[str, Any], *keys: str) -> Mapping[str, Any] | None:
    """The first detail object of ``keys`` in ``usage``: a mapping as OpenAI sends it, or
    Gemini's list by modality, as a mapping."""
    for key in keys:
        value = usage.get(key)
        if isinstance(value, Mapping) and value:
            return value
        by_modality = _modalities(value)
        if by_modality:
            return by_modality
    return None


def usage_fields(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Token fields (:data:`~quota_hooks.usage.TOKEN_FIELDS` and ``total_tokens``) from any
    OpenAI-shaped usage object (chat, responses, embeddings, images, transcriptions, runs), or
    ``audio_seconds`` for a duration. Values pass through as sent, ``None`` where the provider
    sent null or nothing: :func:`~quota_hooks.usage.reported_usage` decides what to trust.

    Image tokens are kept apart (``image_input_tokens``, ``image_output_tokens``: parts of
    the input and output tokens), from OpenAI's ``input_tokens_details`` /
    ``output_tokens_details`` (gpt-image-1) and the chat form's ``prompt_tokens_details`` /
    ``completion_tokens_details`` (Gemini's image models through litellm or an
    OpenAI-compatible endpoint, also as Gemini's list by modality): image tokens cost far
    more than text tokens."""
    if usage.get("type") == "duration":
        seconds = usage.get("seconds")
        return {"audio_seconds": seconds if seconds is not None else 0.0}
    if "prompt_tokens" in usage or "completion_tokens" in usage:  # chat, completions, runs
        inputs_key, outputs_key = "prompt_tokens", "completion_tokens"
        inputs = _details(usage, "prompt_tokens_details")
        outputs = _details(usage, "completion_tokens_details")
    else:  # responses, images, transcriptions
        inputs_key, outputs_key = "input_tokens", "output_tokens"
        inputs = _details(usage, "input_tokens_details", "input_token_details")
        outputs = _details(usage, "output_tokens_details", "output_token_details")
    fields: dict[str, Any] = {
        "input_tokens": usage.get(inputs_key),
        "output_tokens": usage.get(outputs_key),
        "total_tokens": usage.get("total_tokens"),
    }
    if isinstance(inputs, Mapping):
        fields["cached_input_tokens"] = inputs.get("cached_tokens")
        write = inputs.get("cache_write_tokens")
        fields["cache_write_tokens"] = (
            write if write is not None else inputs.get("cache_creation_tokens")
        )
        fields["audio_input_tokens"] = inputs.get("audio_tokens")
        fields["image_input_tokens"] = inputs.get("image_tokens")
    # Anthropic's cache counts, as litellm passes them on (its prompt_tokens include both).
    if fields.get("cache_write_tokens") is None and usage.get(
            "cache_creation_input_tokens") is not None:
        fields["cache_write_tokens"] = usage.get("cache_creation_input_tokens")
    if fields.get("cached_input_tokens") is None and usage.get(
            "cache_read_input_tokens") is not None:
        fields["cached_input_tokens"] = usage.get("cache_read_input_tokens")
    creation = usage.get("cache_creation")
    if isinstance(creation, Mapping) and creation.get("ephemeral_1h_input_tokens") is not None:
        fields["cache_write_1h_tokens"] = creation.get("ephemeral_1h_input_tokens")
    if isinstance(outputs, Mapping):
        fields["reasoning_tokens"] = outputs.get("reasoning_tokens")
        fields["audio_output_tokens"] = outputs.get("audio_tokens")
        fields["image_output_tokens"] = outputs.get("image_tokens")
    return fields


