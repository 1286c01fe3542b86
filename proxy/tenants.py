"""Tenants from policy files: loading, validation, key look-up and hot reload.

`policies/default.yaml` is merged under every `policies/<tenant>.yaml`. Besides the schema, every
model a tenant names is checked as far as it can be without calling it: a provider litellm does
not know is a problem (no call could work); a provider key whose environment variable is unset
is a warning (the server may get it later), and so is a memory budget smaller than a block with
one memory (the tenant serves, only without memory in its calls). At start-up every problem is
reported once, with file, field and reason, by whoever loads (`PolicyRegistry.load` raises
them, and its `warnings` say the rest); while running, a changed file is re-read, its problems
and warnings are logged, and an invalid edit leaves the last good version of that tenant serving.

Keys published with the project (the demo tenant's) are for trying it on one machine: a server
that listens beyond loopback refuses a policy listing one, as it refuses any invalid policy.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from proxy.memory.budget import unmet_budget_minimum
from proxy.policy import TENANT_ID, ModelRoute, Policy, deep_merge
from proxy.policy_files import REMOVED_FIELDS, read_yaml

# PolicyFileError and PolicyProblem are re-exported: callers import them from here.
from proxy.policy_files import PolicyFileError as PolicyFileError
from proxy.policy_files import PolicyProblem as PolicyProblem
from proxy.upstreams.routing import key_variable, route_problem

log = logging.getLogger("memento.policies")

DEFAULTS_FILE = "default.yaml"
POLICY_SUFFIXES = (".yaml", ".yml")
# Printed in this repository (policies/demo.yaml, the README): anyone can send them.
PUBLISHED_KEYS = ("memento-demo-key",)


def hash_key(key: str) -> str:
    """The form a proxy key takes in a policy file: `sha256:<hex digest>`."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def is_loopback(host: str) -> bool:
    """Whether a server bound to `host` can be reached from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def refused_keys(host: str) -> dict[str, str]:
    """The published keys (hash → key) a server bound to `host` must refuse: all of them
    unless it listens on loopback only."""
    return {} if is_loopback(host) else {hash_key(key): key for key in PUBLISHED_KEYS}


def _validation_problems(file: str, error: ValidationError) -> list[PolicyProblem]:
    problems = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"])
        reason = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            reason = REMOVED_FIELDS.get(
                loc, "unknown field (check the spelling against policies/README.md)"
            )
        problems.append(PolicyProblem(file, loc, reason))
    return problems


def validate_defaults(path: Path) -> dict[str, Any]:
    """default.yaml as a mapping, checked to be a valid partial policy."""
    data = read_yaml(path)
    for reserved in ("tenant", "keys"):
        if reserved in data:
            raise PolicyFileError(
                [PolicyProblem(path.name, reserved, "belongs in a tenant file, not in defaults")]
            )
    try:
        Policy.model_validate(deep_merge(data, {"tenant": "default-check"}))
    except ValidationError as exc:
        raise PolicyFileError(_validation_problems(path.name, exc)) from None
    return data


def _tenant_mismatch(tenant: object, path: Path) -> str:
    if not isinstance(tenant, str):  # tenant: 123 in 123.yaml is the number 123 to YAML
        kind = "true/false" if isinstance(tenant, bool) else "a number"
        return (
            f"YAML reads {tenant!r} as {kind}, not a name; write it in "
            f"quotes, tenant: '{path.stem}', or leave tenant out (the file name gives it)"
        )
    return (
        f"'{tenant}' does not match the file name; name the file {tenant}{path.suffix} "
        f"or set tenant: {path.stem}"
    )


def load_policy(path: Path, defaults: dict[str, Any]) -> Policy:
    """One tenant's policy: its file merged over the defaults, validated."""
    data = read_yaml(path)
    tenant = data.setdefault("tenant", path.stem)
    if tenant != path.stem:
        raise PolicyFileError([PolicyProblem(path.name, "tenant", _tenant_mismatch(tenant, path))])
    if not TENANT_ID.match(path.stem):
        named = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower()).strip("-_") or "acme"
        reason = (
            "the file name is the tenant id, which must be lowercase letters, digits, '-' or '_' "
            f"(at most 63 characters); rename the file, e.g. {named[:63]}{path.suffix}"
        )
        raise PolicyFileError([PolicyProblem(path.name, "", reason)])
    try:
        policy = Policy.model_validate(deep_merge(defaults, data))
    except ValidationError as exc:
        raise PolicyFileError(_validation_problems(path.name, exc)) from None
    problems = [
        PolicyProblem(path.name, where, problem)
        for where, route in model_references(policy)
        if (problem := route_problem(route)) is not None
    ]
    if problems:
        raise PolicyFileError(problems)
    return policy


