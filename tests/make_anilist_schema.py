"""Regenerates tests/anilist_schema.graphql, AniList's GraphQL schema as SDL, from AniList's
published API reference (the repository AniList/ApiV2-GraphQL-Docs), so the tests validate
the crawler's queries against the real schema rather than against hand-written checks.

    python tests/make_anilist_schema.py [REPO] [--rev HEAD] [--out tests/anilist_schema.graphql]
    python tests/make_anilist_schema.py --check      # exit 1 if the committed SDL is stale

REPO is a checkout of ApiV2-GraphQL-Docs (a directory holding docs/reference) or its git
directory, read with ``git show REV:...`` (default: the mirror at ``DEFAULT_REPO``).

The reference pages (docs/reference/{object,input,enum,union,scalar,interface}/*.md and
query.md) are generated from the live schema as HTML tables; this reads them as follows:

- Each ``### Name`` (``# Root Query`` on query.md) opens a type; the text up to its
  ``<table>`` is its description.
- An output type's table (columns Field | Argument | Type | Description): a row whose first
  cell is ``<strong>name</strong>`` is a field; a row whose first cell has ``align="right"``
  is an argument of the field above it. The Type cell is the type as written, a link to the
  named type inside its wrappers (``[<a>MediaList</a>]!``); the link text must match the
  name in its href's last segment. A ``⚠️`` after the field name with
  ``<p>⚠️ <strong>DEPRECATED</strong></p><blockquote>reason</blockquote>`` in its
  description becomes ``@deprecated(reason: ...)``.
- An input's table (Field | Type | Description) has fields only; an enum's (Value |
  Description) lists values; a union's (Type | Description) lists member types.
- A section with no table is a scalar: the generator publishes no scalar pages (the
  reference's index says so) and instead prints the scalars as bare sections on the first
  union page. The built-in scalars (Int, Float, String, Boolean, ID) are left out of the SDL.
- Links to inputs say ``/reference/input_object/...`` while the pages live in ``input/``:
  only the link text (the type's name) is used, never the href's folder.
- mutation.md (the root Mutation) is left out: the crawler only reads.
- The pages show no argument defaults, so none are written (a non-null argument with a
  default would wrongly look required; the crawler's queries use none).

Anything else (an unknown column layout, a row that is neither field nor argument, a type
cell that is not a wrapped name, a name defined twice) stops the script with an error
rather than writing a schema that is silently wrong; the result must build with
``graphql.build_schema``.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from graphql import build_schema
from graphql.language.block_string import print_block_string

DEFAULT_REPO = "/work/.mirror/AniList+ApiV2-GraphQL-Docs/repo"
REPOSITORY = "AniList/ApiV2-GraphQL-Docs"
REFERENCE = "docs/reference"
OUT = Path(__file__).with_name("anilist_schema.graphql")
BUILT_IN_SCALARS = {"Int", "Float", "String", "Boolean", "ID"}
NAME = r"[_A-Za-z][_0-9A-Za-z]*"
# What each folder of the reference defines, by the columns of its table.
FOLDERS = {"object": "type", "interface": "interface", "input": "input", "enum": "enum",
           "union": "union", "scalar": "scalar"}
LAYOUTS = {("Field", "Argument", "Type", "Description"): ("type", "interface"),
           ("Field", "Type", "Description"): ("input",),
           ("Value", "Description"): ("enum",),
           ("Type", "Description"): ("union",)}
DEPRECATED = re.compile(r"<p>\s*⚠️\s*<strong>DEPRECATED</strong>\s*</p>\s*"
                        r"<blockquote>(?P<reason>.*?)</blockquote>", re.S)


class LayoutError(ValueError):
    """The pages are not laid out as this script expects."""


@dataclass
class Arg:
    name: str
    type: str
    description: str


@dataclass
class Field:
    name: str
    type: str
    description: str
    deprecated: str | None = None
    args: list[Arg] = field(default_factory=list)


@dataclass
class TypeDef:
    kind: str                      # type, interface, input, enum, union, scalar
    name: str
    description: str
    page: str
    fields: list[Field] = field(default_factory=list)     # enum values: type ""
    members: list[str] = field(default_factory=list)      # union members


# ---------------------------------------------------------------------------------------
# Reading the pages: from a checkout's files or from a git directory.

@dataclass
class Source:
    pages: dict[str, str]          # path under docs/reference -> text
    commit: str | None
    date: str | None
    note: str = ""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout


def read_source(repo: str | Path = DEFAULT_REPO, rev: str = "HEAD") -> Source:
    repo = Path(repo)
    if (repo / REFERENCE).is_dir():   # a checkout: read its files as they are
        pages = {str(p.relative_to(repo / REFERENCE)): p.read_text(encoding="utf-8")
                 for p in sorted((repo / REFERENCE).rglob("*.md"))}
        try:
            commit = _git(repo, "rev-parse", "HEAD").strip()
            date = _git(repo, "log", "-1", "--format=%cs", "HEAD").strip()
            dirty = _git(repo, "status", "--porcelain", "--", REFERENCE).strip()
        except (subprocess.CalledProcessError, FileNotFoundError):
            return Source(pages, None, None, " (not a git checkout)")
        return Source(pages, commit, date, " plus uncommitted changes" if dirty else "")
    if not repo.exists():
        raise FileNotFoundError(f"{repo}: no such checkout or git directory")
    commit = _git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    date = _git(repo, "log", "-1", "--format=%cs", commit).strip()
    names = _git(repo, "ls-tree", "-r", "--name-only", commit, REFERENCE).split()
    pages = {name[len(REFERENCE) + 1:]: _git(repo, "show", f"{commit}:{name}")
             for name in names if name.endswith(".md")}
    return Source(pages, commit, date)


# ---------------------------------------------------------------------------------------
# Parsing the HTML tables.

def _text(fragment: str) -> str:
    """Tags dropped, entities decoded, whitespace collapsed per line, blank lines trimmed."""
    text = html.unescape(re.sub(r"<[^>]+>", "", fragment))
    lines = [" ".join(line.split()) for line in text.strip().splitlines()]
    return "\n".join(lines).strip()


def _cells(row: str) -> list[tuple[str, str]]:
    return re.findall(r"<td([^>]*)>(.*?)</td>", row, re.S)


def _type(cell: str, where: str) -> str:
    """``[<a href="/reference/object/medialist">MediaList</a>]!`` -> ``[MediaList]!``."""
    links = re.findall(r'<a href="([^"]*)">([^<]*)</a>', cell)
    text = _text(cell).replace(" ", "")
    if len(links) != 1 or not re.fullmatch(rf"\[*{NAME}!?(\]!?)*", text) \
            or text.count("[") != text.count("]"):
        raise LayoutError(f"{where}: cannot read the type cell {cell!r}")
    href, name = links[0]
    if href.rstrip("/").rsplit("/", 1)[-1] != name.lower():
        raise LayoutError(f"{where}: link {href!r} does not name {name!r}")
    return text


def _description(cell: str) -> tuple[str, str | None]:
    match = DEPRECATED.search(cell)
    reason = _text(match.group("reason")) if match else None
    if match:
        cell = cell[:match.start()] + cell[match.end():]
    return _text(cell), reason


def _name_cell(body: str, where: str) -> tuple[str, bool]:
    """``<strong>stats</strong> ⚠️`` -> (``stats``, True)."""
    match = re.fullmatch(rf"\s*<strong>(?:<a [^>]*>)?({NAME})(?:</a>)?</strong>\s*(⚠️)?\s*",
                         body)
    if not match:
        raise LayoutError(f"{where}: cannot read the name cell {body!r}")
    return match.group(1), bool(match.group(2))


def parse_section(name: str, body: str, folder_kind: str, page: str) -> TypeDef:
    table = re.search(r"<table>(.*?)</table>", body, re.S)
    description = _text(body[:table.start()] if table else body)
    if not table:
        return TypeDef("scalar", name, description, page)
    heads = tuple(_text(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", table.group(1), re.S))
    kinds = LAYOUTS.get(heads)
    if kinds is None or folder_kind not in kinds:
        raise LayoutError(f"{page} {name}: a {folder_kind} page with columns {heads}")
    out = TypeDef(folder_kind, name, description, page)
    body_rows = re.search(r"<tbody>(.*?)</tbody>", table.group(1), re.S)
    tbody = body_rows.group(1) if body_rows else ""
    rows = re.findall(r"<tr>(.*?)</tr>", tbody, re.S)
    if len(re.findall(r"<tr\b", tbody)) != len(rows):
        raise LayoutError(f"{page} {name}: rows this script cannot read")
    for row in rows:
        cells = _cells(row)
        where = f"{page} {name}"
        if len(re.findall(r"<td\b", row)) != len(cells):
            raise LayoutError(f"{where}: cells this script cannot read: {row!r}")
        if folder_kind in ("type", "interface", "input"):
            if len(cells) != 3:
                raise LayoutError(f"{where}: a row of {len(cells)} cells: {row!r}")
            (attrs, first), (_, type_cell), (_, desc_cell) = cells
            text, deprecated = _description(desc_cell)
            if 'align="right"' in attrs:        # an argument of the field above
                arg = _text(first)
                if folder_kind == "input" or not out.fields or not re.fullmatch(NAME, arg):
                    raise LayoutError(f"{where}: stray argument row {row!r}")
                out.fields[-1].args.append(Arg(arg, _type(type_cell, f"{where}.{arg}"), text))
                continue
            fname, flagged = _name_cell(first, where)
            if flagged and not deprecated:
                deprecated = "No longer supported"   # GraphQL's default reason
            out.fields.append(Field(fname, _type(type_cell, f"{where}.{fname}"), text,
                                    deprecated))
        elif folder_kind == "enum":
            if len(cells) != 2:
                raise LayoutError(f"{where}: a row of {len(cells)} cells: {row!r}")
            value, flagged = _name_cell(cells[0][1], where)
            text, deprecated = _description(cells[1][1])
            if flagged and not deprecated:
                deprecated = "No longer supported"
            out.fields.append(Field(value, "", text, deprecated))
        else:                                   # union members
            if len(cells) != 2:
                raise LayoutError(f"{where}: a row of {len(cells)} cells: {row!r}")
            member, _ = _name_cell(cells[0][1], where)
            out.members.append(member)
    if not (out.fields or out.members):
        raise LayoutError(f"{page} {name}: an empty table")
    return out


def parse_page(path: str, text: str) -> list[TypeDef]:
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)   # front matter
    if path == "query.md":
        folder_kind = "type"
    else:
        folder = path.split("/")[0]
        if folder not in FOLDERS or "/" not in path:
            raise LayoutError(f"{path}: a page this script does not know")
        folder_kind = FOLDERS[folder]
    heads = list(re.finditer(r"^#{1,3} +(.+?)\s*$", text, re.M))
    out = []
    for i, head in enumerate(heads):
        name = head.group(1)
        if name == "Root Query":
            name = "Query"
        if not re.fullmatch(NAME, name):
            raise LayoutError(f"{path}: heading {head.group(0)!r} names no type")
        body = text[head.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        out.append(parse_section(name, body, folder_kind, path))
    return out


def parse_reference(pages: dict[str, str]) -> dict[str, TypeDef]:
    """Every type the pages define, by name (mutation.md, index.md and sidebar.json are
    not read)."""
    types: dict[str, TypeDef] = {}
    for path in sorted(pages):
        if not path.endswith(".md") or path in ("index.md", "mutation.md"):
            continue
        for typedef in parse_page(path, pages[path]):
            if typedef.name in types:
                raise LayoutError(f"{typedef.name} defined on {types[typedef.name].page} "
                                      f"and on {path}")
            types[typedef.name] = typedef
    if "Query" not in types:
        raise LayoutError("no query.md: no root Query")
    return types


# ---------------------------------------------------------------------------------------
# Writing SDL.

def _describe(text: str, indent: str) -> list[str]:
    if not text:
        return []
    if "\n" not in text and '"' not in text and "\\" not in text:
        return [f"{indent}{json.dumps(text, ensure_ascii=False)}"]
    block = print_block_string(text)
    return [indent + line if line else "" for line in block.split("\n")]


def _deprecation(reason: str | None) -> str:
    return f" @deprecated(reason: {json.dumps(reason, ensure_ascii=False)})" if reason else ""


def _render_type(t: TypeDef) -> list[str]:
    lines = _describe(t.description, "")
    if t.kind == "scalar":
        return lines + [f"scalar {t.name}"]
    if t.kind == "union":
        return lines + [f"union {t.name} = " + " | ".join(t.members)]
    lines.append(f"{t.kind} {t.name} {{")
    for f in t.fields:
        lines += _describe(f.description, "  ")
        if t.kind == "enum":
            lines.append(f"  {f.name}{_deprecation(f.deprecated)}")
            continue
        args = ""
        if f.args:
            parts = []
            for a in f.args:
                parts += _describe(a.description, "    ")
                parts.append(f"    {a.name}: {a.type}")
            args = "(\n" + "\n".join(parts) + "\n  )"
        lines.append(f"  {f.name}{args}: {f.type}{_deprecation(f.deprecated)}")
    return lines + ["}"]


ORDER = ["type", "interface", "union", "input", "enum", "scalar"]


def render(source: Source, repository: str = REPOSITORY) -> str:
    types = parse_reference(source.pages)
    kept = {n: t for n, t in types.items()
            if not (t.kind == "scalar" and n in BUILT_IN_SCALARS)}
    counts = {k: sum(t.kind == k for t in kept.values()) for k in ORDER}
    defined = (f"{counts['type'] - 1} objects, {counts['union']} unions,\n#   {counts['input']} "
               f"inputs, {counts['enum']} enums, {counts['scalar']} custom scalars")
    at = (f"commit {source.commit} ({source.date}){source.note}" if source.commit
          else f"a copy{source.note}")
    header = f"""\
