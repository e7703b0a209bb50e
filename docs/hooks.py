"""The reference pages, generated from the code at every build so that they cannot drift from
it: nothing under ``reference/`` but ``python.md`` exists on disk.

- ``reference/cli.md``: every command of ``streamq.cli``'s parser, its usage and options;
- ``reference/configuration.md``: the config Structs of ``streamq.config``, as TOML tables;
- ``reference/data-layout.md``: every key builder of ``streamq.keys``, with the key it makes;
- ``reference/admin-api.md``: the admin API's OpenAPI document (``streamq.admin``);
- ``reference/events.md``: every event type (``streamq.config.EVENT_TYPES``) and the fields of
  ``streamq.Event``;
- ``rate-limits.md``'s built-in limits, where it says ``{{ builtin_limits }}``: the limits
  ``streamq.limiter.DEFAULT_LIMITS`` enforces, with the source of each figure from that
  module's docstring;
- ``performance.md``'s recorded runs: ``bench/RESULTS.md`` itself, its headings moved one level
  down, where the page says ``{{ bench_results }}``: figures are never retyped into the docs.

A mkdocs hook (``hooks:`` in mkdocs.yml) rather than a plugin package or generated files kept
in git: the pages are made from the modules the build imports, so there is nothing to keep
current and no check that it is.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

GENERATED: dict[str, Callable[[], str]] = {}
"""Each generated page's path under docs/, and what writes it."""


def page(path: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    def register(write: Callable[[], str]) -> Callable[[], str]:
        GENERATED[path] = write
        return write

    return register


ROOT = Path(__file__).resolve().parent.parent


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Snippets (``--8<-- "examples/..."``) are read from the checkout's top, wherever mkdocs
    was started from."""
    snippets = config.mdx_configs.get("pymdownx.snippets")
    if snippets is not None:
        snippets["base_path"] = [str(ROOT)]
    return config


BENCH_RESULTS = "{{ bench_results }}"


BUILTIN_LIMITS = "{{ builtin_limits }}"


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if BENCH_RESULTS in markdown:
        markdown = markdown.replace(BENCH_RESULTS, bench_results())
    if BUILTIN_LIMITS in markdown:
        markdown = markdown.replace(BUILTIN_LIMITS, builtin_limits())
    return markdown


_LIMITS_SOURCE_COLUMN = 36
"""Where the source column of limiter.py's docstring table begins."""


def builtin_limits() -> str:
    """The built-in limits as a table: each platform's limits from the code, and its sources
    from the docstring's table (a platform missing there fails the build)."""
    from streamq import limiter

    sources: dict[str, list[str]] = {}
    platform = ""
    for line in (limiter.__doc__ or "").splitlines():
        if not line.startswith("    ") or len(line) <= _LIMITS_SOURCE_COLUMN:
            platform = ""
            continue
        name = line[4:15].strip()
        if name:
            platform = name
            sources[platform] = []
        if platform:
            sources[platform].append(line[_LIMITS_SOURCE_COLUMN:].strip())
    rows = []
    for name, limits in limiter.DEFAULT_LIMITS.items():
        if name not in sources:
            raise ValueError(f"streamq/limiter.py's docstring gives no source for {name}")
        shown = ", ".join(
            f"{limit.scope} {limit.max:,} / {_duration(limit.per)}"
            if limit.max is not None and limit.per is not None
            else f"{limit.scope} one per {_duration(limit.min_interval or 0)}"
            for limit in limits
        )
        rows.append([name, shown, cell(" ".join(sources[name]))])
    return table(["stream", "limits", "source"], rows)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count * 24}h" if unit == "d" and count == 1 else f"{count}{unit}"
    return f"{seconds:g}s"


