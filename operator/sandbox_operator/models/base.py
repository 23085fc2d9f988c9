"""The base of every model that is part of the CRD schema."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from sandbox_operator.models.cel import CelRule, cel_json_schema_extra


class CrdModel(BaseModel):
    """Frozen, camelCase, closed (unknown fields are errors; the API server prunes them anyway) and strict:
    JSON types as the CRD declares them, no "20" for 20. ``cel_rules`` become the schema's CEL validations."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True,
                              use_attribute_docstrings=True, json_schema_extra=cel_json_schema_extra, strict=True)
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()