# AniList's GraphQL schema, read side: generated by tests/make_anilist_schema.py from
# AniList's published API reference. Do not edit by hand; regenerate with
#   python tests/make_anilist_schema.py [PATH-TO-ApiV2-GraphQL-Docs]
#
# Source: {repository} (GitHub), {REFERENCE}/ at
#   {at}
# Holds: the root Query and every type the reference pages define ({defined}),
#   every field's arguments with their types, and deprecations.
# Left out: the root Mutation (the crawler only reads; the inputs it takes are kept) and
#   argument defaults (the pages show none). The reference says it is "manually generated
#   and may not always be up to date": it is a snapshot of the live schema.
"""
    blocks = [["schema {", "  query: Query", "}"], _render_type(types["Query"])]
    for kind in ORDER:
        for name in sorted(n for n, t in kept.items() if t.kind == kind and n != "Query"):
            blocks.append(_render_type(kept[name]))
    sdl = header + "\n" + "\n\n".join("\n".join(b) for b in blocks) + "\n"
    build_schema(sdl)   # must be a valid, complete schema: every named type defined
    return sdl


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tests/make_anilist_schema.py",
        description="Writes AniList's GraphQL schema (SDL) from its API reference pages.")
    parser.add_argument("repo", nargs="?", default=DEFAULT_REPO,
                        help="checkout or git directory of ApiV2-GraphQL-Docs "
                             "(default: %(default)s)")
    parser.add_argument("--rev", default="HEAD",
                        help="revision to read from a git directory (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="SDL to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if --out differs from what would be written")
    args = parser.parse_args(argv)
    try:
        sdl = render(read_source(args.repo, args.rev))
    except (LayoutError, FileNotFoundError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or ""
        print(f"error: {err} {detail}".strip(), file=sys.stderr)
        return 2
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != sdl:
            print(f"{args.out} is stale: rerun without --check", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.write_text(sdl, encoding="utf-8")
    print(f"wrote {args.out} ({len(sdl.encode()):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
