"""The crawler's GraphQL queries against AniList's real schema (tests/anilist_schema.graphql,
generated from AniList's published API reference by tests/make_anilist_schema.py): every
query data_query.py sends parses and validates; a misspelt one does not; and the stand-in
server answers an invalid query as AniList does (HTTP 400, GraphQL errors with
locations), which the real client raises as QueryRejected and a crawl stops on, marking
nothing."""

import json
import re
import sqlite3
from pathlib import Path

import graphql
import pytest
import requests
from graphql import Visitor, parse, validate, visit

import data_query as dq
from pipelines import store, synth
from tests import make_anilist_schema as make
from tests.anilist_server import SCHEMA_FILE, AniListStandIn, rejection, schema

# Every query text data_query.py defines (module-level strings named *_QUERY); queries
# built at run time are caught by test_every_query_a_crawl_sends_validates.
QUERIES = {name: value for name, value in sorted(vars(dq).items())
           if name.endswith("_QUERY") and isinstance(value, str)}


def _errors(query: str) -> list[str]:
    return [e.message for e in validate(schema(), parse(query))]


def _misspelt(query: str) -> tuple[str, str, int]:
    """``query`` with its last leaf field misspelt (two letters swapped): the new text,
    the misspelt name and where it starts."""
    leaves = []

    class Leaves(Visitor):
        def enter_field(self, node, *_):
            if node.selection_set is None:
                leaves.append(node)

    visit(parse(query), Leaves())
    name = leaves[-1].name
    wrong = name.value[:-2] + name.value[-1] + name.value[-2]
    if wrong == name.value:   # e.g. "ee": a typo of another kind
        wrong = name.value + "x"
    start, end = name.loc.start, name.loc.end
    return query[:start] + wrong + query[end:], wrong, start


def _unknown_field(name: str) -> re.Pattern:
    """graphql-core's message for an unknown field (AniList's server words it alike)."""
    return re.compile(rf"Cannot query field ['\"]{re.escape(name)}['\"] on type ")


