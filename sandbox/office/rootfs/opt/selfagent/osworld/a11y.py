"""The screen's accessibility tree, as OSWorld's VM server serves it and its agents read it.

    python3 -I a11y.py dump                         the tree as OSWorld's XML (system Python:
                                                    pyatspi), on stdout
    python3 -I a11y.py dump --lean                  the same without elements' values and
                                                    actions, which OSWorld's filter and
                                                    linearized form never read (a third fewer
                                                    round trips to the apps)
    /opt/osworld/bin/python -I a11y.py linearize    that XML (stdin) in OSWorld's linearized
                                                    form: a header, then one element a line,
                                                    tab-separated (tag, name, text, class,
                                                    description, position, size), filtered by
                                                    OSWorld's own `filter_nodes`
    /opt/osworld/bin/python -I a11y.py rows         the same elements as a JSON list of
                                                    objects (a text may hold tabs and newlines,
                                                    which the linearized form does not escape)
    python3 -I a11y.py terminal                     the text of the first terminal (OSWorld's
                                                    `vm_terminal_output`)

Run as the desktop's user, in its session (DISPLAY and the session bus from the image's
environment). The XML follows OSWorld's server (`desktop_env/server/main.py`, not in the
PyPI package): one element per accessible named by its role (spaces to dashes), `name`,
states and attributes and component extents in OSWorld's namespaces, text as the element's
text; at most 50 levels and 1024 children a level; a large table (a spreadsheet) only by
its showing cells; Chromium's application named Google Chrome, as the image's google-chrome
wrapper stands in for it. The linearized form is computed by OSWorld's own function, taken from
the installed `mm_agents` package's source (importing that module would pull in every model
SDK it names).
"""
import ast
import sys

NS = {
    "st": "https://accessibility.ubuntu.example.org/ns/state",
    "attr": "https://accessibility.ubuntu.example.org/ns/attributes",
    "cp": "https://accessibility.ubuntu.example.org/ns/component",
    "doc": "https://accessibility.ubuntu.example.org/ns/document",
    "docattr": "https://accessibility.ubuntu.example.org/ns/document/attributes",
    "txt": "https://accessibility.ubuntu.example.org/ns/text",
    "val": "https://accessibility.ubuntu.example.org/ns/value",
    "act": "https://accessibility.ubuntu.example.org/ns/action",
}
MAX_DEPTH = 50
MAX_WIDTH = 1024
# A table with more children than this is read by its showing cells, row by row.
SCAN_LIMIT = 500


def dump(lean=False):
    """The tree as OSWorld's XML; `lean`: without values and actions (round trips to the
    app for every element, and neither is read by OSWorld's filter or linearized form)."""
    import xml.etree.ElementTree as ET

    import pyatspi

    for prefix, uri in NS.items():
        ET.register_namespace(prefix, uri)

    def q(ns, name):
        return "{%s}%s" % (NS[ns], name)

    def element(node, depth):
        attrib = {"name": node.name or ""}
        try:
            states = node.getState().getStates()
        except Exception:
            states = []
        for st in states:
            full = pyatspi.StateType._enum_lookup.get(int(st), "")
            name = full.split("_", 1)[1].lower() if "_" in full else ""
            if name:
                attrib[q("st", name)] = "true"
        try:
            for key, value in (node.get_attributes() or {}).items():
                if key:
                    attrib[q("attr", key)] = value
        except Exception:
            pass
        if attrib.get(q("st", "visible")) == "true" and attrib.get(q("st", "showing")) == "true":
            try:
                box = node.queryComponent().getExtents(pyatspi.XY_SCREEN)
                attrib[q("cp", "screencoord")] = str((box.x, box.y))
                attrib[q("cp", "size")] = str((box.width, box.height))
            except Exception:
                pass
        text = ""
        try:
            t = node.queryText()
            text = t.getText(0, t.characterCount).replace("\ufffc", "").replace("\ufffd", "")
        except Exception:
            pass
        for iface, key in (("queryImage", "image"), ("querySelection", "selection")):
            try:
                getattr(node, iface)()
                attrib[key] = "true"
            except Exception:
                pass
        if not lean:
            value_and_actions(node, attrib, q)
        role = (node.getRoleName() or "").strip() or "unknown"
        el = ET.Element(role.replace(" ", "-"), attrib)
        if text:
            el.text = text
        if depth >= MAX_DEPTH:
            return el
        try:
            count = node.childCount
        except Exception:
            count = 0
        if count > MAX_WIDTH and role == "table":
            for child in showing_cells(node, pyatspi):
                el.append(element(child, depth + 1))
            return el
        for i in range(min(count, MAX_WIDTH)):
            try:
                child = node.getChildAtIndex(i)
            except Exception:
                continue
            if child is not None:
                el.append(element(child, depth + 1))
        return el

    root = ET.Element("desktop-frame")
    desktop = pyatspi.Registry.getDesktop(0)
    for i in range(desktop.childCount):
        app = desktop.getChildAtIndex(i)
        if app is not None:
            el = element(app, 1)
            # Chromium stands in for Google Chrome here (the google-chrome wrapper), and
            # OSWorld's Chrome getters look for Chrome's application by name.
            if el.tag == "application" and el.get("name") == "Chromium":
                el.set("name", "Google Chrome")
            root.append(el)
    return ET.tostring(root, encoding="unicode")