def model_references(policy: Policy) -> list[tuple[str, ModelRoute]]:
    """Every model the policy names, with its field: the routes, and the models the memory
    pipeline calls by alias or litellm string."""
    named = [(f"models.{alias}.model", route) for alias, route in policy.models.items()]
    for where, name in (
        ("memory.extraction.model", policy.memory.extraction.model),
        ("memory.consolidation.model", policy.memory.consolidation.model),
        ("sanitizer.judge_model", policy.sanitizer.judge_model),
    ):
        if name is not None and name not in policy.models:
            named.append((where, ModelRoute(model=name)))
    return named


def policy_warnings(file: str, policy: Policy) -> list[PolicyProblem]:
    """What may be wrong but leaves the tenant serving: no proxy keys, unset provider keys
    (which may be set by the time a call comes), and a memory budget too small to ever inject
    a memory."""
    warnings = []
    if not policy.keys:  # an empty file, or keys forgotten: no call can reach the tenant
        reason = (
            "no keys, so no client can call this tenant; list the hash of one "
            "(`memento-proxy keys new` makes a key and prints it)"
        )
        warnings.append(PolicyProblem(file, "keys", reason))
    budget = policy.memory.budget.max_tokens
    models = [route.model for route in policy.models.values()]
    minimum = unmet_budget_minimum(budget, models) if policy.memory.enabled else None
    if minimum is not None:
        reason = (
            f"{budget} tokens are fewer than a memory block with one short memory takes with "
            f"this tenant's models ({minimum}: the block's fence and preamble, a heading and "
            "the memory's line), so no memory of ordinary length is ever injected; set at "
            f"least {minimum} (or memory.default_mode: write, if learning without injecting "
            "is meant)"
        )
        warnings.append(PolicyProblem(file, "memory.budget.max_tokens", reason))
    for alias, route in policy.models.items():
        name = key_variable(route)
        if name is not None and not os.environ.get(name):
            reason = (
                f"the environment variable {name} is not set; calls to '{alias}' answer 500 "
                "upstream_misconfigured until the server runs with it"
            )
            warnings.append(PolicyProblem(file, f"models.{alias}.api_key", reason))
    return warnings


@dataclass(frozen=True)
class _Snapshot:
    """Everything a request reads, swapped in one assignment so readers never see a mix."""

    policies: dict[str, Policy] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)  # "sha256:…" → tenant


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


