"""The content policy (docs/architecture.md, "Content policy"): no sexual content, no real person's
face or body in generated media. The rules are data (`data/content_policy.json`, plus an operator's
file named by KILN_CONTENT_POLICY_FILE that adds rules and list entries); this module normalises
text the way the data file describes and tells which rule, if any, a job's input breaks.

Text and rules go through the same normalisation, so a rule is written once in plain lowercase
words and still matches `Ｎｕｄｅ`, `n.u.d.e`, `nüde`, `n\u200bude`, `nudе` (Cyrillic `е`) or
`nud3`. Every string in a job's `input` is checked, however deep; `metadata` is not."""

import functools
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kiln_gateway.errors import ContentPolicyRefused

BUILTIN_POLICY_FILE = Path(__file__).parent / "data" / "content_policy.json"

_LIST_REF = re.compile(r"\{([a-z][a-z0-9_]*)\}")
_NOT_WORD = re.compile(r"[^a-z0-9]+")
_REPEATS = re.compile(r"([a-z])\1{2,}")
# Three or more one-character words in a row: "n u d e" (from "n.u.d.e", "n-u-d-e", ...).
_SPELT_OUT = re.compile(r"(?<![a-z0-9])(?:[a-z0-9] ){2,}[a-z0-9](?![a-z0-9])")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuleSpec(_Strict):
    id: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    message: str = Field(min_length=1, max_length=500)
    applies_to: list[str] | None = None
    words: list[str] = []
    substrings: list[str] = []
    patterns: list[str] = []


class NormalisationSpec(_Strict):
    leet: dict[str, str] = {}
    confusables: dict[str, str] = {}


class PolicyFile(_Strict):
    about: list[str] | str = ""
    version: int = 1
    normalisation: NormalisationSpec = NormalisationSpec()
    lists: dict[str, list[str]] = {}
    rules: list[RuleSpec] = []


class InvalidPolicyFile(ValueError):
    pass


@dataclass(frozen=True)
class PolicyViolation:
    field: str
    rule_id: str
    message: str

    def detail(self) -> dict[str, str]:
        return {
            "field": self.field,
            "message": f"{self.message} (content policy rule {self.rule_id!r})",
        }


@dataclass(frozen=True)
class Rule:
    id: str
    message: str
    applies_to: frozenset[str] | None
    regex: re.Pattern[str]

    def applies(self, kind: str) -> bool:
        return self.applies_to is None or kind in self.applies_to


class Normaliser:
    def __init__(self, spec: NormalisationSpec) -> None:
        self._confusables = str.maketrans(_single_chars(spec.confusables, "confusables"))
        self._leet = str.maketrans(_single_chars(spec.leet, "leet"))

    def fold(self, text: str) -> str:
        """Compatibility forms, invisible characters, case, look-alikes, accents."""
        text = unicodedata.normalize("NFKC", text)
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
        text = text.casefold().translate(self._confusables)
        text = unicodedata.normalize("NFKD", text)
        return "".join(ch for ch in text if not unicodedata.combining(ch))

    def words(self, text: str) -> str:
        """Lowercase a-z/0-9 words separated by single spaces: what rules are written over."""
        return _NOT_WORD.sub(" ", self.fold(text)).strip()

    def views(self, text: str) -> list[str]:
        """The ways of reading `text` that every rule is matched against."""
        folded = self.fold(text)
        plain = _NOT_WORD.sub(" ", folded).strip()
        leet = _NOT_WORD.sub(" ", folded.translate(self._leet)).strip()
        found: list[str] = []
        for view in (plain, leet):
            for variant in (view, _SPELT_OUT.sub(_join_letters, view)):
                for candidate in (variant, _REPEATS.sub(r"\1", variant)):
                    if candidate not in found:
                        found.append(candidate)
        return found