def value_and_actions(node, attrib, q):
    """An element's value (current, min, max, step) and actions (the description and key
    binding of each) into `attrib`, as OSWorld's server writes them."""
    try:
        v = node.queryValue()
        for key, get in (("value", lambda: v.currentValue), ("min", lambda: v.minimumValue),
                         ("max", lambda: v.maximumValue), ("step", lambda: v.minimumIncrement)):
            try:
                attrib[q("val", key)] = str(get())
            except Exception:
                pass
    except Exception:
        pass
    try:
        a = node.queryAction()
        for i in range(a.nActions):
            name = a.getName(i).replace(" ", "-")
            attrib[q("act", name + "_desc")] = a.getDescription(i)
            attrib[q("act", name + "_kb")] = a.getKeyBinding(i)
    except Exception:
        pass


def showing_cells(table, pyatspi):
    """The showing cells of a large table, row by row from the first showing one (a
    spreadsheet has millions of cells; only the screenful shows)."""
    try:
        t = table.queryTable()
        rows, cols = t.nRows, t.nColumns
    except Exception:
        return
    col_base = None
    for r in range(min(rows, 1 << 20)):
        seen = False
        for c in range(col_base or 0, min(cols, 1 << 14)):
            cell = t.getAccessibleAt(r, c)
            showing = cell is not None and cell.getState().contains(pyatspi.STATE_SHOWING)
            if showing:
                if col_base is None:
                    col_base = c
                seen = True
                yield cell
            elif seen or c >= SCAN_LIMIT:
                break
        if col_base is not None and not seen or col_base is None and r >= SCAN_LIMIT:
            return


def osworld_linearize():
    """OSWorld's `linearize_accessibility_tree`, from the installed package's source, with
    the names it uses (its namespaces, `filter_nodes`)."""
    import importlib.util
    import xml.etree.ElementTree as ET

    from mm_agents.accessibility_tree_wrap.heuristic_retrieve import filter_nodes

    spec = importlib.util.find_spec("mm_agents.agent")
    tree = ast.parse(open(spec.origin).read())
    wanted = [n for n in tree.body
              if isinstance(n, ast.FunctionDef) and n.name == "linearize_accessibility_tree"
              or isinstance(n, ast.Assign)
              and all(isinstance(t, ast.Name) and "_ns_" in t.id for t in n.targets)]
    scope = {"ET": ET, "filter_nodes": filter_nodes}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), spec.origin, "exec"), scope)
    return scope["linearize_accessibility_tree"]


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "dump":
        sys.stdout.write(dump(lean=sys.argv[2:] == ["--lean"]))
    elif mode == "linearize":
        xml = sys.stdin.read()
        sys.stdout.write(osworld_linearize()(xml, platform="ubuntu") + "\n")
    elif mode == "rows":
        import json
        import xml.etree.ElementTree as ET

        from mm_agents.accessibility_tree_wrap.heuristic_retrieve import filter_nodes
        attr = "{%s}" % NS["attr"]
        cp = "{%s}" % NS["cp"]
        rows = [{"tag": n.tag, "name": n.get("name", ""), "text": n.text or "",
                 "class": n.get(attr + "class", ""), "description": n.get(attr + "description", ""),
                 "position": n.get(cp + "screencoord", ""), "size": n.get(cp + "size", "")}
                for n in filter_nodes(ET.fromstring(sys.stdin.read()), "ubuntu")]
        json.dump(rows, sys.stdout)
    elif mode == "terminal":
        import xml.etree.ElementTree as ET
        for el in ET.fromstring(dump()).iter("terminal"):
            sys.stdout.write(el.text or "")
            break
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