def bench_results() -> str:
    """bench/RESULTS.md under the page's own title: its title dropped and every heading one
    level down, so each recorded run is a section of the page (with its date and machine)."""
    lines = (ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8").splitlines()
    out = []
    fence = False
    for line in lines:
        if line.startswith("```"):
            fence = not fence
        if not fence and line.startswith("# "):
            continue  # the file's own title: the page has one
        if not fence and line.startswith("#"):
            line = "#" + line
        out.append(line)
    return "\n".join(out)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for path, write in GENERATED.items():
        files.append(File.generated(config, path, content=write()))
    return files


# -- Markdown helpers ---------------------------------------------------------------------------

_CODE_SPAN = re.compile(r"(``.+?``|`[^`]+`)")


def cell(text: str) -> str:
    """Prose for one table cell: on one line, with what Markdown would take for a cell break
    or an HTML tag escaped outside code spans."""
    parts = _CODE_SPAN.split(" ".join(text.split()))
    for index in range(0, len(parts), 2):
        parts[index] = parts[index].replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return "".join(parts)


def prose(text: str | None) -> str:
    """A docstring as Markdown paragraphs: indented blocks stay code blocks."""
    return inspect.cleandoc(text or "")


def code(text: str) -> str:
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# -- the command line ---------------------------------------------------------------------------

HELP_WIDTH = 88


@page("reference/cli.md")
def cli_reference() -> str:
    from streamq import cli
    from streamq.commands import common

    parser = cli.build_parser()
    out = [
        "# Command line",
        "",
        "Generated from the parser of `streamq` (`streamq/cli.py` and `streamq/commands/`) at "
        "every build: what `streamq COMMAND --help` prints, on one page.",
        "",
        prose(common.__doc__),
        "",
        "## Common options {#common-options}",
        "",
        "Every command that talks to Redis takes these, before or after a group's action "
        "(`streamq job --redis-url U show ID` and `streamq job show ID --redis-url U` mean the "
        "same; the last one given wins). Commands that do not connect take only the logging "
        "options.",
        "",
    ]
    commands = list(_subcommands(parser))
    first = commands[0][1]
    out += [_options_table([a for a in first._actions if _is_common(first, a)]), ""]
    out += ["## Commands {#commands}", ""]
    out += [
        table(
            ["command", "what it does"],
            [
                [f"[{code('streamq ' + name)}](#{_anchor(name)})", cell(h)]
                for name, _, h in commands
            ],
        ),
        "",
    ]
    for name, sub, help_text in commands:
        out += _command_section(f"streamq {name}", sub, help_text, level=2)
    return "\n".join(out)


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, Any, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name, "")


def _anchor(name: str) -> str:
    return "streamq-" + name.replace(" ", "-")


def _is_common(parser: argparse.ArgumentParser, action: argparse.Action) -> bool:
    return any(
        action in group._group_actions
        for group in parser._action_groups
        if (group.title or "").startswith("common options")
    )


def _command_section(title: str, parser: Any, help_text: str, level: int) -> list[str]:
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=HELP_WIDTH)
    name = title.removeprefix("streamq ")
    out = [f"{'#' * level} {title} {{#{_anchor(name)}}}", ""]
    if help_text:
        out += [cell(help_text[:1].upper() + help_text[1:]) + ".", ""]
    out += ["```text", parser.format_usage().rstrip(), "```", ""]
    own = [
        action
        for action in parser._actions
        if not _is_common(parser, action)
        and not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
        and action.help != argparse.SUPPRESS
    ]
    if own:
        out += [_options_table(own, parser.formatter_class(parser.prog)), ""]
    if any(_is_common(parser, action) for action in parser._actions):
        out += ["With the [common options](#common-options).", ""]
    for action_name, sub, action_help in _subcommands(parser):
        out += _command_section(f"{title} {action_name}", sub, action_help, level + 1)
    return out


def _options_table(
    actions: list[argparse.Action], formatter: argparse.HelpFormatter | None = None
) -> str:
    formatter = formatter or argparse.HelpFormatter("streamq", width=HELP_WIDTH)
    rows = []
    for action in actions:
        if action.option_strings:
            metavar = (
                formatter._format_args(action, action.dest.upper()) if action.nargs != 0 else ""
            )
            flags = ", ".join(code(f"{flag} {metavar}".strip()) for flag in action.option_strings)
        else:
            flags = code(formatter._metavar_formatter(action, action.dest)(1)[0])
        help_text = formatter._expand_help(action) if action.help else ""
        rows.append([flags, cell(help_text)])
    return table(["option", "meaning"], rows)


# -- the configuration --------------------------------------------------------------------------


@page("reference/configuration.md")
def configuration_reference() -> str:
    from streamq import config

    out = [
        "# Configuration",
        "",
        "Generated from the Structs of `streamq/config.py` at every build: each TOML table, its "
        "fields, their types, defaults and meaning.",
        "",
        prose(config.__doc__),
        "",
    ]
    notes = _field_notes(inspect.getsource(config))
    for path, anchor, struct in _tables(config.Config, "", "top-level"):
        title = "Top level" if not path else code(path)
        out += [f"## {title} {{#{anchor}}}", ""]
        if struct.__doc__ and struct.__doc__ != msgspec.Struct.__doc__:
            out += [prose(struct.__doc__), ""]
        rows = []
        for field in _struct_fields(struct):
            note, annotation = notes[struct.__name__].get(field.name, ("", ""))
            nested = _nested_table(field.type)
            if nested is not None:
                kind, inner = nested
                link = f"[{code(_table_path(path, field.name, kind))}](#{_table_anchor(inner)})"
                note = f"{note} See {link}." if note else f"See {link}."
            rows.append([code(field.name), code(annotation), _default(field), cell(note)])
        out += [table(["field", "type", "default", "meaning"], rows), ""]
    return "\n".join(out)


