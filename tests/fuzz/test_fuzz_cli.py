"""Fuzzed command lines: each one does its work, or exits 2 with a one-line error; never a traceback.

Most run ``main(argv)`` in the test's process; a few run the installed ``aviso-workflows`` command.
"""

from __future__ import annotations

import io
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzz_strategies import FUZZ, NASTY_TEXT, SCHEMAS, assert_canonical, requests, revision, values
from hypothesis import example, given
from hypothesis import strategies as st

from aviso_workflows import Store
from aviso_workflows.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMMAND = ROOT / ".venv" / "bin" / "aviso-workflows"
OUR_ERROR = re.compile(r"aviso-workflows: \S")  # aviso-workflows: FIELD: VALUE is not valid; WHAT IS
ARGPARSE_ERROR = re.compile(r"aviso-workflows [\w-]+: error: \S")  # aviso-workflows notify: error: argument ...
SUBPROCESS_SECONDS = 120


def run(argv: list[str]) -> tuple[int, str, str]:
    """Exit code, standard output and standard error of ``aviso-workflows ARGV`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as leaving:  # argparse: bad usage (2), --help and --version (0)
            code = leaving.code if isinstance(leaving.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_clear_exit(code: int, err: str) -> None:
    """Exit 0 (done), 1 (timed out, not posted) or 2 with one line saying what is wrong."""
    assert "Traceback" not in err, err
    assert code in (0, 1, 2), (code, err)
    if code != 2:
        return
    lines = err.rstrip("\n").split("\n")
    assert len(lines) == 1, f"the error spans {len(lines)} lines: {err!r}"
    assert OUR_ERROR.match(lines[0]) or ARGPARSE_ERROR.match(lines[0]), err
    assert len(lines[0]) < 2000, f"an error line of {len(lines[0])} characters"


def pair_value(value: Any) -> str:
    """How a value is written in ``k=v`` pairs: lists as ``a/b/c``."""
    if isinstance(value, (list, tuple)):
        return "/".join(pair_value(item) for item in value)
    return str(value)


# Ranges in pairs stay small enough to post: the fuzz is about spelling, not volume.
small_ranges = st.builds("{}/to/{}/by/{}".format, st.integers(-2, 12), st.integers(-2, 24),
                         st.sampled_from([0, -6, 6, 12, "x", ""]))
cli_requests = requests().map(lambda raw: {k: v for k, v in raw.items()
                                           if not (isinstance(v, str) and "to" in v and k == "step")})


@st.composite
def pairs(draw: st.DrawFn) -> str:
    """A request as pyaviso-style ``k=v,k=v`` text, sometimes torn apart."""
    raw = draw(cli_requests)
    if draw(st.booleans()):
        raw["step"] = draw(small_ranges)
    text = ",".join(f"{k}={pair_value(v)}" for k, v in raw.items())
    mangle = draw(st.integers(0, 6))
    if mangle == 0:
        text = text.replace("=", draw(st.sampled_from(["", "==", " = ", ":"])), 1)
    elif mangle == 1:
        text = text.replace(",", draw(st.sampled_from([",,", " , ", ";", "\n"])))
    elif mangle == 2:
        text = draw(st.sampled_from(NASTY_TEXT + ["event=mars", "=", ",=,", "event=", "a=b=c"]))
    return text


options = {
    "notify": st.lists(st.one_of(
        st.tuples(st.just("--location"), st.sampled_from(["file:///data/x", "", "a\nb", "x" * 5000, "\x85"])),
        st.tuples(st.just("--ttl"),  # accepted TTLs outlive the run (an expiry would move the revision)
                  st.sampled_from(["86400", "0", "-5", "x", "1e3", "99999999999999999999", " 90000"]))),
        max_size=2),
    "wait": st.lists(st.one_of(
        st.tuples(st.sampled_from(["--any", "--json", "--quiet"])),
        st.tuples(st.just("--progress-command"),
                  st.sampled_from(["true", "", "'", '"unclosed', "\\", "a\x00b", "true {found}/{total}"]))),
        max_size=3).map(lambda items: [("--timeout", "0")] + items),
    "listen": st.lists(st.one_of(
        st.tuples(st.sampled_from(["--json", "--dry-run"])),
        st.tuples(st.just("--count"), st.sampled_from(["1", "0", "-1", "x", "10"])),
        st.tuples(st.just("--cursor"), st.sampled_from(["fuzz", "", "..", "../x", "a/b", "a b", "é", "x" * 300]))),
        max_size=3),
    "key": st.just([]),
    "value": st.just([]),
}
timeouts = st.sampled_from(["0", "0.01", "-1", "nan", "inf", "-inf", "1e400", "x", "", " 0"])
moments = st.sampled_from(["2026-11-22", "2026-11-22T06:00:00Z", "2026-11-22T06:00:00.000Z", "2000-01-01",
                           "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "2026-13-01", "", "now",
                           "2026-11-22T06:00:00+25:00", "1e9", "20261122"])


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    """A subcommand, its request and options, with a stray argument now and then."""
    command = draw(st.sampled_from(["notify", "wait", "key", "value", "listen"]))
    argv = [command, draw(pairs())]
    for option in draw(options[command]):
        argv.extend(option)
    if command == "wait":
        argv[argv.index("--timeout") + 1] = draw(timeouts)
    if command == "listen":  # both ends given: a replay that ends, never a listen that waits for ever
        argv += ["--from", draw(moments), "--to", draw(moments)]
    if draw(st.integers(0, 4)) == 0:
        stray = draw(st.sampled_from(NASTY_TEXT[:60] + ["--nope", "-x", "--", "--timeout", "--help", "--endpoint"]))
        argv.insert(draw(st.integers(0, len(argv))), stray)
    return argv


def keys_printed(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.strip().startswith("/ec/")]


def assert_keys_canonical(keys: list[str]) -> None:
    """Printed keys are data keys of a built-in event, every value canonical."""
    for key in keys:
        schema = SCHEMAS["mars"] if key.startswith("/ec/mars/") else SCHEMAS["dissemination"]
        fields = schema.parse_key(key)
        assert fields is not None, key
        assert_canonical(schema, fields)


@FUZZ
@given(argv=command_lines())
@example(argv=["wait", "event=mars,class=od,expver=1,domain=g,date=20250101,time=0,stream=oper,step=0",
               "--timeout", "nan"])
@example(argv=["wait", "event=mars,class=od,expver=1,domain=g,date=20250101,time=0,stream=oper,step=0",
               "--timeout", "1e400"])
@example(argv=["wait", "event=mars,class=od,expver=1,domain=g,date=20250101,time=0,stream=oper,step=0",
               "--timeout", "0", "--progress-command", "'"])
@example(argv=["listen", "event=mars,class=od", "--from", "0001-01-01T00:00:00+05:00", "--to", "2026-01-01"])
@example(argv=["listen", "event=mars,class=od", "--from", "2026-01-01", "--to", "2026-01-02", "--count", "0"])
@example(argv=["notify", "event=mars,class=od,expver=1,domain=g,date=20250101,time=0,stream=oper,step=0",
               "--ttl", "99999999999999999999"])
@example(argv=["notify", "--ttl", "x", "event=mars"])
@example(argv=["key", "event=mars", "--nope", "a\nb"])
@example(argv=["notify", "event=mars", "x" * 5000])
@example(argv=["key", "event=dissemination,destination=\udcff,target=E1,class=od,expver=1,domain=g,date=20250101,"
                      "time=0,stream=oper,step=0"])
def test_command_lines(fuzz_store: Store, argv: list[str]) -> None:
    before = revision(fuzz_store)
    code, out, err = run(argv)
    assert_clear_exit(code, err)
    if argv[0] == "notify" and code == 0 and "--help" not in argv:
        assert re.match(r"notified [1-9]\d* key\(s\)", out), out
        assert_keys_canonical(keys_printed(out))
        return
    if argv[0] == "key" and code == 0:
        assert_keys_canonical(keys_printed(out))
    assert revision(fuzz_store) == before, f"{argv} changed the store"


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A directory for the request and schema files of this module."""
    with tempfile.TemporaryDirectory(prefix="aviso-fuzz-cli-") as directory:
        yield Path(directory)


