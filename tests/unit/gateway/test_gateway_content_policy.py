"""The content policy (docs/architecture.md, "Content policy"): rules as data, normalised matching,
refused and allowed examples, the operator's file, and what the gateway answers (through the real
app)."""

import json
from pathlib import Path
from typing import Any

import pytest

from kiln_gateway.content_policy import (
    BUILTIN_POLICY_FILE,
    ContentPolicy,
    InvalidPolicyFile,
    load_content_policy,
    read_policy_file,
)
from tests.unit.gateway.hostile_support import gateway_under_test


@pytest.fixture(scope="module")
def policy() -> ContentPolicy:
    return load_content_policy(None)


REFUSED = [
    # sexual content, and the usual ways of hiding a word
    ("image", "a nude woman on a beach", "sexual-content"),
    ("image", "NSFW fan art", "sexual-content"),
    ("image", "Ｎｕｄｅ figure study", "sexual-content"),  # fullwidth
    ("image", "𝐧𝐮𝐝𝐞 figure study", "sexual-content"),  # mathematical bold
    ("image", "nüde figure study", "sexual-content"),  # diacritic
    ("image", "nu\u200bde figure study", "sexual-content"),  # zero-width space
    ("image", "nud\u0435 figure study", "sexual-content"),  # Cyrillic е
    ("image", "n u d e figure study", "sexual-content"),  # spaced out
    ("image", "n.u.d.e figure study", "sexual-content"),
    ("image", "n-u-d-e figure study", "sexual-content"),
    ("image", "nuuuude figure study", "sexual-content"),  # stretched
    ("image", "nud3 figure study", "sexual-content"),  # leetspeak
    ("image", "p0rn", "sexual-content"),
    ("image", "a pornographic scene", "sexual-content"),
    ("image", "a woman without clothes", "sexual-content"),
    ("image", "a naked man", "sexual-content"),
    ("image", "a sexually explicit image", "sexual-content"),
    ("audio", "an erotic story read aloud", "sexual-content"),  # every kind of model
    # a real person's face or body
    ("image", "a deepfake of my boss", "face-or-body-transfer"),
    ("image", "deep-fake video of the mayor", "face-or-body-transfer"),
    ("image", "face swap me with a movie star", "face-or-body-transfer"),
    ("image", "faceswap", "face-or-body-transfer"),
    ("image", "put my ex's face on a model's body", "face-or-body-transfer"),
    ("image", "paste her face onto the poster", "face-or-body-transfer"),
    ("image", "replace the actor's face with mine", "face-or-body-transfer"),
    ("image", "use my neighbour's face for the villain", "face-or-body-transfer"),
    ("image", "a superhero with the face of my brother", "face-or-body-transfer"),
    ("image", "a body swap between two friends", "face-or-body-transfer"),
    ("image", "a portrait photo of Taylor Swift", "real-person-in-visual-media"),
    ("image", "TAYLOR   SWIFT at the beach", "real-person-in-visual-media"),
    ("image", "T4yl0r Sw1ft at the beach", "real-person-in-visual-media"),
    ("image", "Beyoncé on stage", "real-person-in-visual-media"),
    ("image", "obama's face on a coin", "real-person-in-visual-media"),
    ("image", "elon musk riding a horse", "real-person-in-visual-media"),
    ("image", "a realistic photo of a real person", "real-person-in-visual-media"),
]

ALLOWED = [
    ("image", "a lighthouse in a storm"),
    ("image", "a naked mole rat in its burrow"),
    ("audio", "visible to the naked eye"),
    ("image", "Essex countryside at dawn"),
    ("image", "Middlesex county hall"),
    ("image", "a brass sextant on a ship"),
    ("image", "Capricorn constellation over the sea"),
    ("image", "a knight with the face of a lion"),
    ("image", "a woman smiling, her face lit by candles"),
    ("image", "put a hat on my dog's face"),
    ("image", "a painting in the style of Van Gogh"),
    ("image", "a photo of my dog"),
    ("image", "a trump card on a green table"),
    ("image", "a portrait of an old fisherman"),
    ("audio", "Barack Obama was the forty-fourth president."),  # naming is not depicting
    ("audio", "the sex of the chick is hard to tell"),
    ("audio", "Please state your full name."),
]


@pytest.mark.parametrize(("kind", "text", "rule"), REFUSED)
def test_refused_examples(policy: ContentPolicy, kind: str, text: str, rule: str) -> None:
    found = policy.refusal(text, kind=kind)
    assert found is not None, text
    assert found.id == rule


@pytest.mark.parametrize(("kind", "text"), ALLOWED)
def test_allowed_examples(policy: ContentPolicy, kind: str, text: str) -> None:
    found = policy.refusal(text, kind=kind)
    assert found is None, f"{text!r} refused by {found.id if found else ''}"


def test_every_string_of_the_input_is_checked_and_named(policy: ContentPolicy) -> None:
    value: dict[str, Any] = {
        "prompt": "a lighthouse",
        "negative_prompt": "nsfw",
        "style": {"name": "deepfake"},
        "layers": ["clouds", "n.u.d.e"],
        "seed": 7,
    }
    fields = {(v.field, v.rule_id) for v in policy.violations(value, kind="image")}
    assert fields == {
        ("input.negative_prompt", "sexual-content"),
        ("input.style.name", "face-or-body-transfer"),
        ("input.layers.1", "sexual-content"),
    }


def test_normalisation_makes_rules_and_text_meet(policy: ContentPolicy) -> None:
    views = policy.normaliser.views("N.U.D.3 Ph0tö")
    assert "n u d 3 ph0to" in views
    assert "nude photo" in views
    assert policy.normaliser.words("Beyoncé’s  FACE!") == "beyonce s face"


