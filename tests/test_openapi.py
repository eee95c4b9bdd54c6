"""The OpenAPI schema tells the truth: `schemathesis run --checks all` against a real server finds nothing,
the schema states this server's limits, and the docs pages need no other host."""

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from test_e2e import serve, stop

from app.errors import BadInput
from app.qa.answer import validate_question
from app.settings import Settings
from app.web.api import NOT_BLANK, create_app
from tests.conftest import make_settings

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CONFIG = Path(__file__).with_name("schemathesis.toml")
TOKEN = "openapi-test-admin-token"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


# --- schemathesis, every check, every operation, over real HTTP ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("token", ["", TOKEN], ids=["ingest disabled", "ingest enabled"])
def test_schemathesis_with_every_check_finds_no_failure(
    seed_settings: Settings, tmp_path: Path, token: str
) -> None:
    # Copies of the index and the corpus, and a question file of its own: schemathesis's own POST /ingest,
    # POST /documents, DELETE /documents and POST /questions calls write generations and files.
    home, corpus = tmp_path / "home", tmp_path / "corpus"
    shutil.copytree(seed_settings.home, home)
    shutil.copytree(seed_settings.corpus, corpus)
    env = {"CITEQA_ADMIN_TOKEN": token, "CITEQA_QUESTIONS_FILE": str(tmp_path / "recorded.yaml")}
    proc, base = serve(home, corpus, tmp_path / "server.log", env)
    try:
        spec = httpx.get(f"{base}/openapi.json", timeout=30).json()
        operations = sum(1 for item in spec["paths"].values() for method in item if method in METHODS)
        command = [str(SCHEMATHESIS), "--config-file", str(CONFIG), "--no-color", "run"]
        command += [f"{base}/openapi.json", "--checks", "all", "--workers", "1"]
        # A few examples per operation and phase keep the run to seconds; the coverage phase still tries
        # every boundary (empty, blank, longest, one too long, missing header) deterministically.
        command += ["--max-examples", "25", "--generation-database", "none", "--request-timeout", "60"]
        if token:
            command += ["--header", f"Authorization: Bearer {token}"]
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=480)
    finally:
        stop(proc)
    report = run.stdout[-8000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert f"Tested: {operations}" in run.stdout, report


def test_only_briefings_uploads_and_recorded_questions_may_answer_valid_data_with_422(tmp_path: Path) -> None:
    # The three exceptions in schemathesis.toml (made-up answers in a schema-valid briefing; unreadable bytes
    # in a schema-valid upload; a sentence its document does not hold) stay that narrow.
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json",
        create_app(make_settings(tmp_path / "home")),
        config=schemathesis.Config.from_path(str(CONFIG)),
    )
    allowing = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        if (
            "422"
            in schema.config.checks_config_for(operation=operation).positive_data_acceptance.expected_statuses
        ):
            allowing.add((operation.method.upper(), operation.path))
    assert allowing == {("POST", "/briefing"), ("POST", "/documents"), ("POST", "/questions")}


# --- what the schema states, for settings other than the defaults --------------------------------------------


def _schema(tmp_path: Path, **overrides: object) -> Any:
    """The OpenAPI schema of an app with these settings."""
    settings = make_settings(tmp_path / "home", **overrides)
    return create_app(settings).openapi()


def test_the_schema_states_the_limits_this_server_enforces(tmp_path: Path) -> None:
    schema = _schema(tmp_path, max_question_chars=123, max_top_k=7, max_history_turns=3)
    models = schema["components"]["schemas"]
    for name in ("AskRequest", "RetrieveRequest"):
        fields = models[name]["properties"]
        stated = {"type": "string", "minLength": 1, "maxLength": 123, "pattern": NOT_BLANK}
        assert stated.items() <= fields["question"].items()
        integer = next(s for s in fields["top_k"]["anyOf"] if s.get("type") == "integer")
        assert (integer["minimum"], integer["maximum"]) == (1, 7)
    assert models["AskRequest"]["properties"]["history"]["maxItems"] == 3
    # A briefing's questions are checked as /ask's are, so their schema states the same limits.
    stated = {"type": "string", "minLength": 1, "maxLength": 123, "pattern": NOT_BLANK}
    assert stated.items() <= models["BriefingItem"]["properties"]["question"].items()
    assert models["BriefingRequest"]["properties"]["title"]["pattern"] == NOT_BLANK
    # An item's answer that POST /briefing would refuse as empty is outside the schema too.
    answer = models["Answer-Input"] if "Answer-Input" in models else models["Answer"]
    assert {"minLength": 1, "pattern": NOT_BLANK}.items() <= answer["properties"]["answer"].items()
    # Every body route states its 413, and the upload route its file limits.
    for path in ("/ask", "/retrieve", "/briefing", "/documents"):
        assert "413" in schema["paths"][path]["post"]["responses"], path
    files = models["Body_add_documents_documents_post"]["properties"]["files"]
    assert (files["minItems"], files["maxItems"]) == (1, 10)

    settings = make_settings(tmp_path / "home", max_question_chars=123)
    validate_question("x" * 123, settings)
    for refused in ("x" * 124, " " * 123 + "x", "", " \t\n\u00a0\u2003"):
        with pytest.raises(BadInput):
            validate_question(refused, settings)


def test_the_pattern_refuses_exactly_the_questions_stripping_empties() -> None:
    # The pattern is a plain character class, read alike by Python's `re` and ECMA-262; every character
    # that str.strip() removes (the server's idea of blank), it refuses, and no other.
    for code in [*range(0xD800), *range(0xE000, 0x110000)]:
        char = chr(code)
        assert bool(re.search(NOT_BLANK, char)) == bool(char.strip()), hex(code)


def test_ingest_is_documented_as_this_server_answers_it(tmp_path: Path) -> None:
    disabled = _schema(tmp_path)["paths"]["/ingest"]["post"]
    assert "security" not in disabled
    assert {"404"} <= disabled["responses"].keys() and not {"401", "403"} & disabled["responses"].keys()
    enabled = _schema(tmp_path, admin_token=TOKEN)["paths"]["/ingest"]["post"]
    assert enabled["security"] == [{"HTTPBearer": []}]
    assert {"401", "403", "409"} <= enabled["responses"].keys() and "404" not in enabled["responses"]


# --- the docs pages: every asset from this server ------------------------------------------------------------


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_their_assets_from_this_server(tmp_path: Path, page: str) -> None:
    client = TestClient(create_app(make_settings(tmp_path / "home")))  # no lifespan: the model is not needed
    html = client.get(page)
    assert html.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert assets and not [a for a in assets if "//" in a], assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