request_documents = st.one_of(
    requests(), st.builds(lambda raw, inner: {"event": raw.pop("event", None), "request": inner or raw},
                          requests(), st.one_of(st.none(), values, requests())),
    values)


@FUZZ
@given(document=request_documents, command=st.sampled_from(["key", "value", "wait", "notify"]),
       tail=st.sampled_from(["", "\n: x", "\x00", "\t", "\udcff", "]"]))
@example(document={"event": "mars", "request": "class=od"}, command="key", tail="")
@example(document={"event": "mars"}, command="key", tail="[" * 1000)
@example(document={"event": "mars"}, command="key", tail="\udcff")
def test_request_files(fuzz_store: Store, scratch: Path, document: Any, command: str, tail: str) -> None:
    path = scratch / "request.yaml"
    try:
        text = yaml.safe_dump(document, allow_unicode=True)
    except (yaml.YAMLError, UnicodeEncodeError):
        text = repr(document)
    path.write_bytes((text + tail).encode("utf-8", "surrogateescape"))
    argv = [command, "--request-file", str(path)] + (["--timeout", "0"] if command == "wait" else [])
    before = revision(fuzz_store)
    code, out, err = run(argv)
    assert_clear_exit(code, err)
    if command == "notify" and code == 0:
        assert_keys_canonical(keys_printed(out))
    else:
        assert revision(fuzz_store) == before