def test_the_data_file_is_valid_and_documented() -> None:
    policy = read_policy_file(BUILTIN_POLICY_FILE)
    assert policy.about and policy.rules
    ids = [rule.id for rule in policy.rules]
    assert ids == ["sexual-content", "face-or-body-transfer", "real-person-in-visual-media"]
    assert all(rule.message for rule in policy.rules)


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "operator_policy.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_an_operator_file_adds_rules_and_list_entries(tmp_path: Path) -> None:
    extra = write(
        tmp_path,
        {
            "lists": {"real_people": ["Ada Lovelace"]},
            "rules": [
                {
                    "id": "no-weapons",
                    "message": "This deployment does not draw weapons.",
                    "words": ["rifle", "hand grenade"],
                    "patterns": ["\\bassault (?:weapon|rifle)\\b"],
                    "applies_to": ["image"],
                }
            ],
        },
    )
    policy = load_content_policy(extra)
    assert policy.refusal("a portrait of Ada Lovelace", kind="image").id == (
        "real-person-in-visual-media"
    )
    assert policy.refusal("two r i f l e s", kind="image").id == "no-weapons"
    assert policy.refusal("a rifle", kind="audio") is None  # applies_to
    assert policy.refusal("a nude", kind="image").id == "sexual-content"
    assert load_content_policy(None).refusal("Ada Lovelace", kind="image") is None


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"rules": [{"id": "x", "message": "m", "wordz": ["a"]}]}, "wordz"),
        ({"rules": [{"id": "x", "message": "m"}]}, "no words"),
        ({"rules": [{"id": "x", "message": "m", "patterns": ["("]}]}, "bad pattern"),
        ({"rules": [{"id": "x", "message": "m", "words": ["{nolist}"]}]}, "no list"),
        ({"rules": [{"id": "sexual-content", "message": "m", "words": ["a"]}]}, "unique"),
        ({"normalisation": {"leet": {"ab": "c"}}}, "single characters"),
    ],
)
def test_a_broken_operator_file_is_refused_at_load(
    tmp_path: Path, data: dict[str, Any], error: str
) -> None:
    builtin = read_policy_file(BUILTIN_POLICY_FILE)
    with pytest.raises(InvalidPolicyFile, match=error):
        ContentPolicy([builtin, read_policy_file(write(tmp_path, data))])


def test_a_missing_operator_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidPolicyFile):
        load_content_policy(tmp_path / "missing.json")


# --- through the gateway ----------------------------------------------------------------------


async def test_the_gateway_answers_422_content_policy_naming_the_field(tmp_path: Path) -> None:
    async with gateway_under_test(tmp_path) as gateway:
        response = await gateway.client.post(
            "/jobs",
            json={
                "model": "kiln/prompt-to-image",
                "input": {"prompt": "a portrait photo of Taylor Swift"},
            },
            headers=gateway.auth(),
        )
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "CONTENT_POLICY"
        assert error["details"][0]["field"] == "input.prompt"
        assert "real-person-in-visual-media" in error["details"][0]["message"]
        assert "Taylor" not in response.text  # the prompt is not echoed back

        # The same words in metadata are the client's business, and a TTS text may name people.
        allowed = await gateway.client.post(
            "/jobs",
            json={
                "model": "kiln/prompt-to-image",
                "input": {"prompt": "a lighthouse in a storm"},
                "metadata": {"note": "nsfw deepfake of Taylor Swift"},
            },
            headers=gateway.auth(),
        )
        assert allowed.status_code == 202, allowed.text
        speech = await gateway.client.post(
            "/jobs",
            json={"model": "kiln/text-to-speech", "input": {"text": "Taylor Swift sang."}},
            headers=gateway.auth(gateway.sandbox_key),
        )
        assert speech.status_code == 202, speech.text
        refused_speech = await gateway.client.post(
            "/jobs",
            json={"model": "kiln/text-to-speech", "input": {"text": "read an erotic story"}},
            headers=gateway.auth(gateway.sandbox_key),
        )
        assert refused_speech.json()["error"]["code"] == "CONTENT_POLICY"
        assert refused_speech.json()["error"]["details"][0]["field"] == "input.text"


async def test_schema_errors_come_before_the_policy(tmp_path: Path) -> None:
    async with gateway_under_test(tmp_path) as gateway:
        response = await gateway.client.post(
            "/jobs",
            json={"model": "kiln/prompt-to-image", "input": {"prompt": "nsfw", "seed": -1}},
            headers=gateway.auth(),
        )
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_an_operator_file_is_used_by_the_gateway(tmp_path: Path) -> None:
    extra = write(
        tmp_path,
        {"rules": [{"id": "no-clowns", "message": "No clowns here.", "words": ["clown"]}]},
    )
    async with gateway_under_test(tmp_path, content_policy_file=extra) as gateway:
        response = await gateway.client.post(
            "/jobs",
            json={"model": "kiln/prompt-to-image", "input": {"prompt": "a sad clown"}},
            headers=gateway.auth(),
        )
        assert response.status_code == 422
        assert "no-clowns" in response.json()["error"]["details"][0]["message"]


def test_a_broken_operator_file_stops_the_gateway_at_start(tmp_path: Path) -> None:
    from kiln_crypto import new_secrets_key
    from kiln_gateway.app import create_app
    from kiln_gateway.config import GatewaySettings

    broken = write(tmp_path, {"rules": [{"id": "x", "message": "m", "patterns": ["("]}]})
    with pytest.raises(InvalidPolicyFile):
        create_app(
            GatewaySettings(
                database_url=f"sqlite+aiosqlite:///{tmp_path}/g.db",
                content_policy_file=broken,
                secrets_keys=new_secrets_key(),
            )
        )