def _struct_fields(struct: type) -> tuple[msgspec.inspect.Field, ...]:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType), struct
    return info.fields


def _tables(struct: type, path: str, anchor: str) -> Iterator[tuple[str, str, type]]:
    """Each Struct as the TOML table that holds it, depth first from the top level."""
    yield path, anchor, struct
    for field in _struct_fields(struct):
        nested = _nested_table(field.type)
        if nested is not None:
            kind, inner = nested
            yield from _tables(inner, _table_path(path, field.name, kind), _table_anchor(inner))


def _nested_table(info: msgspec.inspect.Type) -> tuple[str, type] | None:
    """("table" | "named" | "array", Struct) for a field holding Structs, else None."""
    if isinstance(info, msgspec.inspect.UnionType):
        found = [_nested_table(t) for t in info.types]
        return next((f for f in found if f is not None), None)
    if isinstance(info, msgspec.inspect.StructType):
        return "table", info.cls
    if isinstance(info, msgspec.inspect.DictType) and isinstance(
        info.value_type, msgspec.inspect.StructType
    ):
        return "named", info.value_type.cls
    if isinstance(info, msgspec.inspect.VarTupleType | msgspec.inspect.ListType) and isinstance(
        info.item_type, msgspec.inspect.StructType
    ):
        return "array", info.item_type.cls
    return None


def _table_path(path: str, name: str, kind: str) -> str:
    inside = path.strip("[]")
    dotted = f"{inside}.{name}" if inside else name
    if kind == "named":
        return f"[{dotted}.<name>]"
    if kind == "array":
        return f"[[{dotted}]]"
    return f"[{dotted}]"


def _table_anchor(struct: type) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", struct.__name__).lower()


def _field_notes(source: str) -> dict[str, dict[str, tuple[str, str]]]:
    """Per class, per field: the docstring written under it and its annotation as written
    (the module's own attributes under the name "")."""
    tree = ast.parse(source)
    found = {"": _attribute_notes(tree.body)}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            found[node.name] = _attribute_notes(node.body)
    return found