class PolicyRegistry:
    """The tenants of one policies directory, kept current while the server runs."""

    def __init__(self, directory: Path, *, refused_keys: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        self._refused_keys = dict(refused_keys or {})  # hash → the published key
        self._snapshot = _Snapshot()
        self._defaults: dict[str, Any] = {}
        self._stamps: dict[Path, tuple[int, int]] = {}  # of the files as last loaded
        self._seen: dict[Path, tuple[int, int]] = {}  # of the files at the last poll
        self._problems: dict[str, list[PolicyProblem]] = {}
        self._warnings: dict[str, list[PolicyProblem]] = {}
        self._loaded = False  # until then, problems and warnings go to the caller of load()

    @classmethod
    def load(
        cls, directory: Path, *, refused_keys: Mapping[str, str] | None = None
    ) -> PolicyRegistry:
        """Load every file; raise PolicyFileError listing all problems if any file is invalid.
        A policy listing one of `refused_keys` (hash → key, see `refused_keys()`) is invalid.

        Nothing is logged: the caller reports the problems raised and the `warnings` (each
        once); later reloads log their own.
        """
        registry = cls(directory, refused_keys=refused_keys)
        if not directory.is_dir():
            reason = (
                "is a file, not a directory: pass the directory that holds the <tenant>.yaml files"
                if directory.exists()
                else "policies directory does not exist"
            )
            raise PolicyFileError([PolicyProblem(str(directory), "", reason)])
        registry.refresh(settled_only=False)
        problems = registry.problems
        if problems:
            raise PolicyFileError(problems)
        if not registry._snapshot.policies:
            raise PolicyFileError(
                [PolicyProblem(str(directory), "", "no tenant policy files (<tenant>.yaml) found")]
            )
        registry._loaded = True
        return registry

    @property
    def problems(self) -> list[PolicyProblem]:
        return [p for file in sorted(self._problems) for p in self._problems[file]]

    @property
    def warnings(self) -> list[PolicyProblem]:
        """Of the files serving now: what may fail at call time (see `policy_warnings`)."""
        return [w for file in sorted(self._warnings) for w in self._warnings[file]]

    def tenants(self) -> list[str]:
        return sorted(self._snapshot.policies)

    def get(self, tenant: str) -> Policy | None:
        return self._snapshot.policies.get(tenant)

    def policy_for_key(self, key: str) -> Policy | None:
        """The policy of the tenant owning this proxy key, or None."""
        return self.policy_for_hash(hash_key(key))

    def policy_for_hash(self, key_hash: str) -> Policy | None:
        """The policy of the tenant owning the key of this hash (`hash_key`), or None."""
        tenant = self._snapshot.by_key.get(key_hash)
        return None if tenant is None else self._snapshot.policies.get(tenant)

    def _policy_files(self) -> list[Path]:
        return sorted(
            p
            for p in self.directory.iterdir()
            if p.suffix in POLICY_SUFFIXES and p.is_file() and not p.name.startswith(".")
        )

    def refresh(self, *, settled_only: bool = True) -> bool:
        """Re-read changed, new and removed files. Returns True when anything changed.

        A file that fails validation keeps its last good version (if any) and its problems are
        logged and kept in `problems` until a good edit replaces them. With `settled_only`, a
        file is read only once it looks the same as at the previous poll, and removed only once
        it was missing at two: an editor that rewrites a file in place leaves it half-written
        for a moment (and a half-written policy can be valid: a file cut after `tenant:` is a
        tenant without keys), one that deletes and writes it again leaves none.
        """
        try:
            files = {p: _stamp(p) for p in self._policy_files()}
        except OSError as exc:
            log.error("cannot list policies directory %s: %s", self.directory, exc)
            return False
        seen, self._seen = self._seen, files
        if settled_only:
            # An editor that saves by deleting and writing again leaves no file for a moment:
            # a file gone since the last poll is removed only if it is still gone at the next.
            vanished = {p: self._stamps[p] for p in self._stamps if p in seen and p not in files}
            files = {
                path: stamp if stamp == seen.get(path) else self._stamps[path]
                for path, stamp in files.items()
                if stamp == seen.get(path) or path in self._stamps
            } | vanished
        if files == self._stamps:
            return False
        changed = {p for p, s in files.items() if self._stamps.get(p) != s}
        removed = set(self._stamps) - set(files)
        self._stamps = files

        defaults_path = self.directory / DEFAULTS_FILE
        reload_all = defaults_path in changed or defaults_path in removed
        if defaults_path in changed:
            try:
                self._defaults = validate_defaults(defaults_path)
                self._problems.pop(DEFAULTS_FILE, None)
            except PolicyFileError as exc:
                self._report(DEFAULTS_FILE, exc.problems)
                reload_all = False  # the old defaults stay; tenants built on them stay too
        elif defaults_path in removed:
            self._defaults = {}
            self._problems.pop(DEFAULTS_FILE, None)

        tenant_files = [p for p in files if p.name != DEFAULTS_FILE]
        # A tenant is its file's stem: a change to acme.yml re-reads acme.yaml too.
        touched = {p.stem for p in changed | removed}
        to_load = [p for p in tenant_files if reload_all or p.stem in touched]
        # A file refused for another's sake (a key that tenant held) may load now: retried last,
        # after the changes that may have freed it.
        to_load += [p for p in tenant_files if p not in to_load and p.name in self._problems]
        policies = dict(self._snapshot.policies)
        for path in removed:
            if path.name != DEFAULTS_FILE:
                self._problems.pop(path.name, None)
                self._warnings.pop(path.name, None)
                if not any(p.stem == path.stem for p in tenant_files):
                    policies.pop(path.stem, None)
                    log.info("tenant %s removed (file deleted)", path.stem)
        clashing: dict[Path, Policy] = {}  # files refused so far only for a key another tenant has
        for path in to_load:
            if path.stem == Path(DEFAULTS_FILE).stem:  # default.yml: meant as the defaults
                reason = f"the defaults are read from {DEFAULTS_FILE} only; rename this file"
                self._report(path.name, [PolicyProblem(path.name, "", reason)])
                continue
            twins = [p.name for p in tenant_files if p.stem == path.stem and p != path]
            if twins:
                reason = (
                    f"tenant {path.stem} is also defined by {', '.join(twins)}; "
                    "keep one file per tenant and delete the other"
                )
                self._report(path.name, [PolicyProblem(path.name, "", reason)])
                continue
            try:
                policy = load_policy(path, self._defaults)
            except PolicyFileError as exc:
                self._report(path.name, exc.problems)
                continue
            problem = self._published_key(path, policy)
            if problem:
                self._report(path.name, [problem])
            elif self._key_clash(path.name, policy, policies):
                clashing[path] = policy
            else:
                self._accept(path, policy, policies)
        # A key moved from one tenant to another in one edit: the one receiving it may be read
        # before the one giving it up, so a clash is final only once nothing else loads.
        loaded_one = True
        while loaded_one:
            loaded_one = False
            for path in list(clashing):  # one at a time: two may want the same freed key
                if not self._key_clash(path.name, clashing[path], policies):
                    self._accept(path, clashing.pop(path), policies)
                    loaded_one = True
        for path, policy in clashing.items():
            if clash := self._key_clash(path.name, policy, policies):
                self._report(path.name, [clash])
        self._snapshot = _Snapshot(policies, self._index_keys(policies.values()))
        return True

    def _accept(self, path: Path, policy: Policy, policies: dict[str, Policy]) -> None:
        policies[policy.tenant] = policy
        self._problems.pop(path.name, None)
        self._warnings[path.name] = policy_warnings(path.name, policy)
        if self._loaded:
            log.info("tenant %s loaded from %s", policy.tenant, path.name)
            for warning in self._warnings[path.name]:
                log.warning("policy %s", warning)

    def _published_key(self, path: Path, policy: Policy) -> PolicyProblem | None:
        for hashed in policy.keys:
            key = self._refused_keys.get(hashed)
            if key is not None:
                return PolicyProblem(
                    path.name,
                    "keys",
                    f"lists {key}, a key published with this project that anyone can send; it "
                    "is accepted only by a server listening on loopback (127.0.0.1). Make a key "
                    "of your own with `memento-proxy keys new` and list its hash instead",
                )
        return None

    @staticmethod
    def _key_clash(file: str, policy: Policy, policies: dict[str, Policy]) -> PolicyProblem | None:
        for other in policies.values():
            if other.tenant != policy.tenant and set(other.keys) & set(policy.keys):
                return PolicyProblem(
                    file,
                    "keys",
                    f"a key is already used by tenant '{other.tenant}'; "
                    "every proxy key belongs to exactly one tenant",
                )
        return None

    @staticmethod
    def _index_keys(policies: Iterable[Policy]) -> dict[str, str]:
        return {key: policy.tenant for policy in policies for key in policy.keys}

    def _report(self, file: str, problems: list[PolicyProblem]) -> None:
        self._problems[file] = problems
        if not self._loaded:
            return
        serving = self._what_serves(file)
        for problem in problems:
            log.error("invalid policy %s (%s)", problem, serving)

    def _what_serves(self, file: str) -> str:
        """What serves while `file` is invalid, as the log line tells the operator."""
        if file == DEFAULTS_FILE:
            return "every tenant keeps the defaults it was loaded with"
        tenant = Path(file).stem  # a tenant file is named for its tenant (`load_policy`)
        if tenant in self._snapshot.policies:
            return "the last good version keeps serving"
        return f"tenant {tenant} is not served until the file is fixed"

    async def watch(self, interval_s: float) -> None:
        """Poll for changed files until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:
                log.exception("policy reload failed; the current policies keep serving")
