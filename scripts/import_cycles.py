#!/usr/bin/env python3
"""Finds import cycles between the source files of each crate of the workspace.

One node per `.rs` file of a crate (`src/bin/` holds crates of their own and is left out).
An edge runs from file F to file G != F for every path in F into the crate: the paths of
`use` declarations, and qualified paths in code (`crate::a::Item`, `super::x::f()`,
`self::x::Y`, `child::f()` for a module declared in scope, `alias::f()` for a module imported
by a `use`). A path resolves to the deepest existing module file along it, `a/b.rs` or
`a/b/mod.rs` (an inline `mod x { … }` belongs to its file), so an item that a `mod.rs`
re-exports resolves to that `mod.rs`.

The rule for parents and children: `mod x;` is never an edge, and neither is a `pub use` (of
any visibility) from a module to one of its descendants, since a parent declaring and
re-exporting its children is the normal Rust layout. Every other reference is an edge: a
child's `use super::Item` runs child -> parent whether the parent defines Item or re-exports
it, and a parent's private `use self::child::…` or `child::f()` in code runs parent -> child.

Bare names (`Item` after importing it) are not followed, the `use` that imported them is the
edge; a glob import depends on the module it reads. Comments, string and char literals and the
bodies of `quote!`-family macros (code for another crate) are ignored. Test modules count.

Prints every strongly connected component of more than one file with the edges inside it, and
exits 1 if there is one; prints "no import cycles" and exits 0 otherwise.
Usage: scripts/import_cycles.py [CRATE_SRC_DIR ...]   (default: every crate of the workspace)
"""
import bisect
import re
import sys
from pathlib import Path

CRATES = ["src", "server/src", "cli/src", "macros/src", "testkit/src"]
ROOT = Path(__file__).resolve().parent.parent

RAW_STR = re.compile(r'(?<!\w)b?r(#*)"')
CHAR = re.compile(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^\\'\n])'")
QUOTE = re.compile(r"\b(?:quote|quote_spanned|parse_quote|parse_quote_spanned)!\s*[(\[{]")
USE = re.compile(r"\b(pub(?:\s*\([^)]*\))?\s+)?use\s+([\w$:{][^;]*);")
PUB_IN = re.compile(r"\bpub\s*\(\s*in\s[^)]*\)")
PATH = re.compile(r"(?<![\w:$])\$?([A-Za-z_]\w*)((?:::[A-Za-z_]\w*)+)")
SCOPE = re.compile(r"\bmod\s+(\w+)\s*\{|[{}]")


def strip(text):
    """Blanks comments, string and char literals and quote! bodies, keeping every offset."""
    out, i, n = list(text), 0, len(text)
    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i) % (n + 1)
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                step = text[j : j + 2]
                depth += (step == "/*") - (step == "*/")
                j += 2 if step in ("/*", "*/") else 1
        elif m := RAW_STR.match(text, i):
            end = text.find('"' + m.group(1), m.end())
            j = n if end < 0 else end + 1 + len(m.group(1))
        elif text[i] == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
        elif m := CHAR.match(text, i):
            j = m.end()
        elif m := QUOTE.match(text, i):
            depth, j = 1, m.end()
            while depth and j < n:
                depth += (text[j] in "([{") - (text[j] in ")]}")
                j += 1
        else:
            i += 1
            continue
        out[i:j] = [c if c == "\n" else " " for c in text[i:j]]
        i = j
    return "".join(out)


def segments(text):
    parts = [s.strip() for s in text.strip().split("::")]
    return tuple(parts[:-1] if parts[-1] == "" else parts)


def expand(tree, prefix=()):
    """`a::{b, c::d as e, self, *}` -> [(path, name it binds or None), ...]."""
    tree = " ".join(tree.split())
    if tree.endswith("}"):
        brace = tree.index("{")
        head = prefix + segments(tree[:brace]) if tree[:brace].strip() else prefix
        leaves, depth, start = [], 0, brace + 1
        for k in range(start, len(tree)):
            depth += (tree[k] == "{") - (tree[k] == "}")
            if (tree[k] == "," and depth == 0) or depth < 0:
                leaves += expand(tree[start:k], head) if tree[start:k].strip() else []
                start = k + 1
        return leaves
    path, _, alias = tree.partition(" as ")
    p = prefix + segments(path)
    p = p[:-1] if p[-1] == "self" else p
    alias = alias.strip() or (p[-1] if p[-1] != "*" else None)
    return [(p, None if alias == "_" else alias)]