def _line_column(text: str, offset: int) -> dict:
    line_start = text.rfind("\n", 0, offset) + 1
    return {"line": text.count("\n", 0, offset) + 1, "column": offset - line_start + 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    db = tmp_path_factory.mktemp("anilist_schema") / "world.db"
    synth.run(db, users=12, anime=60, entries_per_user=10, seed=5, progress=False)
    return db


def _client(server):
    return dq.AniListClient(server.url, rate=0, backoff=0.001, timeout=5.0)


# -- the schema ------------------------------------------------------------------------

def test_sdl_builds_and_records_its_source():
    text = SCHEMA_FILE.read_text(encoding="utf-8")
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "AniList/ApiV2-GraphQL-Docs" in header
    assert re.search(r"commit [0-9a-f]{40} \(\d{4}-\d{2}-\d{2}\)", header)
    built = graphql.build_schema(text)
    assert built.query_type.name == "Query" and built.mutation_type is None
    # The root fields the crawler uses, with the arguments it passes.
    root = built.query_type.fields
    assert {"chunk", "perChunk", "userId", "type"} <= set(root["MediaListCollection"].args)
    assert {"Page", "User", "Media"} <= set(root)
    assert {"version"} <= set(built.type_map["Media"].fields["source"].args)


def test_sdl_is_what_the_generator_writes():
    if not Path(make.DEFAULT_REPO).exists():
        pytest.skip(f"no copy of {make.REPOSITORY} at {make.DEFAULT_REPO}")
    assert make.render(make.read_source(make.DEFAULT_REPO)) == \
        SCHEMA_FILE.read_text(encoding="utf-8"), \
        "stale: rerun python tests/make_anilist_schema.py"


def _page(title: str, body: str) -> str:
    return f"---\ntitle: {title} Reference\n---\n\n{body}"


def _row(first: str, type_cell: str, description: str = "", argument: bool = False) -> str:
    attrs = ' colspan="2" align="right" valign="top"' if argument else ' colspan="2" valign="top"'
    return (f"<tr>\n<td{attrs}>{first}</td>\n<td valign=\"top\">{type_cell}</td>\n"
            f"<td>\n{description}\n</td>\n</tr>")


FIELDS_HEAD = ('<table>\n<thead>\n<tr>\n<th align="left">Field</th>\n<th align="right">Argument'
               '</th>\n<th align="left">Type</th>\n<th align="left">Description</th>\n</tr>\n'
               '</thead>\n<tbody>\n')


def test_generator_reads_the_reference_layout():
    """The generator on a miniature reference in the published pages' layout: arguments
    under their field, wrapped types, deprecations, inputs linked as input_object,
    enums, and scalars that appear only as bare sections of a union page."""
    link = '<a href="/reference/{}/{}">{}</a>'.format
    pages = {
        "query.md": _page("Query", "# Root Query\n\n" + FIELDS_HEAD + "\n".join([
            _row("<strong>Thing</strong>", link("object", "thing", "Thing"), "A thing"),
            _row("id", link("scalar", "int", "Int") + "!", "Its id", argument=True),
            _row("when", link("input_object", "dateinput", "DateInput"), argument=True),
        ]) + "\n</tbody>\n</table>"),
        "object/thing.md": _page("Thing", '### Thing\nA "thing" & more\n' + FIELDS_HEAD
                                 + "\n".join([
            _row("<strong>tags</strong>", f"[{link('scalar', 'string', 'String')}]!"),
            _row("<strong>old</strong> ⚠️", link("enum", "kind", "Kind"),
                 "Gone\n<p>⚠️ <strong>DEPRECATED</strong></p>\n<blockquote>\nUse tags.\n"
                 "</blockquote>"),
            _row("<strong>grid</strong>", f"[[{link('scalar', 'fuzzydateint', 'FuzzyDateInt')}]]"),
            _row("<strong>any</strong>", link("union", "either", "Either")),
        ]) + "\n</tbody>\n</table>"),
        "input/dateinput.md": _page("DateInput", "### DateInput\n<table>\n<thead>\n<tr>\n"
                                    '<th colspan="2" align="left">Field</th>\n<th align="left">'
                                    'Type</th>\n<th align="left">Description</th>\n</tr>\n'
                                    "</thead>\n<tbody>\n"
                                    + _row("<strong>year</strong>", link("scalar", "int", "Int"))
                                    + "\n</tbody>\n</table>"),
        "enum/kind.md": _page("Kind", "### Kind\n<table>\n<thead>\n<th align=\"left\">Value</th>\n"
                              "<th align=\"left\">Description</th>\n</thead>\n<tbody>\n"
                              "<tr>\n<td valign=\"top\"><strong>A</strong></td>\n<td>\nFirst\n"
                              "</td>\n</tr>\n<tr>\n<td valign=\"top\"><strong>B</strong></td>\n"
                              "<td></td>\n</tr>\n</tbody>\n</table>"),
        "union/either.md": _page("Either", "### Int\nThe `Int` scalar\n### FuzzyDateInt\n8 digits\n"
                                 "### Either\nOne or the other\n<table>\n<thead>\n"
                                 "<th align=\"left\">Type</th>\n<th align=\"left\">Description"
                                 "</th>\n</thead>\n<tbody>\n<tr>\n<td valign=\"top\"><strong>"
                                 + link("object", "thing", "Thing") + "</strong></td>\n"
                                 "<td valign=\"top\">A thing</td>\n</tr>\n</tbody>\n</table>"),
        "mutation.md": "# Root Mutation\n(left out)",
    }
    sdl = make.render(make.Source(pages, "0" * 40, "2024-01-01"))
    built = graphql.build_schema(sdl)
    thing = built.type_map["Thing"]
    assert str(built.query_type.fields["Thing"].args["id"].type) == "Int!"
    assert str(built.query_type.fields["Thing"].args["when"].type) == "DateInput"
    assert str(thing.fields["tags"].type) == "[String]!"
    assert str(thing.fields["grid"].type) == "[[FuzzyDateInt]]"
    assert thing.fields["old"].deprecation_reason == "Use tags."
    assert thing.description == 'A "thing" & more'
    assert list(built.type_map["Kind"].values) == ["A", "B"]
    assert [t.name for t in built.type_map["Either"].types] == ["Thing"]
    assert "scalar FuzzyDateInt" in sdl and "scalar Int" not in sdl   # built-ins left out
    assert built.mutation_type is None and "commit " + "0" * 40 in sdl

    # A layout it does not know stops it rather than guessing.
    broken = dict(pages, **{"enum/kind.md": pages["enum/kind.md"].replace(
        "<td></td>", "<td></td><td>extra</td>")})
    with pytest.raises(make.LayoutError, match="a row of 3 cells"):
        make.render(make.Source(broken, None, None))
    unknown = dict(pages, **{"object/thing.md": pages["object/thing.md"].replace(
        '<th align="right">Argument</th>', '<th align="right">Arguments</th>')})
    with pytest.raises(make.LayoutError, match="columns"):
        make.render(make.Source(unknown, None, None))


# -- the crawler's queries ----------------------------------------------------------------

def test_data_query_defines_queries():
    assert QUERIES, "no *_QUERY strings found in data_query.py"


@pytest.mark.parametrize("name", list(QUERIES))
def test_query_validates_against_the_schema(name):
    assert _errors(QUERIES[name]) == []


@pytest.mark.parametrize("name", list(QUERIES))
def test_a_misspelt_field_fails_validation(name):
    query, wrong, _ = _misspelt(QUERIES[name])
    errors = _errors(query)
    assert errors and any(_unknown_field(wrong).match(e) for e in errors), errors


def test_schema_checks_arguments_enum_values_and_types():
    assert _errors("{ Media(id: 1) { source(version: 3) status(version: 2) } }") == []
    assert _errors('{ Page { users(sort: [ID]) { id } } }') == []
    assert "Unknown argument 'versoin'" in _errors("{ Media { source(versoin: 3) } }")[0]
    assert "NAME_SPELT_WRONG" in _errors("{ Page { users(sort: NAME_SPELT_WRONG) { id } } }")[0]
    assert "Int" in _errors('{ Page { mediaList(userId: "7") { id } } }')[0]
    assert _errors("query ($id: String) { User(id: $id) { id } }")  # variable of the wrong type
    assert _errors("{ User { statistics } }")                       # object without selection


def test_every_query_a_crawl_sends_validates(world, tmp_path):
    """Whatever the crawl commands send, including queries built at run time."""
    sent = []
    db = tmp_path / "crawl.db"
    with AniListStandIn(world) as server:
        client = _client(server)
        post = client.session.post

        def recording_post(url, json=None, **kwargs):
            sent.append(json["query"])
            return post(url, json=json, **kwargs)

        client.session.post = recording_post
        first = int(sorted(server.users.index)[0])
        name = str(server.users.loc[first, "name"])
        conn = store.connect(db)
        try:
            users = dq.crawl_users(conn, client, pages=None, progress=False)
            by_id = dq.crawl_users(conn, client, ids=[first], names=[name], progress=False)
            lists = dq.crawl_lists(conn, client, progress=False)
            media = dq.crawl_media(conn, client, progress=False)
            refresh = dq.crawl_refresh(conn, client, progress=False)
        finally:
            conn.close()
    assert sent and users.fetched and lists.fetched and media.fetched
    for summary in (users, by_id, lists, media, refresh):
        assert summary.stopped is None, summary.stopped   # e.g. "AniList rejected the query"
    for query in dict.fromkeys(sent):
        assert _errors(query) == [], query


# -- an invalid query at the stand-in, through the real client ---------------------------------

def test_stand_in_answers_an_invalid_query_with_400_and_anilist_errors(world):
    query, wrong, offset = _misspelt(dq.USER_QUERY)
    with AniListStandIn(world) as server:
        user = int(sorted(server.users.index)[0])
        response = requests.post(server.url, json={"query": query, "variables": {"id": user}},
                                 timeout=10)
        syntax = requests.post(server.url, json={"query": "{ User { id ", "variables": {}},
                               timeout=10)
        good = requests.post(server.url, json={"query": dq.USER_QUERY, "variables": {"id": user}},
                             timeout=10)
        answered = [kind for _, kind in server.requests]
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"errors", "data"} and body["data"] is None
    (error,) = body["errors"]
    assert set(error) == {"message", "status", "locations"} and error["status"] == 400
    assert _unknown_field(wrong).match(error["message"])
    assert error["locations"] == [_line_column(query, offset)]
    assert syntax.status_code == 400 and syntax.json()["data"] is None
    assert syntax.json()["errors"][0]["message"].startswith("Syntax Error")
    assert good.status_code == 200 and good.json()["data"]["User"]["id"] == user
    assert answered == ["user"]  # only the valid query reached the answers
    assert rejection(None) and rejection(dq.USER_QUERY) is None


