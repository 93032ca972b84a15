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
    CALLER_ROLES,
    MAX_CLASSIFIED_CHARS,
    CategorySpec,
    ClassifiersSpec,
    EmbeddingSpec,
    GuardSpec,
    LanguageSpec,
    LimitsSpec,
    ModerationSpec,
    PatternSpec,
    PolicySpec,
    RequestCaps,
    RulesSpec,
    StructureSpec,
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
    schema = error.schema
    if error.validator == "minimum" and error.instance == 0 and \
            isinstance(schema, dict) and "null" in schema.get("type", ()):
        # A limit of 0 reads as "nothing allowed" to some and "no limit" to others.
        return "0 is not a limit: use a positive number, or null (or leave it out) for none"
    return str(error.message)


def _pair(value: Any) -> tuple[float, float] | None:
    return (float(value[0]), float(value[1])) if value is not None else None


def _tier(name: str, raw: dict[str, Any]) -> TierSpec:
    request = dict(raw.get("request") or {})
    for key in ("temperature", "top_p"):
        request[key] = _pair(request.get(key))
    request["media"] = tuple(request.get("media") or ())
    request["media_hosts"] = tuple(h.lower() for h in request.get("media_hosts") or ())
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
        _check_request(name, tier.get("request") or {}, doc, errors)


def _check_request(tier: str, request: dict[str, Any], doc: Located,
                   errors: list[str]) -> None:
    """What the schema cannot say about a tier's request caps: how fields relate."""
    def error(key: str, message: str) -> None:
        where = doc.where(("tiers", tier, "request", key))
        errors.append(f"{where}: tiers.{tier}.request.{key}: {message}")

    for key in ("temperature", "top_p"):
        bounds = request.get(key)
        if bounds is not None and bounds[0] > bounds[1]:
            error(key, f"low must not exceed high ({bounds[0]} > {bounds[1]}), or no request "
                       f"setting {key} could pass")
    default, cap = request.get("default_max_tokens"), request.get("max_tokens")
    if default is not None and cap is not None and default > cap:
        error("default_max_tokens", f"{default} is more than max_tokens ({cap})")


# Output-scoped patterns are checked on a sliding window of the response stream, so the
# longest text they can match must be bounded (and the window is sized from it).
MAX_OUTPUT_MATCH = 512


def _pattern_width(pattern: str) -> int | None:
    """The longest text `pattern` can match, or None when unbounded."""
    from re import _parser  # type: ignore[attr-defined]

    high = int(_parser.parse(pattern).getwidth()[1])
    return None if high >= int(_parser.MAXREPEAT) else high


def _pattern_min_width(pattern: str) -> int:
    from re import _parser  # type: ignore[attr-defined]

    return int(_parser.parse(pattern).getwidth()[0])


def _patterns(raw: list[dict[str, Any]], doc: Located | None, keys: tuple[str, ...],
              category: str | None) -> tuple[PatternSpec, ...]:
    found = []
    for i, item in enumerate(raw):
        examples = item.get("examples") or {}
        where = (doc.where((*keys, str(i), "pattern")) if doc is not None else None) or ""
        found.append(PatternSpec(
            id=item["id"], category=category or item["category"], pattern=item["pattern"],
            score=float(item.get("score", 0.9)), scope=item.get("scope", "prompt"),
            match_examples=tuple(examples.get("match") or ()),
            no_match_examples=tuple(examples.get("no_match") or ()), where=where))
    return tuple(found)


def _classifiers(raw: dict[str, Any], docs: dict[str, Located], directory: Path,
                 ) -> ClassifiersSpec:
    """The `classifiers:` section (merged across files) as typed specs."""
    rules = raw.get("rules") or {}
    structure = raw.get("structure") or {}
    turns = structure.get("turns") or {}
    smuggling = structure.get("smuggling") or {}
    cues = structure.get("cues") or {}
    embedding = dict(raw.get("embedding") or {})
    if embedding.get("head"):
        embedding["head"] = str((directory / embedding["head"]).resolve())
    if "inputs" in embedding:
        embedding["inputs"] = tuple(embedding["inputs"])
    if "contextual_band" in embedding:
        low, high = (float(x) for x in embedding["contextual_band"])
        embedding["contextual_band"] = (low, high)
    moderation = dict(raw.get("moderation") or {})
    if moderation.get("tiers") is not None:
        moderation["tiers"] = tuple(moderation["tiers"])
    defaults = StructureSpec()
    return ClassifiersSpec(
        roles=tuple(raw.get("roles") or CALLER_ROLES),
        max_chars=int(raw.get("max_chars", MAX_CLASSIFIED_CHARS)),
        unverified_category=raw.get("unverified_category", "unverified"),
        overlap=raw.get("overlap", True),
        rules=RulesSpec(enabled=rules.get("enabled", True), patterns=_patterns(
            rules.get("patterns") or [], docs.get("rules"), ("classifiers", "rules", "patterns"),
            None)),
        structure=StructureSpec(
            enabled=structure.get("enabled", True),
            turns_low=turns.get("low", defaults.turns_low),
            turns_high=turns.get("high", defaults.turns_high),
            phrases=_patterns(structure.get("phrases") or [], docs.get("structure"),
                              ("classifiers", "structure", "phrases"), "jailbreak"),
            cues=_patterns(cues.get("patterns") or [], docs.get("structure"),
                           ("classifiers", "structure", "cues", "patterns"), "jailbreak"),
            cues_low=cues.get("low", defaults.cues_low),
            cues_high=cues.get("high", defaults.cues_high),
            tag_chars=smuggling.get("tag_chars", defaults.tag_chars),
            zero_width=smuggling.get("zero_width", defaults.zero_width),
            bidi_overrides=smuggling.get("bidi_overrides", defaults.bidi_overrides),
            base64_chars=smuggling.get("base64_chars", defaults.base64_chars),
            smuggling_score=float(smuggling.get("score", defaults.smuggling_score)),
            encoded_text_score=float(smuggling.get("encoded_text_score",
                                                   defaults.encoded_text_score)),
            language=_language(structure.get("language") or {})),
        embedding=EmbeddingSpec(**embedding),
        guard=GuardSpec(**(raw.get("guard") or {})),
        moderation=ModerationSpec(**moderation),
    )


