"""Reading one policy file into a mapping, and the problems a file can have.

A problem names the file, the field (or the line) and the reason, so an operator knows what to
write instead. YAML itself lets a mapping name a key twice and keeps the last silently, which in
a policy file would drop half of a section without a word (`memory:` written twice, say); here
that is a problem like any other. Every key is read as the name it spells (a model alias `no:` is
'no', not false).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class PolicyProblem:
    """Why one policy file (or one field of it) was refused."""

    file: str
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.reason}"


class PolicyFileError(Exception):
    """One or more policy files are invalid."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


# Fields a policy file could once set and that no longer exist, with what to do instead: a file
# that still sets one is refused with this reason rather than a bare 'unknown field'.
REMOVED_FIELDS = {
    "sanitizer.w_clf": "removed: there is no classifier to weigh; delete the line",
    "sanitizer.mad_k": "removed: there is no outlier detection it tuned; delete the line",
    "guard.llm_consensus": "removed: no LLM consensus runs at read time; delete the line "
    "(sanitizer.judge_model asks an LLM about uncertain memories at write time)",
    "guard.model": "removed together with guard.llm_consensus; delete the line",
}


class _PolicyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names one key twice."""


def _mapping_without_repeats(loader: _PolicyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden
            continue
        if isinstance(key_node, yaml.ScalarNode):
            # Every key of a policy is a name (a field, a model alias, a header): `no:` or
            # `1.5:` is the alias it spells, not YAML's false or a number.
            key_node.tag = "tag:yaml.org,2002:str"
        key = loader.construct_object(key_node)
        try:
            line = first_line.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # an unhashable key: construct_mapping says so
            continue
        if line != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(
                problem=f"'{key}' is written twice in one mapping (first on line {line}), and "
                "YAML would keep only the last; merge the two into one",
                problem_mark=key_node.start_mark,
            )
    return loader.construct_mapping(node)


_PolicyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _mapping_without_repeats,
)


def _utf8_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        reason = (
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8 "
            "(an editor's 'encoding' setting, or iconv -f latin1 -t utf-8)"
        )
        raise PolicyFileError([PolicyProblem(path.name, f"line {line}", reason)]) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """A policy file's mapping; empty files are `{}`. Raises PolicyFileError with the line."""
    try:
        data = yaml.load(_utf8_text(path), Loader=_PolicyLoader)  # noqa: S506
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = f"not valid YAML: {getattr(exc, 'problem', None) or exc}"
        raise PolicyFileError([PolicyProblem(path.name, where, reason)]) from None
    except OSError as exc:
        raise PolicyFileError([PolicyProblem(path.name, "", f"cannot read: {exc}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PolicyFileError(
            [PolicyProblem(path.name, "", "must be a mapping of fields (tenant, keys, models…)")]
        )
    return data
