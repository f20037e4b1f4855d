"""One class of an answer's top-k: the type the inference core builds and the client returns.

Shared (a top-level module) because both sides mean the same three numbers by it, and the
client may not import the core (tests/test_architecture.py). ``service.http.schema.ClassScore``
is the HTTP body's pydantic model of the same fields, kept for the OpenAPI document.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassScore:
    label: str
    index: int  # in the model's class list
    probability: float
