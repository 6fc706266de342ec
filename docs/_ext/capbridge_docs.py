"""Directives that render parts of the documentation from the code itself.

* ``.. seccomp-policy::`` - the seccomp allow-list from ``sandbox_vm._policy`` as
  tables, one per group, plus the syscalls denied on purpose with their reasons.
* ``.. cli-help:: [run|shell|check]`` - the ``--help`` text of the command line.
* ``.. optional-literal:: PATH`` - a file shown as a literal block if it exists,
  otherwise a short note (so the build does not depend on it).
"""

from __future__ import annotations

import os
import platform

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective


#: Stands for the sandbox's own pid in rules that compare pids (not a real pid).
PLACEHOLDER_PID = 0x7FFF_FFF0


def _table(headers: list[str], rows: list[list[str]], widths: list[int]) -> nodes.table:
    table = nodes.table()
    group = nodes.tgroup(cols=len(headers))
    table += group
    for w in widths:
        group += nodes.colspec(colwidth=w)
    head = nodes.thead()
    group += head
    row = nodes.row()
    for h in headers:
        row += nodes.entry("", nodes.paragraph(text=h))
    head += row
    body = nodes.tbody()
    group += body
    for cells in rows:
        row = nodes.row()
        for i, text in enumerate(cells):
            para = nodes.paragraph()
            if i == 0:
                para += nodes.literal(text=text)
            else:
                para += nodes.Text(text)
            row += nodes.entry("", para)
        body += row
    return table


def _value(v: int, pid: int) -> str:
    if v == pid:
        return "own pid"
    return hex(v) if v > 9 else str(v)


def _condition(rule, pid: int) -> str:  # noqa: ANN001
    parts = []
    for check in rule.when:
        half = "" if check.half == "lo" else " (high half)"
        if check.op == "in":
            vals = [_value(v, pid) for v in check.values]
            if len(vals) == 1:
                parts.append(f"arg{check.arg}{half} is {vals[0]}")
            else:
                parts.append(f"arg{check.arg}{half} in {{{', '.join(vals)}}}")
        elif check.op == "all_set":
            parts.append(f"arg{check.arg}{half} has all bits of {check.values[0]:#x}")
        else:
            parts.append(f"arg{check.arg}{half} has none of {check.values[0]:#x}")
    return " and ".join(parts)


class SeccompPolicy(SphinxDirective):
    has_content = False
    option_spec = {"arch": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        from sandbox_vm import _policy

        arch = self.options.get("arch") or "x86_64"
        # The pid is a placeholder: rules that compare pids use the sandbox's own.
        policy = _policy.build_policy(PLACEHOLDER_PID, arch)
        out: list[nodes.Node] = []
        intro = nodes.paragraph()
        intro += nodes.Text(
            f"Rendered at build time from sandbox_vm._policy for {arch} "
            f"(the build machine is {platform.machine() or 'unknown'}). Default action: "
            f"{policy.default}. \"own pid\" below is the sandbox's pid as it sees itself."
        )
        out.append(intro)
        for group in policy.groups:
            sec = nodes.rubric(text=f"{group.name}: {group.reason}")
            out.append(sec)
            rows = []
            for rule in group.rules:
                action = str(rule.action)
                cond = _condition(rule, policy.pid)
                if cond:
                    action = f"{action} if {cond}, else {rule.otherwise}"
                rows.append([rule.syscall, action, rule.reason])
            out.append(_table(["syscall", "action", "why"], rows, [18, 40, 42]))
        out.append(nodes.rubric(text="Denied on purpose (default action, reasons on record)"))
        rows = [[name, reason] for name, reason in sorted(_policy.denied_syscalls().items())]
        out.append(_table(["syscall", "why it is denied"], rows, [22, 78]))
        return out


class CliHelp(SphinxDirective):
    required_arguments = 0
    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        from capbridge import _cli

        parser = _cli._parser()
        if self.arguments:
            sub = self.arguments[0]
            actions = [a for a in parser._actions if getattr(a, "choices", None) and sub in a.choices]
            if not actions:
                raise self.error(f"no subcommand {sub!r} in the capbridge command line")
            parser = actions[0].choices[sub]
        old = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "88"
        try:
            text = parser.format_help()
        finally:
            if old is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = old
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


class OptionalLiteral(SphinxDirective):
    required_arguments = 1
    option_spec = {"language": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        rel, path = self.env.relfn2path(self.arguments[0])
        if not os.path.exists(path):
            para = nodes.paragraph()
            para += nodes.Text(f"({self.arguments[0].lstrip('/')} is not present in this checkout.)")
            return [para]
        self.env.note_dependency(rel)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        block = nodes.literal_block(text, text)
        block["language"] = self.options.get("language", "text")
        return [block]


def setup(app):  # noqa: ANN001, ANN201
    app.add_directive("seccomp-policy", SeccompPolicy)
    app.add_directive("cli-help", CliHelp)
    app.add_directive("optional-literal", OptionalLiteral)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