field_configs = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["int", "string", "enum", "date", "time", "expver", "float", 5])},
                          optional={"min": st.one_of(st.integers(-5, 5), values),
                                    "max": st.one_of(st.integers(0, 500), values),
                                    "width": st.one_of(st.integers(0, 6), values),
                                    "values": st.one_of(st.lists(st.sampled_from(["a", "b", 0, 6, "A"]),
                                                                 max_size=3), values),
                                    "case": st.sampled_from(["upper", "lower", "title", None]),
                                    "pattern": st.sampled_from(["[a-z]+", "(", "", ".*", None]),
                                    "default": values, "bogus": values}),
    values)
templates = st.one_of(st.sampled_from(["/x/{a}", "/x", "x/{a}", "/x/{a}/{b}", "/x/{", "/x/{a.b}", "/x/{0}", "",
                                       "/x/{a}{a}", "/x/{a!r}", "/x/{a:>4}", "{a}={b}", "/x/{}"]), values)


@st.composite
def schema_documents(draw: st.DrawFn) -> Any:
    """A schema file in this project's format or pyaviso's, with the usual mistakes."""
    if draw(st.booleans()):
        event = draw(st.fixed_dictionaries({"base": templates, "stem": templates}, optional={
            "fields": st.one_of(st.dictionaries(st.sampled_from(["a", "b", "c", "", 1]), field_configs, max_size=3),
                                values),
            "admin": templates, "payload": values, "required": st.one_of(st.lists(st.sampled_from(["a", "z"])),
                                                                        values)}))
        return {"events": draw(st.one_of(st.fixed_dictionaries({"fuzzed": st.just(event)}), values))}
    handler = st.fixed_dictionaries({"type": st.sampled_from(["IntHandler", "StringHandler", "EnumHandler",
                                                              "DateHandler", "TimeHandler", "RegexHandler",
                                                              "FloatHandler", 3])},
                                    optional={"canonic": st.sampled_from(["{0:0>4}", "upper", "%Y%m%d", "{0:0>x}",
                                                                          "0>", 7]),
                                              "range": st.one_of(st.lists(st.integers(-5, 50), max_size=3), values),
                                              "values": st.one_of(st.lists(st.sampled_from(["a", 1, "0"]),
                                                                           max_size=3), values),
                                              "regex": st.sampled_from(["^[a-z]+$", "(", 5]),
                                              "required": values})
    endpoint = st.fixed_dictionaries({"engine": st.one_of(st.just(["etcd_rest"]), values), "base": templates,
                                      "stem": templates}, optional={"admin": templates})
    return {"payload": "location", "fuzzed": {
        "endpoint": draw(st.one_of(st.lists(st.one_of(endpoint, values), max_size=2), values)),
        "request": draw(st.one_of(st.dictionaries(st.sampled_from(["a", "b", ""]),
                                                  st.one_of(st.lists(st.one_of(handler, values), max_size=2),
                                                            values), max_size=3), values))}}


