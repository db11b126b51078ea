"""Checking a batch of cover requests sent as JSON (the HTTP API's ``/v1/covers/batch``).

    from kie_covers.core.cover_items import check_batch

    checked = check_batch({"items": [{"taskId": "a", "callBackUrl": "https://x/cb"}]},
                          max_items=1000)
    checked.rows      # [(0, {"taskId": "a", "callBackUrl": "https://x/cb", ...})]
    checked.errors    # [] or FieldError(index=..., field=..., rule=..., message=...)

Pure: nothing here touches Redis or Celery. The body is an object (not a bare
array, so options can sit beside the items)::

    {"items": [{"taskId": ..., "callBackUrl": ..., "priority"?: ..., "tenant"?: ...}],
     "priority"?: "bulk", "tenant"?: "acme", "skipBad"?: false}

``priority`` and ``tenant`` at the top are every item's defaults (an item's own
win); ``priority`` defaults to ``bulk``, as for batches from a file. Each item is
checked by `validate_cover_request`, as `enqueue_cover` checks it; a music task id
given twice is an error of the later item (``rule: duplicate``), as in batch files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from marshmallow import RAISE, Schema, fields

from kie_covers.core.errors import InvalidPayload
from kie_covers.core.problems import FieldError, field_errors
from kie_covers.core.schemas import BULK, validate_cover_request, validate_lane, validate_with

#: The priority a batch's items get unless the batch or the item says otherwise.
BATCH_DEFAULT_PRIORITY = BULK


class BatchEnvelopeSchema(Schema):
    """The batch body's own keys: ``items`` (required, a list), ``skipBad`` (a JSON
    boolean), and the items' defaults (checked with the items' own rules)."""

    class Meta:
        unknown = RAISE

    items = fields.List(fields.Raw(allow_none=True), required=True)
    skipBad = fields.Boolean(load_default=False, truthy={True}, falsy={False})
    priority = fields.Raw(load_default=BATCH_DEFAULT_PRIORITY)
    tenant = fields.Raw(load_default=None, allow_none=True)


@dataclass
class CheckedBatch:
    """What `check_batch` found.

    Attributes:
        rows: (index, validated request) of every valid item, in order.
        errors: every broken rule: of the body itself (``index`` None) or of an item.
        skip_bad: the batch asked to queue its valid items even when some are bad.
    """

    rows: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)
    skip_bad: bool = False

    @property
    def refused_whole(self) -> bool:
        """True when nothing may be queued: the body itself is wrong, or an item is and
        ``skipBad`` is false."""
        body_wrong = any(error.index is None for error in self.errors)
        return body_wrong or (bool(self.errors) and not self.skip_bad)


def check_batch(body: Any, max_items: int) -> CheckedBatch:
    """Check a batch body (see the module docstring); never raises for bad input.

    Args:
        body: the decoded JSON body.
        max_items: most items allowed (COVERS_API_MAX_BATCH); more is an error of
            ``items`` (``rule: max_items``) and no item is checked.
    """
    try:
        envelope = validate_with(BatchEnvelopeSchema(), body, "cover batch")
    except InvalidPayload as invalid:
        return CheckedBatch(errors=field_errors(invalid.fields))
    items: list[Any] = envelope["items"]
    checked = CheckedBatch(skip_bad=envelope["skipBad"])
    if len(items) > max_items:
        checked.errors.append(FieldError(
            "items", "max_items", f"{len(items)} items, more than {max_items}; split the batch"))
        return checked
    defaults = _defaults(envelope, checked)
    if checked.errors:
        return checked
    first_index: dict[str, int] = {}  # music task id -> the item that first named it
    for index, item in enumerate(items):
        row = _check_item(index, item, defaults)
        if isinstance(row, list):
            checked.errors.extend(row)
        elif row["taskId"] in first_index:
            checked.errors.append(FieldError(
                "taskId", "duplicate", f"duplicate of item {first_index[row['taskId']]}", index))
        else:
            first_index[row["taskId"]] = index
            checked.rows.append((index, row))
    return checked


def _defaults(envelope: Mapping[str, Any], checked: CheckedBatch) -> dict[str, Any]:
    """The items' defaults, checked once (errors, without an index, go to `checked`)."""
    try:
        priority, tenant = validate_lane(envelope["priority"], envelope["tenant"])
    except InvalidPayload as invalid:
        checked.errors.extend(field_errors(invalid.fields))
        return {}
    return {"priority": priority} if tenant is None else {"priority": priority,
                                                           "tenant": tenant}


def _check_item(index: int, item: Any, defaults: Mapping[str, Any]
                ) -> dict[str, Any] | list[FieldError]:
    if not isinstance(item, Mapping):
        return [FieldError("", "type", "must be an object like "
                           '{"taskId": ..., "callBackUrl": ...}', index)]
    try:
        return validate_cover_request({**defaults, **item})
    except InvalidPayload as invalid:
        return field_errors(invalid.fields, index)