def _language(raw: dict[str, Any]) -> LanguageSpec:
    values = dict(raw)
    if "readable" in values:
        values["readable"] = tuple(values["readable"])
    for key in ("min_confidence", "max_readable", "score"):
        if key in values:
            values[key] = float(values[key])
    return LanguageSpec(**values)


def _example_problems(pat: PatternSpec) -> list[str]:
    """A pattern against its own examples, as the classifiers read text (folded): an edit
    that stops matching what it was written for is refused like a bad regex."""
    from gateway.pipeline.classify.rules import case_flags
    from gateway.pipeline.classify.text import fold

    regex = re.compile(pat.pattern, case_flags(pat.pattern))
    problems = [f"does not match its own example {_quoted(text)}"
                for text in pat.match_examples if regex.search(fold(text)) is None]
    problems += [f"matches its own no_match example {_quoted(text)}"
                 for text in pat.no_match_examples if regex.search(fold(text)) is not None]
    return problems


def _quoted(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_classifiers(spec: ClassifiersSpec, merged: dict[str, Any],
                       docs: dict[str, Located], errors: list[str]) -> None:
    """Regexes compile, output patterns are bounded, names refer to defined things."""
    categories = set(merged["categories"])

    def where(name: str, *keys: str) -> str:
        doc = docs.get(name)
        found = doc.where(("classifiers", name, *keys)) if doc is not None else None
        return found or (doc.path + ":1" if doc is not None else "classifiers")

    for section, items in (("rules", spec.rules.patterns),
                           ("structure", spec.structure.phrases),
                           ("structure.cues", spec.structure.cues)):
        for pat in items:
            at = pat.where or where(section)
            try:
                re.compile(pat.pattern)
            except re.error as exc:
                errors.append(f"{at}: classifiers.{section}.{pat.id}: bad regex: {exc}")
                continue
            if categories and pat.category not in categories:
                errors.append(f"{at}: classifiers.{section}.{pat.id}: unknown category "
                              f"{pat.category!r} (known: {', '.join(sorted(categories))})")
            if _pattern_min_width(pat.pattern) == 0:
                errors.append(f"{at}: classifiers.{section}.{pat.id}: pattern matches empty "
                              "text, so it would match everything")
                continue
            width = _pattern_width(pat.pattern)
            if pat.scope != "prompt" and (width is None or width > MAX_OUTPUT_MATCH):
                errors.append(f"{at}: classifiers.{section}.{pat.id}: an output pattern must "
                              f"match at most {MAX_OUTPUT_MATCH} characters (bound repeats, "
                              "e.g. .{0,40} instead of .*)")
            errors.extend(f"{at}: classifiers.{section}.{pat.id}: {problem}"
                          for problem in _example_problems(pat))
    if categories and merged["classifiers"] and spec.unverified_category not in categories:
        errors.append(f"{where('unverified_category')}: classifiers.unverified_category: "
                      f"unknown category {spec.unverified_category!r}")
    language = spec.structure.language
    if categories and language.enabled and language.category not in categories:
        errors.append(f"{where('structure', 'language')}: classifiers.structure.language."
                      f"category: unknown category {language.category!r}")
    if spec.structure.turns_low >= spec.structure.turns_high:
        errors.append(f"{where('structure', 'turns')}: classifiers.structure.turns: "
                      "low must be below high")
    if spec.structure.cues_low >= spec.structure.cues_high:
        errors.append(f"{where('structure', 'cues')}: classifiers.structure.cues: "
                      "low must be below high")
    for tier in spec.moderation.tiers or ():
        if tier not in merged["tiers"]:
            errors.append(f"{where('moderation', 'tiers')}: classifiers.moderation.tiers: "
                          f"unknown tier {tier!r}")
    low, high = spec.embedding.contextual_band
    if low > high:
        errors.append(f"{where('embedding', 'contextual_band')}: "
                      "classifiers.embedding.contextual_band: low must not exceed high")
    head = spec.embedding.head
    if head is not None and not Path(head).is_file():
        errors.append(f"{where('embedding', 'head')}: classifiers.embedding.head: "
                      f"no such file {head}")


def _classifier_docs(merged: dict[str, Any], docs: list[Located]) -> dict[str, Located]:
    by_path = {d.path: d for d in docs}
    return {name: by_path[path] for (section, name), path in merged["_origin"].items()
            if section == "classifiers" and path in by_path}


def _build_classifiers(merged: dict[str, Any], docs: list[Located], directory: Path,
                       errors: list[str]) -> ClassifiersSpec:
    located = _classifier_docs(merged, docs)
    spec = _classifiers(merged["classifiers"], located, directory)
    _check_classifiers(spec, merged, located, errors)
    return spec


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
    classifiers = _build_classifiers(merged, valid, directory, errors)
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
        classifiers=classifiers,
        digest=files.digest,
        files=tuple(d.path for d in files.located),
    )