@FUZZ
@given(document=schema_documents(), suffix=st.sampled_from([".yaml", ".json"]),
       pairs_text=st.sampled_from(["event=fuzzed,a=1,b=2,c=3", "event=fuzzed,a=x", "event=fuzzed", "event=mars"]))
@example(document={"events": {"fuzzed": {"base": "/x", "stem": "{a}", "fields": {"a": [1]}}}}, suffix=".yaml",
         pairs_text="event=fuzzed,a=1")
@example(document={"events": {"fuzzed": {"base": "/x", "stem": "{a}", "fields": {"a": {"type": "int", "min": "x"}}}}},
         suffix=".yaml", pairs_text="event=fuzzed,a=1")
@example(document={"fuzzed": {"endpoint": [{"base": "/x", "stem": "{a}"}], "request": {"a": [{"type": 3}]}}},
         suffix=".json", pairs_text="event=fuzzed,a=1")
@example(document={"fuzzed": {"endpoint": [{"engine": [[]], "base": "/x", "stem": "{a}"}], "request": {}}},
         suffix=".yaml", pairs_text="event=fuzzed,a=1")
def test_schema_files(fuzz_store: Store, scratch: Path, document: Any, suffix: str, pairs_text: str) -> None:
    """``--schema FILE`` with the fuzzed event, then the keys of a request of it."""
    path = scratch / f"schema{suffix}"
    try:
        path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    except (yaml.YAMLError, UnicodeEncodeError):
        path.write_text(repr(document), encoding="utf-8", errors="surrogateescape")
    before = revision(fuzz_store)
    for argv in (["schema", "--schema", str(path)], ["key", "--schema", str(path), pairs_text]):
        code, _, err = run(argv)
        assert_clear_exit(code, err)
    assert revision(fuzz_store) == before


@FUZZ
@given(endpoint=st.one_of(st.sampled_from(["", " ", "http://", "ftp://127.0.0.1:1", "127.0.0.1:0", "127.0.0.1:99999",
                                           "http://[::1", "http://127.0.0.1:x", "//", ",", "a,b", "http://a b",
                                           "\x00", "é:1"]), st.text(max_size=12)),
       config=st.one_of(st.none(), st.sampled_from(["endpoints: 5", "endpoints: [1, 2]", "timeout: -1",
                                                    "timeout: x", "bogus: 1", "- a", "{", "\udcff", "max_txn_ops: 2",
                                                    "headers: 5", "schema_files: [/nonexistent.yaml]"])))
@example(endpoint="http://[::1", config=None)
@example(endpoint="127.0.0.1:0", config=None)
@example(endpoint="127.0.0.1:2379", config="\udcff")
@example(endpoint="127.0.0.1:2379", config="{")
@example(endpoint="127.0.0.1:2379", config="schema_files: [/nonexistent/schema.yaml]")
def test_store_options(fuzz_store: Store, scratch: Path, endpoint: str, config: str | None) -> None:
    """``--endpoint`` and ``--config`` are checked before any connection (``key`` needs none)."""
    argv = ["key", "--endpoint", endpoint]
    if config is not None:
        path = scratch / "config.yaml"
        path.write_bytes(config.encode("utf-8", "surrogateescape"))
        argv += ["--config", str(path)]
    argv.append("event=mars,class=od,expver=1,domain=g,date=20250101,time=0,stream=oper,step=0")
    code, _, err = run(argv)
    assert_clear_exit(code, err)