def test_client_surfaces_the_rejection_and_the_crawl_stops_marking_nothing(
        world, tmp_path, monkeypatch, capsys):
    """data_query's contract for HTTP 400 with GraphQL errors: the client raises
    QueryRejected (a GraphQLError) at once, never retried; a crawl stops with AniList's
    message, marks no item and exits 1; once the query is fixed, a rerun fetches."""
    query, wrong, _ = _misspelt(dq.USER_QUERY)
    db, ids = tmp_path / "crawl.db", tmp_path / "ids.txt"
    with AniListStandIn(world) as server:
        user = int(sorted(server.users.index)[0])
        client = _client(server)
        with pytest.raises(dq.QueryRejected) as raised:
            client.query(query, {"id": user})
        assert isinstance(raised.value, dq.GraphQLError) and raised.value.status == 400
        assert _unknown_field(wrong).match(str(raised.value))
        assert str(raised.value).endswith("(HTTP 400)")
        assert client.stats.requests == 1 and client.stats.retries == 0

        ids.write_text(f"{user}\n")
        command = ["users", "--ids", str(ids), "--db", str(db), "--endpoint", server.url,
                   "--rate", "0", "--quiet"]
        monkeypatch.setattr(dq, "USER_QUERY", query)
        capsys.readouterr()
        code = dq.main(command)
        out, err = capsys.readouterr()
        assert code == 1
        printed = json.loads(out)
        assert printed["stopped"].startswith("AniList rejected the query: ")
        assert _unknown_field(wrong).match(printed["stopped"].split(": ", 1)[1])
        assert printed["requests"] == 1 and printed["retries"] == 0
        assert printed["fetched"] == 0 and not printed["skipped"]
        assert "error: AniList rejected the query: " in err
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT COUNT(*) FROM crawl_state").fetchone()[0] == 0
        conn.close()
        assert server.requests == []   # rejected before any answer

        monkeypatch.undo()
        assert dq.main(command) == 0
        assert json.loads(capsys.readouterr().out)["fetched"] == 1