class ContentPolicy:
    def __init__(self, files: list[PolicyFile]) -> None:
        if not files:
            raise InvalidPolicyFile("no policy file")
        normalisation = NormalisationSpec()
        lists: dict[str, list[str]] = {}
        specs: list[RuleSpec] = []
        for policy in files:
            normalisation.leet.update(policy.normalisation.leet)
            normalisation.confusables.update(policy.normalisation.confusables)
            for name, entries in policy.lists.items():
                lists.setdefault(name, []).extend(entries)
            specs.extend(policy.rules)
        ids = [spec.id for spec in specs]
        if len(ids) != len(set(ids)):
            raise InvalidPolicyFile(f"rule ids must be unique: {sorted(ids)}")
        self.normaliser = Normaliser(normalisation)
        self.rules = [self._compile(spec, lists) for spec in specs]

    def _compile(self, spec: RuleSpec, lists: dict[str, list[str]]) -> Rule:
        words = self.normaliser.words

        def terms(name: str) -> str:
            if name not in lists:
                raise InvalidPolicyFile(f"rule {spec.id!r}: no list {name!r}")
            entries = sorted({words(e) for e in lists[name] if words(e)}, key=len, reverse=True)
            return "(?:" + "|".join(_literal(e) for e in entries) + ")"

        def expand(pattern: str) -> str:
            return _LIST_REF.sub(lambda match: terms(match.group(1)), pattern)

        def word_regex(word: str) -> str:
            # "photo of {real_people}": literal pieces normalised, list references expanded.
            pieces = []
            for index, piece in enumerate(_LIST_REF.split(word)):
                # re.split with one group alternates: literal, list name, literal, ...
                text = terms(piece) if index % 2 else _literal(words(piece))
                if text:
                    pieces.append(text)
            return " ".join(pieces)

        parts = []
        for word in spec.words:
            term = word_regex(word)
            if term:
                parts.append(rf"(?<![a-z0-9]){term}(?:s|es)?(?![a-z0-9])")
        parts += [_literal(words(s)) for s in spec.substrings if words(s)]
        parts += [expand(pattern) for pattern in spec.patterns]
        if not parts:
            raise InvalidPolicyFile(f"rule {spec.id!r} has no words, substrings or patterns")
        try:
            regex = re.compile("|".join(f"(?:{p})" for p in parts))
        except re.error as exc:
            raise InvalidPolicyFile(f"rule {spec.id!r}: bad pattern: {exc}") from exc
        applies_to = frozenset(spec.applies_to) if spec.applies_to is not None else None
        return Rule(id=spec.id, message=spec.message, applies_to=applies_to, regex=regex)

    def refusal(self, text: str, *, kind: str) -> Rule | None:
        """The first rule that `text` breaks for a model of `kind`, or None."""
        views = self.normaliser.views(text)
        for rule in self.rules:
            if rule.applies(kind) and any(rule.regex.search(view) for view in views):
                return rule
        return None

    def violations(self, value: Any, *, kind: str, field: str = "input") -> list[PolicyViolation]:
        """One violation per string of `value` (however nested) that breaks a rule."""
        found = []
        for path, text in _strings(value, field):
            rule = self.refusal(text, kind=kind)
            if rule is not None:
                found.append(PolicyViolation(field=path, rule_id=rule.id, message=rule.message))
        return found


def read_policy_file(path: Path) -> PolicyFile:
    try:
        return PolicyFile.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as exc:
        raise InvalidPolicyFile(f"content policy file {path}: {exc}") from exc


@functools.lru_cache(maxsize=8)
def load_content_policy(extra_file: Path | None = None) -> ContentPolicy:
    """The built-in rules plus the operator's (KILN_CONTENT_POLICY_FILE), compiled once."""
    files = [read_policy_file(BUILTIN_POLICY_FILE)]
    if extra_file is not None:
        files.append(read_policy_file(extra_file))
    return ContentPolicy(files)


def enforce_content_policy(extra_file: Path | None, kind: str, job_input: Any) -> None:
    """Raise 422 CONTENT_POLICY naming each field of a job's input that breaks a rule."""
    violations = load_content_policy(extra_file).violations(job_input, kind=kind)
    if violations:
        raise ContentPolicyRefused(
            "The request asks for content that Kiln does not generate.",
            [v.detail() for v in violations],
        )


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    # Iterative: the body was already bounded in depth, but nothing here should recurse on input.
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            yield where, item
        elif isinstance(item, dict):
            stack.extend((f"{where}.{k}", v) for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((f"{where}.{i}", v) for i, v in reversed(list(enumerate(item))))


def _join_letters(match: re.Match[str]) -> str:
    return match.group(0).replace(" ", "")


def _single_chars(mapping: dict[str, str], name: str) -> dict[str, str]:
    for key in mapping:
        if len(key) != 1:
            raise InvalidPolicyFile(f"normalisation.{name}: keys are single characters: {key!r}")
    return mapping


def _literal(normalised: str) -> str:
    return re.escape(normalised).replace("\\ ", " ")
