#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a cycle.

Usage: module-cycles.py [--layers a,b,c] CRATE_SRC_DIR...   (e.g. data-plane/src)

With --layers (top-level modules, bottom first), a module may also import only from its
own layer or the layers below it: `--layers support,http,upstream` lets `upstream`
import `http`, never the reverse. Modules not named there (the crate root) are free.

Why a script of our own: `cargo-modules dependencies --acyclic` (0.27, the last release
that builds with Rust 1.95) checks the item graph, where every method already forms a
cycle with its own type, and takes nine minutes to install. What the team cares about is
the module graph: the data plane is layered in folders that may only import downwards.

A module is a file (`mod.rs` is its folder). Module A depends on B when A names an item
of B: in a `use` (trees included), or in a path written in the code (`crate::b::f()`,
`super::X`). A name re-exported with `pub use` / `pub(crate) use` is followed to the
module that defines it, so a folder's `mod.rs` that only re-exports is no hub. A module
declaring a child (`mod child;`) does not depend on it by that alone. Test code is left
out: `#[cfg(test)]` modules (files such as `tests.rs`, and inline `mod tests { ... }`
blocks), whose whole purpose is to reach into what they test.
"""

import os
import re
import sys

USE_RE = re.compile(r"^\s*(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", re.M)
PATH_RE = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
MOD_DECL_RE = re.compile(r"^\s*(?:#\[cfg\(test\)\]\s*)?(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", re.M)
TEST_MOD_RE = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;")


def strip_comments_and_strings(text):
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def strip_inline_test_blocks(text):
    """Removes `#[cfg(test)] mod name { ... }` blocks (brace matching)."""
    out = []
    i = 0
    pattern = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+[a-z_][a-z0-9_]*\s*\{")
    while True:
        m = pattern.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i : m.start()])
        depth = 0
        j = m.end() - 1
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        i = j + 1


def expand_use_tree(tree):
    """`a::{b, c::{d, e as f}}` -> ['a::b', 'a::c::d', 'a::c::e@f'] (`@` before an alias)."""
    # `a as b` keeps a marker so the alias survives the whitespace removal.
    tree = re.sub(r"\s+as\s+", "@", tree)
    tree = re.sub(r"\s+", "", tree)

    def split_top(s):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            parts.append(cur)
        return parts

    def walk(prefix, s):
        brace = s.find("{")
        if brace == -1:
            full = prefix + s if prefix else s
            return [full.removesuffix("::self")]
        head = s[:brace]
        inner = s[brace + 1 : s.rfind("}")]
        res = []
        for part in split_top(inner):
            res.extend(walk(prefix + head, part))
        return res

    return walk("", tree)


class Crate:
    def __init__(self, src):
        self.src = src
        self.modules = {}  # module path tuple -> file
        self.tests = set()
        root = "lib.rs" if os.path.exists(os.path.join(src, "lib.rs")) else "main.rs"
        self.load((), os.path.join(src, root), in_test=False)
        self.reexports = {m: {} for m in self.modules}
        for m, f in self.modules.items():
            for vis, tree in USE_RE.findall(self.code(m)):
                if not vis:
                    continue
                for path in expand_use_tree(tree):
                    path, _, alias = path.partition("@")
                    parts = path.split("::")
                    found = self.resolve(m, parts)
                    if found is not None and found[1]:
                        self.reexports[m][alias or parts[-1]] = found[0]

    def load(self, path, file, in_test):
        self.modules[path] = file
        if in_test:
            self.tests.add(path)
        text = open(file).read()
        tests = set(TEST_MOD_RE.findall(text))
        base = os.path.dirname(file) if os.path.basename(file) in ("lib.rs", "main.rs", "mod.rs") else file[:-3]
        for name in MOD_DECL_RE.findall(strip_comments_and_strings(text)):
            for candidate in (os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")):
                if os.path.exists(candidate):
                    self.load(path + (name,), candidate, in_test or name in tests)
                    break

    def code(self, m):
        return strip_inline_test_blocks(strip_comments_and_strings(open(self.modules[m]).read()))

    def resolve(self, m, parts):
        """(module, the segments after it) for a path written in module `m`; None when the
        path leaves the crate."""
        if not parts:
            return None
        if parts[0] == "crate":
            cur, rest = (), parts[1:]
        elif parts[0] in ("super", "self"):
            cur, rest = m, parts
            while rest and rest[0] in ("super", "self"):
                if rest[0] == "super":
                    cur = cur[:-1]
                rest = rest[1:]
        elif (m + (parts[0],)) in self.modules:
            cur, rest = m + (parts[0],), parts[1:]
        else:
            return None
        while rest and (cur + (rest[0],)) in self.modules:
            cur, rest = cur + (rest[0],), rest[1:]
        return cur, rest

    def follow(self, module, name, seen=None):
        seen = seen or set()
        target = self.reexports.get(module, {}).get(name)
        if target is None or (module, name) in seen or target == module:
            return module
        seen.add((module, name))
        return self.follow(target, name, seen)

    def edges(self):
        graph = {m: set() for m in self.modules if m not in self.tests}
        for m in graph:
            code = self.code(m)
            paths = []
            for _, tree in USE_RE.findall(code):
                paths.extend(p.partition("@")[0] for p in expand_use_tree(tree))
            paths.extend(PATH_RE.findall(USE_RE.sub("", code)))
            # A module imported by name (`use crate::proxy;`) is used as `proxy::Item`.
            imported = {}
            for _, tree in USE_RE.findall(code):
                for path in expand_use_tree(tree):
                    path, _, alias = path.partition("@")
                    parts = path.split("::")
                    found = self.resolve(m, parts)
                    if found is not None and not found[1] and found[0] != m:
                        imported[alias or parts[-1]] = found[0]
            body = USE_RE.sub("", code)
            for alias, module in imported.items():
                for item in re.findall(r"(?<![A-Za-z0-9_:])" + alias + r"::([A-Za-z_][A-Za-z0-9_]*)", body):
                    paths.append("::".join(("crate",) + module + (item,)))
            for path in paths:
                parts = [p for p in path.split("::") if p]
                found = self.resolve(m, parts)
                if found is None or not found[1]:
                    continue
                target = self.follow(found[0], found[1][0])
                if target != m and target in graph:
                    graph[m].add(target)
        return graph


def cycles(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def name(m):
    return "::".join(("crate",) + m)


def upward(graph, layers):
    """Imports from a module to one of a higher layer."""
    rank = {name: i for i, name in enumerate(layers)}
    found = []
    for m, targets in graph.items():
        if not m or m[0] not in rank:
            continue
        for t in targets:
            if t and t[0] in rank and rank[t[0]] > rank[m[0]]:
                found.append((m, t))
    return sorted(found)


def main():
    args = sys.argv[1:]
    layers = []
    if len(args) >= 2 and args[0] == "--layers":
        layers, args = args[1].split(","), args[2:]
    failed = False
    for src in args:
        crate = Crate(src)
        graph = crate.edges()
        found = cycles(graph)
        edges = sum(len(v) for v in graph.values())
        up = upward(graph, layers) if layers else []
        for m, t in up:
            print(f"{src}: {name(m)} imports {name(t)}, a layer above it ({' < '.join(layers)})")
        failed = failed or bool(up)
        if not found:
            print(f"{src}: {len(graph)} modules, {edges} imports between them, no cycle")
            continue
        failed = True
        for comp in found:
            members = set(comp)
            print(f"{src}: modules in a cycle: {', '.join(sorted(name(m) for m in comp))}")
            for m in sorted(comp):
                for t in sorted(graph[m] & members):
                    print(f"    {name(m)} -> {name(t)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
