"""Policy directory -> PolicySpec, or every error as `file:line: message`.

Validation is two steps: the JSON Schema shipped beside this module (shapes, types,
unknown keys), then cross-references the schema cannot express (tier categories that
name no category, globs that cannot compile, a tier defined in two files).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from gateway.policy.spec import (
    CategorySpec,
    LimitsSpec,
    PolicySpec,
    RequestCaps,
    SystemPromptSpec,
    TierSpec,
    WatermarkSpec,
)
from gateway.yamlfile import Located, YamlError, load_text


class PolicyError(ValueError):
    """The policy directory is invalid; `errors` holds one `file:line: message` each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(resources.files("gateway.policy").joinpath("schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def policy_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.y*ml") if p.suffix in (".yaml", ".yml"))


@dataclass
class _Files:
    located: list[Located]
    digest: str


def _read(directory: Path, errors: list[str]) -> _Files:
    if not directory.is_dir():
        raise PolicyError([f"{directory}: not a directory"])
    digest = hashlib.sha256()
    located = []
    for path in policy_files(directory):
        try:
            raw = path.read_bytes()
            digest.update(path.name.encode() + b"\0" + raw + b"\0")
            doc = load_text(raw.decode("utf-8"), str(path))
        except YamlError as exc:
            errors.append(str(exc))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"{path}:1: cannot read: {exc.__class__.__name__}")
            continue
        if doc.data is None:
            errors.append(f"{path}:1: empty policy file")
            continue
        located.append(doc)
    return _Files(located, digest.hexdigest())


def _schema_errors(doc: Located) -> list[str]:
    found = []
    for error in sorted(_validator().iter_errors(doc.data), key=lambda e: list(e.path)):
        keys = tuple(str(p) for p in error.path)
        where = doc.where(keys) or f"{doc.path}:1"
        name = ".".join(keys) or "(top level)"
        found.append(f"{where}: {name}: {_message(error)}")
    return found


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)' was unexpected", error.message)
        return f"unknown key {', '.join(extra)}" if extra else str(error.message)
    return str(error.message)


def _pair(value: Any) -> tuple[float, float] | None:
    return (float(value[0]), float(value[1])) if value is not None else None


def _tier(name: str, raw: dict[str, Any]) -> TierSpec:
    request = dict(raw.get("request") or {})
    for key in ("temperature", "top_p"):
        request[key] = _pair(request.get(key))
    return TierSpec(
        name=name,
        models=tuple(raw["models"]),
        description=raw.get("description", ""),
        limits=LimitsSpec(**(raw.get("limits") or {})),
        request=RequestCaps(**request),
        system_prompt=SystemPromptSpec(**(raw.get("system_prompt") or {})),
        priority=raw.get("priority"),
        cache_salt=raw.get("cache_salt", "tenant"),
        categories=dict(raw.get("categories") or {"default": "block", "benign": "allow"}),
        watermark=WatermarkSpec(**(raw.get("watermark") or {})),
        store_prompts=bool(raw.get("store_prompts", False)),
    )


def _merge(docs: list[Located], errors: list[str]) -> dict[str, Any]:
    merged: dict[str, dict[str, Any]] = {"tiers": {}, "subjects": {}, "orgs": {},
                                         "categories": {}, "classifiers": {}}
    origin: dict[tuple[str, str], str] = {}
    for doc in docs:
        sections = {
            "tiers": doc.data.get("tiers") or {},
            "categories": doc.data.get("categories") or {},
            "classifiers": doc.data.get("classifiers") or {},
            "subjects": (doc.data.get("overrides") or {}).get("subjects") or {},
            "orgs": (doc.data.get("overrides") or {}).get("orgs") or {},
        }
        for section, entries in sections.items():
            for name, value in entries.items():
                if (section, name) in origin:
                    keys = (section, name) if section in ("tiers", "categories") else ()
                    errors.append(f"{doc.where(keys) or doc.path + ':1'}: {section}.{name}: "
                                  f"already defined in {origin[(section, name)]}")
                    continue
                origin[(section, name)] = doc.path
                merged[section][name] = value
    merged["_origin"] = origin  # type: ignore[assignment]
    return merged


def _cross_check(merged: dict[str, Any], docs: list[Located], errors: list[str]) -> None:
    by_path = {d.path: d for d in docs}
    categories = set(merged["categories"])
    for name, tier in merged["tiers"].items():
        doc = by_path[merged["_origin"][("tiers", name)]]
        for category in (tier.get("categories") or {}):
            if category != "default" and categories and category not in categories:
                where = doc.where(("tiers", name, "categories", category))
                errors.append(f"{where}: tiers.{name}.categories.{category}: "
                              f"unknown category (known: {', '.join(sorted(categories))})")
        for i, glob in enumerate(tier.get("models") or ()):
            if glob.count("[") != glob.count("]"):
                where = doc.where(("tiers", name, "models", str(i)))
                errors.append(f"{where}: tiers.{name}.models.{i}: bad glob {glob!r}")


def load_policy(directory: Path) -> PolicySpec:
    """Load and validate every *.yaml in `directory`; raise PolicyError listing all errors."""
    errors: list[str] = []
    files = _read(directory, errors)
    valid = []
    for doc in files.located:
        found = _schema_errors(doc)
        errors.extend(found)
        if not found:
            valid.append(doc)
    merged = _merge(valid, errors)
    _cross_check(merged, valid, errors)
    if not merged["tiers"] and not errors:
        errors.append(f"{directory}: no tiers defined in any policy file")
    if errors:
        raise PolicyError(errors)
    return PolicySpec(
        tiers={name: _tier(name, raw) for name, raw in merged["tiers"].items()},
        subject_limits={k: dict(v.get("limits") or {}) for k, v in merged["subjects"].items()},
        org_limits={k: dict(v.get("limits") or {}) for k, v in merged["orgs"].items()},
        categories={name: CategorySpec(name=name, description=raw["description"],
                                       llama_guard=tuple(raw.get("llama_guard") or ()),
                                       threshold=float(raw.get("threshold", 0.5)))
                    for name, raw in merged["categories"].items()},
        classifiers=dict(merged["classifiers"]),
        digest=files.digest,
        files=tuple(d.path for d in files.located),
    )
