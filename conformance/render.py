"""The report document (report.to_json / report.combine) in the formats CI and
people read: JUnit XML (one testcase per check, with its clause, level and verdict
as properties, so dashboards group by clause) and one self-contained HTML page
(no scripts, styles or fonts fetched: it opens offline).

Both are pure renderings of the JSON document: they add nothing it does not say."""

from __future__ import annotations

import html
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from conformance.report import headline_of

# Characters XML 1.0 does not allow (a greeting's NUL byte in a message would make
# the whole file unreadable): shown escaped instead.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(text: Any) -> str:
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def _testcases(doc: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(clause, test) for every test; (clause, None) for a clause no test ran."""
    return [(c, t) for c in doc["clauses"] for t in (c["tests"] or [None])]


def junit(doc: dict[str, Any]) -> ET.ElementTree:
    strict = bool(doc.get("strict"))
    suites = ET.Element("testsuites", name="sockconf")
    suite = ET.SubElement(suites, "testsuite", name=_x(f"sockconf: {doc['target']['name']}"))
    props = ET.SubElement(suite, "properties")
    for k, v in [("profile", doc["target"].get("profile")), ("conformant", doc.get("conformant")),
                 ("complete", doc.get("complete")), ("strict", strict),
                 *sorted((doc.get("environment") or {}).items())]:
        ET.SubElement(props, "property", name=_x(k), value=_x("" if v is None else v))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total = 0.0
    for c, t in _testcases(doc):
        verdict = t.get("verdict", c["verdict"]) if t else c["verdict"]
        name = t["nodeid"] if t else c["id"]
        secs = float(t.get("duration_s", 0.0)) if t else 0.0
        total += secs
        case = ET.SubElement(suite, "testcase", classname=_x(c["id"]), name=_x(name),
                             time=f"{secs:.3f}")
        cprops = ET.SubElement(case, "properties")
        for k, v in (("clause", c["id"]), ("level", c["level"]), ("verdict", verdict)):
            ET.SubElement(cprops, "property", name=k, value=_x(v))
        message = (t.get("message") if t else c.get("reason")) or ""
        first = (message.strip().splitlines() or [""])[0][:500]
        counts["tests"] += 1
        if verdict == "error":
            counts["errors"] += 1
            err = ET.SubElement(case, "error", message=_x(first), type="sockconf-error")
            err.text = _x((t or {}).get("traceback") or message)
        elif verdict == "fail" or (verdict == "warn" and strict):
            counts["failures"] += 1
            fail = ET.SubElement(case, "failure", message=_x(first), type=verdict)
            fail.text = _x(message)
        elif verdict in ("skip", "not-testable"):
            counts["skipped"] += 1
            ET.SubElement(case, "skipped", message=_x(f"{verdict}: {first}"), type=verdict)
        if t and (t.get("reproduce") or t.get("artifacts") or verdict == "warn"):
            lines = [f"{verdict}: {message}"] if verdict == "warn" else []
            if t.get("reproduce"):
                lines.append(f"reproduce: {t['reproduce']}")
            lines += [f"artifact: {a}" for a in t.get("artifacts", [])]
            ET.SubElement(case, "system-out").text = _x("\n".join(lines))
    for el in (suites, suite):
        for k, n in counts.items():
            el.set(k, str(n))
        el.set("time", f"{total:.3f}")
    ET.indent(suites)
    return ET.ElementTree(suites)


def write_junit(path: str | os.PathLike[str], doc: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    junit(doc).write(p, encoding="utf-8", xml_declaration=True)


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222;max-width:80em}
h1{font-size:1.4em}table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
.v{font-weight:bold;text-transform:uppercase}
.pass{background:#d8f5d8}.fail,.error{background:#f9d0d0}.warn{background:#fff2c0}
.skip,.not-testable{background:#eee}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em;margin:.3em 0;max-height:30em;overflow:auto}
code{background:#f6f6f6;padding:0 .2em}details{margin:.2em 0}
"""


def _link(artifact: str, base: Path) -> str:
    p = Path(artifact)
    try:
        href = os.path.relpath(p.resolve(), base.resolve())
    except ValueError:
        href = p.resolve().as_uri()
    return f'<a href="{html.escape(href)}">{html.escape(p.name)}</a>'


def page(doc: dict[str, Any], base: Path) -> str:
    """The report as one HTML page; artifact links are relative to `base` (the
    folder the page is written to)."""
    e = html.escape
    tgt = doc["target"]
    out = ["<!doctype html><html lang=en><meta charset=utf-8>",
           f"<title>sockconf: {e(str(tgt['name']))}</title><style>{_STYLE}</style>",
           f"<h1>sockconf {e(str(doc.get('version')))}: {e(str(tgt['name']))} "
           f"(profile {e(str(tgt.get('profile')))})</h1>",
           f"<p class=headline><b>{e(headline_of(doc))}</b></p>"]
    if doc.get("reproduce"):
        out.append(f"<p>Run again: <code>{e(doc['reproduce'])}</code></p>")
    out.append("<table><tr>" + "".join(f"<th>{e(k)}</th>" for k in doc["summary"]) + "</tr><tr>"
               + "".join(f'<td class="{e(k)}">{n}</td>' for k, n in doc["summary"].items())
               + "</tr></table>")
    env = doc.get("environment") or {}
    if env:
        out.append("<details><summary>Environment</summary><table>"
                   + "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>"
                             for k, v in env.items()) + "</table></details>")
    out.append("<table><tr><th>clause</th><th>level</th><th>verdict</th><th>title and "
               "evidence</th></tr>")
    for c in doc["clauses"]:
        v = c["verdict"]
        cell = [f"{e(c['title'])}"]
        if c.get("reason"):
            cell.append(f"<br><i>{e(c['reason'])}</i>")
        for t in c["tests"]:
            tv = t.get("verdict", "")
            body = [f'<span class="v {e(tv)}">{e(tv)}</span> <code>{e(t["nodeid"])}</code> '
                    f'({t.get("duration_s", 0)} s)']
            if t.get("message"):
                body.append(f"<pre>{e(t['message'])}</pre>")
            if t.get("artifacts"):
                body.append("artifacts: " + ", ".join(_link(a, base) for a in t["artifacts"]))
            if t.get("reproduce"):
                body.append(f"<br>reproduce: <code>{e(t['reproduce'])}</code>")
            if t.get("traceback"):
                body.append(f"<details><summary>traceback</summary><pre>{e(t['traceback'])}"
                            "</pre></details>")
            # The tests that gave the clause its verdict are shown open.
            opened = " open" if tv == v and v != "pass" else ""
            cell.append(f"<details{opened}><summary>"
                        f"{e(t['nodeid'].split('::')[-1])}: {e(tv)}</summary>"
                        + "".join(body) + "</details>")
        out.append(f'<tr id="{e(c["id"])}"><th>{e(c["id"])}</th><td>{e(c["level"])}</td>'
                   f'<td class="v {e(v)}">{e(v)}</td><td>{"".join(cell)}</td></tr>')
    out.append("</table></html>\n")
    return "\n".join(out)


def write_html(path: str | os.PathLike[str], doc: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(page(doc, p.parent), encoding="utf-8")
