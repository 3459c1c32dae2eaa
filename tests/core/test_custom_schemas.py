"""Custom events from YAML (this project's format) and from pyaviso 1.x's JSON listener schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from core_helpers import joined
from threads import run_in_thread
from waiting import until_following

from aviso_workflows import SchemaError, Store, ValidationError, load_schemas
from aviso_workflows.cli import main
from aviso_workflows.schema import SchemaRegistry, to_pyaviso_document

PYAVISO_FLIGHT = {
    "version": 0.1,
    "payload": "location",
    "flight": {
        "endpoint": [{"engine": ["etcd_rest", "etcd_grpc"], "base": "/tmp/aviso/flight",
                      "stem": "{date}/{country}/{airport}/{number}"}],
        "request": {
            "date": [{"type": "DateHandler", "canonic": "%Y%m%d"}],
            "country": [{"type": "StringHandler", "canonic": "lower"}],
            "airport": [{"type": "StringHandler", "canonic": "upper"}],
            "number": [{"type": "IntHandler", "range": [1, 9999], "required": True}],
        },
    },
}

PROJECT_YAML = """
events:
  flight:
    base: /tmp/aviso/flight-yaml
    stem: "{date}/{country}/{airport}/{number}"
    fields:
      date: {type: date}
      country: {type: string, case: lower}
      airport: {type: enum, values: [fco, lhr, cdg]}
      number: {type: int, min: 1, max: 9999, width: 4}
"""


@pytest.fixture
def pyaviso_file(tmp_path: Path) -> Path:
    path = tmp_path / "event_listener_schema.json"
    path.write_text(json.dumps(PYAVISO_FLIGHT))
    return path


@pytest.fixture
def yaml_file(tmp_path: Path) -> Path:
    path = tmp_path / "schemas.yaml"
    path.write_text(PROJECT_YAML)
    return path


def test_pyaviso_json_schema(store: Store, unique_date: str, pyaviso_file: Path) -> None:
    (flight,) = load_schemas(pyaviso_file).values()
    assert flight.base_fields == () and flight.key_fields == ("date", "country", "airport", "number")
    custom = Store([store.config.endpoints[0]], schema_files=(str(pyaviso_file),))
    raw = {"event": "flight", "date": unique_date, "country": "Italy", "airport": "fco", "number": "0042"}
    result = custom.notify(raw, location="gate 7")
    assert result.keys == [f"/tmp/aviso/flight/{unique_date}/italy/FCO/42"]
    _, status = custom.gateway.get("/tmp/aviso/flight/")
    assert status is not None and status.mod_revision == result.revisions[0]
    (found,) = custom.wait(raw, timeout=5)
    assert found.request == {"date": unique_date, "country": "italy", "airport": "FCO", "number": "42"}
    assert found.location == "gate 7"
    with pytest.raises(ValidationError) as caught:
        custom.notify({**raw, "number": 0})
    assert (caught.value.field, caught.value.value) == ("number", 0)
    with pytest.raises(ValidationError) as caught:
        custom.notify({key: value for key, value in raw.items() if key != "number"})
    assert caught.value.field == "number"


def test_project_yaml_schema_and_wait_released_by_a_later_post(store: Store, unique_date: str,
                                                               yaml_file: Path) -> None:
    custom = Store([store.config.endpoints[0]], schemas=SchemaRegistry(load_schemas(yaml_file)))
    wanted = {"event": "flight", "date": unique_date, "country": "FR", "airport": "CDG", "number": "1/2"}
    thread, outcome = run_in_thread(lambda: custom.wait(wanted, timeout=10))
    until_following(custom, wanted)
    custom.notify({**wanted, "number": 1})
    custom.notify({**wanted, "number": 2}, location="second")
    found = joined(thread, outcome)
    assert [n.key for n in found] == [f"/tmp/aviso/flight-yaml/{unique_date}/fr/cdg/0001",
                                      f"/tmp/aviso/flight-yaml/{unique_date}/fr/cdg/0002"]
    assert custom.get({"event": "flight", "date": unique_date, "number": 2})[0].location == "second"
    with pytest.raises(ValidationError) as caught:
        custom.notify({**wanted, "airport": "jfk"})
    assert (caught.value.field, caught.value.value) == ("airport", "jfk")
    with pytest.raises(ValidationError):
        custom.notify({**wanted, "country": "fr/it*"})
    with pytest.raises(ValidationError) as caught:
        store.notify({**wanted, "number": 1})  # a store without the schema does not know the event
    assert caught.value.field == "event"


def test_custom_schema_from_the_command_line(store: Store, unique_date: str, pyaviso_file: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    request = f"event=flight,date={unique_date},country=es,airport=mad,number=7"
    assert main(["notify", request, "--schema", str(pyaviso_file), "--location", "here"]) == 0
    assert main(["wait", request, "--schema", str(pyaviso_file), "--timeout", "5", "--json"]) == 0
    out = capsys.readouterr().out
    notification = json.loads(out.splitlines()[-1])
    assert notification["event"] == "flight" and notification["request"]["airport"] == "MAD"
    assert main(["notify", request]) == 2  # without --schema the event is unknown


def test_schemas_export_to_pyaviso_format_and_back(yaml_file: Path, tmp_path: Path) -> None:
    schemas = load_schemas(yaml_file)
    exported = tmp_path / "exported.json"
    exported.write_text(json.dumps(to_pyaviso_document(schemas.values())))
    (again,) = load_schemas(exported).values()
    values = {"date": "20261122", "country": "fr", "airport": "cdg", "number": "0001"}
    assert again.format_key(values) == schemas["flight"].format_key(values)
    assert again.fields["number"].canonical(1) == "0001"


@pytest.mark.parametrize("text", [
    "events: {flight: {stem: '{a}'}}",
    "events: {flight: {base: /x, stem: '{a}', fields: {a: {type: colour}}}}",
    "events: {flight: {base: x, stem: '{a}'}}",
    "events: [1, 2]",
    "events: {flight: {base: /x, stem: '{a.b}'}}",
    "nothing: here",
    "events: {flight: [",
])
def test_malformed_schema_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SchemaError) as caught:
        load_schemas(path)
    assert str(path) in str(caught.value)