def test_empty_progress_command_is_refused_before_waiting(fuzz_store: Store) -> None:
    """A progress command with no program would fail on the first key found: it is refused at once."""
    pairs_text = "event=mars,class=od,expver=1,domain=g,date=20240229,time=0,stream=oper,step=0"
    fuzz_store.notify(dict(item.split("=") for item in pairs_text.split(",")))
    before = revision(fuzz_store)
    for command in ("", "   "):
        code, out, err = run(["wait", pairs_text, "--timeout", "5", "--progress-command", command])
        assert code == 2 and "progress-command" in err and not out, err
        assert_clear_exit(code, err)
    assert run(["wait", pairs_text, "--timeout", "5", "--progress-command", "true {found}"])[0] == 0
    assert revision(fuzz_store) == before


END_TO_END = [
    (["notify", "event=mars,class=od,expver=1,domain=g,date=20250230,time=0,stream=oper,step=0"], 2),
    (["notify", "event=mars,class=od,expver=1,domain=g,date=20250101,time=2400,stream=oper,step=0"], 2),
    (["notify", "event=mars,class=od,expver=1,domain=g,date=20250101,time=0,stream=oper,step=0/to/10/by/0"], 2),
    (["notify", "event=mars,class=od,expver=1,domain=g,date=19000101/to/19270518,time=0,stream=oper,"
                "step=0/to/99999"], 2),
    (["notify", "event=mars,class=od,expver=1,domain=g,date=20250101,time=0,stream=oper,step=0", "--ttl", "x"], 2),
    (["wait", "event=mars,class=od,expver=1,domain=g,date=20250101,time=0,stream=oper,step=1", "--timeout", "nan"],
     2),
    (["wait", "event=mars,class=od,expver=1,domain=g,date=20250101,time=0,stream=oper,step=1", "--timeout", "0",
      "--progress-command", "'"], 2),
    (["listen", "event=mars,class=od", "--from", "0001-01-01T00:00:00+05:00", "--to", "2026-01-01"], 2),
    (["key", "event=dissemination,destination=../..,target=*,class=od,expver=1,domain=g,date=20250101,time=0,"
             "stream=oper,step=0"], 2),
    (["key", "event=mars,class=od,expver=1,domain=g,date=20250101,time=0,stream=oper,step=6"], 0),
    (["notify", "event=mars,class=OD,expver=7,domain=G,date=2025-01-01,time=1200,stream=Oper,step=+6"], 0),
]


@pytest.mark.parametrize(("argv", "expected"), END_TO_END, ids=[" ".join(a)[:60] for a, _ in END_TO_END])
def test_installed_command(fuzz_store: Store, argv: list[str], expected: int) -> None:
    """The console script: exit code, one line of error, a store changed only by a successful notify."""
    before = revision(fuzz_store)
    done = subprocess.run([str(COMMAND), *argv], capture_output=True, text=True, timeout=SUBPROCESS_SECONDS,
                          check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == expected, done.stderr
    assert_clear_exit(done.returncode, done.stderr)
    if expected == 2:
        assert revision(fuzz_store) == before
    elif argv[0] == "notify":
        assert "/ec/mars/date=20250101,class=od,expver=0007,domain=g,time=12,stream=oper,step=6" in done.stdout
        assert fuzz_store.gateway.get(keys_printed(done.stdout)[0])[1] is not None
    else:
        assert done.stdout.strip() == "/ec/mars/date=20250101,class=od,expver=0001,domain=g,time=00,stream=oper,step=6"