class Crate:
    """The files of one crate: module paths, and each file's `use` leaves and code paths."""

    def __init__(self, src):
        base = ROOT / src
        root = "lib.rs" if (base / "lib.rs").exists() else "main.rs"
        self.module, self.module_file, self.refs, self.aliases = {}, {}, {}, {}
        for path in sorted(base.rglob("*.rs")):
            rel = path.relative_to(base)
            parts = rel.with_suffix("").parts
            if parts[0] == "bin" or (parts[0] in ("lib", "main") and rel.name != root):
                continue
            name = str(path.relative_to(ROOT))
            module = () if rel.name == root else parts[:-1] if parts[-1] == "mod" else parts
            self.module[name], self.module_file[module] = module, name
            self.refs[name] = self.read(name, strip(path.read_text()), module)

    def read(self, name, code, module):
        """[(scope, path, name bound, is a `pub use`, line)] for the `use` leaves and paths."""
        offsets, scopes, stack = [0], [module], []
        for m in SCOPE.finditer(code):  # inline modules: the scope at every brace
            stack.pop() if m.group(0) == "}" and stack else stack.append(m.group(1))
            offsets.append(m.end())
            scopes.append(module + tuple(s for s in stack if s))
            self.module_file.setdefault(scopes[-1], name)

        def at(offset):
            return scopes[bisect.bisect_right(offsets, offset) - 1], code.count("\n", 0, offset) + 1

        refs, rest = [], list(code)
        for m in [*USE.finditer(code), *PUB_IN.finditer(code)]:
            if m.re is USE:
                scope, line = at(m.start())
                refs += [(scope, p, a, bool(m.group(1)), line) for p, a in expand(m.group(2))]
            rest[m.start() : m.end()] = " " * (m.end() - m.start())
        for m in PATH.finditer("".join(rest)):
            scope, line = at(m.start())
            refs.append((scope, (m.group(1), *segments(m.group(2))[1:]), None, False, line))
        return refs

    def resolve(self, path, scope):
        """The module `path` leads into, seen from module `scope`; None outside the crate."""
        base, rest = scope, path
        if path[0] in ("crate", "$crate"):
            base, rest = (), path[1:]
        elif path[0] in self.aliases.get(scope, {}) and scope + path[:1] not in self.module_file:
            base, rest = self.aliases[scope][path[0]], path[1:]
        elif path[0] not in ("self", "super") and scope + path[:1] not in self.module_file:
            return None
        for s in rest:
            base = base[:-1] if s == "super" else base if s in ("self", "*") else base + (s,)
        return base

    def graph(self):
        """{file: {file it depends on: line of the first reference}}."""
        for _ in range(2):  # a module alias may be imported through another alias
            for refs in self.refs.values():
                for scope, path, alias, _, _ in refs:
                    if alias and self.resolve(path, scope) in self.module_file:
                        self.aliases.setdefault(scope, {})[alias] = self.resolve(path, scope)
        graph = {name: {} for name in self.refs}
        for name, refs in self.refs.items():
            for scope, path, _, is_pub, line in refs:
                module = self.resolve(path, scope)
                while module is not None and module not in self.module_file:
                    module = module[:-1]  # the deepest module that exists
                target = self.module_file.get(module, name)
                own = self.module[name]
                if target != name and not (is_pub and self.module[target][: len(own)] == own):
                    graph[name].setdefault(target, line)
        return graph


def cycles(graph):
    """Tarjan's strongly connected components of more than one node."""
    index, low, stack, found = {}, {}, [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            k = stack.index(v)
            if len(stack) - k > 1:
                found.append(sorted(stack[k:]))
            del stack[k:]

    for v in graph:
        if v not in index:
            visit(v)
    return found


def main(crates):
    any_cycle = False
    for src in crates:
        graph = Crate(src).graph()
        found = cycles(graph)
        any_cycle |= bool(found)
        print(f"{src}: {len(found) or 'no'} import cycle{'' if len(found) == 1 else 's'}")
        for component in found:
            print(f"  cycle of {len(component)} files: {', '.join(component)}")
            for name in component:
                for target, line in sorted(graph[name].items()):
                    if target in component:
                        print(f"    {name}:{line} -> {target}")
    if not any_cycle:
        print("no import cycles")
    return 1 if any_cycle else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or CRATES))
