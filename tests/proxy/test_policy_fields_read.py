"""Every policy field is read by the code: a knob an operator can set must change something."""

from __future__ import annotations

import ast
from pathlib import Path

from pydantic import BaseModel

import proxy
from proxy.policy import ModelRoute, Policy


def _read_attributes() -> set[str]:
    """Attribute names the product code reads off an object other than `self`/`cls`, outside
    the policy module itself: a policy field is read as `policy.memory.workers` or
    `settings.alpha_case`, never through its own class."""
    names = set()
    root = Path(proxy.__file__).parent
    for path in root.rglob("*.py"):
        if path == root / "policy.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    names.add(node.attr)
    return names


def _field_names(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    fields = []
    for name, info in model.model_fields.items():
        fields.append((prefix + (info.alias or name), name))
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            fields += _field_names(info.annotation, prefix + (info.alias or name) + ".")
    return fields


def test_every_policy_field_is_read_by_the_code() -> None:
    # A knob an operator can set must change something: each field of the policy model (and
    # of a model route) is read as an attribute somewhere in proxy/ outside proxy/policy.py.
    read = _read_attributes()
    fields = _field_names(Policy) + _field_names(ModelRoute, "models.<alias>.")
    unread = [path for path, name in fields if name not in read]
    assert unread == [], f"policy fields no code reads: {', '.join(unread)}"