def _attribute_notes(body: list[ast.stmt]) -> dict[str, tuple[str, str]]:
    notes: dict[str, tuple[str, str]] = {}
    for statement, after in zip(body, [*body[1:], None], strict=True):
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            name, annotation = statement.target.id, ast.unparse(statement.annotation)
        elif (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
        ):
            name, annotation = statement.targets[0].id, ""
        else:
            continue
        note = ""
        if (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            note = inspect.cleandoc(after.value.value)
        notes[name] = (note, annotation)
    return notes


def _default(field: msgspec.inspect.Field) -> str:
    if field.required:
        return "required"
    if field.default is not msgspec.NODEFAULT:
        value = field.default
    else:
        value = field.default_factory()
        if isinstance(value, msgspec.Struct):
            return "its table's defaults"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return code(str(value).lower())
    if isinstance(value, tuple | list):
        return code(msgspec.json.encode(list(value)).decode())
    return code(msgspec.json.encode(value).decode())


# -- the Redis data layout ----------------------------------------------------------------------

KEY_PLACEHOLDERS: dict[str, Any] = {
    "stream": "S",
    "account": "<A>",
    "job_id": "<id>",
    "priority": "<L>",
    "lane": "<L>",
    "state": "<state>",
    "platform": "<P>",
    "streams": ["S1", "S2"],
    "flow_id": "<F>",
    "key": "<key>",
    "minute_ms": "<minute ms>",
}
"""What each parameter of a key builder is called on the page."""


@page("reference/data-layout.md")
def data_layout_reference() -> str:
    from streamq import keys

    out = [
        "# Redis data layout",
        "",
        "Generated from `streamq/keys.py` at every build: every key streamq writes is built "
        "by one of the functions below (the per-account ones also inside the Lua scripts, "
        "held to these by `tests/test_keys.py`).",
        "",
        prose(keys.__doc__),
        "",
        "## Key builders {#key-builders}",
        "",
        "Each builder called with placeholders: `S` a stream (or partition), `<A>` an account, "
        "`<L>` a priority lane, `<P>` a platform.",
        "",
    ]
    notes = _field_notes(inspect.getsource(keys))[""]
    overview = _layout_lines(keys.__doc__ or "")
    rows = []
    for name, value in vars(keys).items():
        if name.isupper() and isinstance(value, str) and value.startswith(keys.PREFIX + ":"):
            rows.append([code(value), code(f"keys.{name}"), cell(notes[name][0])])
    for name, function in vars(keys).items():
        if (
            not inspect.isfunction(function)
            or function.__module__ != keys.__name__
            or name.startswith("_")
            or name.endswith("_prefix")  # a key's beginning, not a key
        ):
            continue
        for call, key in _key_examples(function):
            if isinstance(key, str) and key.startswith(keys.PREFIX + ":"):
                meaning = prose(function.__doc__) or overview.get(key, "")
                rows.append([code(key), code(f"keys.{call}"), cell(meaning)])
    out += [table(["key", "built by", "meaning"], rows), ""]
    return "\n".join(out)


_LAYOUT_LINE = re.compile(r"^ {4}(streamq:\S+(?: \| \S+)?) {2,}(.+)$")


def _layout_lines(doc: str) -> dict[str, str]:
    """The module docstring's table as {key: meaning}, with the placeholders the builders are
    called with: what a builder without a docstring of its own is described by."""
    found: dict[str, str] = {}
    last: list[str] = []
    for line in doc.splitlines():
        match = _LAYOUT_LINE.match(line)
        if match:
            first, *others = match[1].replace("high|normal|low", "<L>").split(" | ")
            stem = first[: first.rindex("}:") + 2] if "}:" in first else ""
            last = [first, *(stem + other for other in others)]
            for key in last:
                found[key] = match[2].strip()
        elif last and line.startswith(" " * 8) and line.strip():
            for key in last:
                found[key] += " " + line.strip()
        else:
            last = []
    return found


def _key_examples(function: Callable[..., Any]) -> Iterator[tuple[str, Any]]:
    """The function called with placeholders (and once more without its optional arguments);
    nothing for one that refuses them, as the validators do."""
    parameters = inspect.signature(function).parameters
    if any(name not in KEY_PLACEHOLDERS for name in parameters):
        return
    args = {name: KEY_PLACEHOLDERS[name] for name in parameters}
    required = {
        name: args[name]
        for name, parameter in parameters.items()
        if parameter.default is inspect.Parameter.empty
    }
    for given in [args, required] if len(required) < len(args) else [args]:
        shown = ", ".join(str(value) for value in given.values())
        try:
            yield f"{function.__name__}({shown})", function(**given)
        except ValueError:
            return


# -- the events -------------------------------------------------------------------------------

EVENT_MEANINGS = {
    "queued": "the job entered its lane: enqueued due now, came due, was released or sent back",
    "scheduled": "the job waits for its time (`run_at_ms`)",
    "started": "a run started (written with its outcome, with the handler's start time)",
    "retried": "a run failed and the job will run again at `run_at_ms`; `error` says why",
    "done": "the handler returned; `result` is what it returned",
    "dead": "the job went to the dead-letter stream; `error` is the reason",
    "cancelled": "the job was cancelled",
    "expired": "the job came due more than `expire_after` late and was not run",
    "rate-limited": "a limit or the platform deferred the job to `run_at_ms`, no attempt used",
    "paused": "the job was parked while its account is paused; `error` is the pause's reason",
    "account.reauth_required": "the account's token cannot be refreshed: a person must sign "
    "in again; `job` found out, `error` is the platform's reason",
    "flow.done": "a flow ended with every step done (or ignored); `job` is the flow's id, "
    "`result` each step's final state",
    "flow.failed": 'a flow\'s step failed with `on_failure = "fail_flow"`',
    "flow.partially_done": "a flow ended with a failed step whose policy was `continue`",
    "flow.cancelled": "a flow was cancelled",
    "admin": "an operator acted through the admin API: `by` the token's name, `action`, "
    "`target`, `detail` (see [the admin API](../admin-api.md#the-audit-trail))",
}
"""What each event type means: the page fails to build if a type has no line here, or a line
has no type, so the page holds exactly the types the code writes."""


@page("reference/events.md")
def events_reference() -> str:
    from streamq import config, events

    missing = set(config.EVENT_TYPES) ^ set(EVENT_MEANINGS)
    if missing:
        raise ValueError(f"docs/hooks.py EVENT_MEANINGS out of step with the code: {missing}")
    notes = _field_notes(inspect.getsource(events))["Event"]
    out = [
        "# Events",
        "",
        "Generated from `streamq/config.py` (`EVENT_TYPES`) and `streamq/events.py` (`Event`) "
        "at every build. How to read them, follow them and receive them as webhooks: "
        "[events, webhooks and hooks](../events.md).",
        "",
        "## Types {#types}",
        "",
        table(
            ["type", "meaning"],
            [[code(name), cell(EVENT_MEANINGS[name])] for name in config.EVENT_TYPES],
        ),
        "",
        "## Fields {#fields}",
        "",
        "What `q.events(...)` yields (`streamq.Event`); `streamq events --json` and a webhook's "
        "body carry the same.",
        "",
    ]
    rows = []
    for field in _struct_fields(events.Event):
        note, annotation = notes.get(field.name, ("", ""))
        rows.append([code(field.name), code(annotation), cell(note)])
    out += [table(["field", "type", "meaning"], rows), ""]
    return "\n".join(out)


# -- the admin API ------------------------------------------------------------------------------


@page("reference/admin-api.md")
def admin_api_reference() -> str:
    from streamq import admin

    document = admin.openapi_document()
    out = [
        "# Admin API",
        "",
        f"Generated from the OpenAPI {document['openapi']} document of `streamq admin` "
        "(`streamq/admin.py`) at every build; a running server serves the same document at "
        "`/api/openapi.json`.",
        "",
        prose(admin.__doc__),
        "",
        "## Routes {#routes}",
        "",
    ]
    operations = [
        (method, path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]
    out += [
        table(
            ["method", "path", "what it does"],
            [
                [method.upper(), f"[{code(path)}](#{op['operationId']})", cell(op["summary"])]
                for method, path, op in operations
            ],
        ),
        "",
    ]
    for method, path, op in operations:
        out += [f"### {method.upper()} {code(path)} {{#{op['operationId']}}}", ""]
        out += [cell(op["summary"]) + ".", ""]
        if op.get("security"):
            out += ["Needs `Authorization: Bearer <token>`.", ""]
        if op.get("parameters"):
            rows = [
                [
                    code(p["name"]),
                    p["in"],
                    "yes" if p.get("required") else "no",
                    _schema_type(p["schema"]),
                    cell(p.get("description", "")),
                ]
                for p in op["parameters"]
            ]
            out += [table(["parameter", "in", "required", "type", "meaning"], rows), ""]
        if "requestBody" in op:
            body = op["requestBody"]
            schema = _schema_type(body["content"]["application/json"]["schema"])
            required = "required" if body.get("required") else "optional"
            out += [f"Body ({required}): {schema}.", ""]
        rows = [
            [status, cell(answer["description"]), _answer_schema(answer)]
            for status, answer in sorted(op["responses"].items())
        ]
        out += [table(["status", "meaning", "body"], rows), ""]
    out += ["## Schemas {#schemas}", ""]
    for name, schema in document["components"]["schemas"].items():
        out += [f"### {name} {{#{_schema_anchor(name)}}}", ""]
        if schema.get("description"):
            out += [cell(schema["description"]), ""]
        properties = schema.get("properties", {})
        if properties:
            needed = set(schema.get("required", ()))
            rows = [
                [
                    code(prop),
                    _schema_type(spec),
                    "yes" if prop in needed else "no",
                    cell(spec.get("description", "")),
                ]
                for prop, spec in properties.items()
            ]
            out += [table(["field", "type", "required", "meaning"], rows), ""]
        else:
            out += [f"A value of type {_schema_type(schema)}.", ""]
    return "\n".join(out)


def _schema_anchor(name: str) -> str:
    return "schema-" + name.lower()


def _answer_schema(answer: dict[str, Any]) -> str:
    content = answer.get("content", {}).get("application/json")
    return _schema_type(content["schema"]) if content else ""


def _schema_type(schema: dict[str, Any]) -> str:
    """A JSON schema in a few words, its named schemas linked."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{_schema_anchor(name)})"
    for combined in ("anyOf", "oneOf"):
        if combined in schema:
            return " or ".join(_schema_type(s) for s in schema[combined])
    if "enum" in schema:
        return "one of " + ", ".join(code(str(v)) for v in schema["enum"])
    if "const" in schema:
        return code(str(schema["const"]))
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array":
        items = schema.get("items")
        return f"array of {_schema_type(items)}" if items else "array"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_schema_type(schema['additionalProperties'])}"
    if schema.get("format"):
        return f"{kind} ({schema['format']})"
    return str(kind)
