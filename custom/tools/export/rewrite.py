"""Config rewriting for an exported bundle: every ``$from custom[.x] import NAME`` becomes a
``custom_NAME`` item that depends on ``custom_path`` (the bundle's own ``scripts/`` first on
``sys.path``), and every ``_target_: custom....`` component requires it (see the package docstring)."""

from __future__ import annotations

import ast
import copy
import json
import os
import re
from collections.abc import Iterable
from typing import Any

import yaml


# ---- config rewriting ----------------------------------------------------------------------------

_CUSTOM_IMPORT = re.compile(r"^\$\s*from\s+(custom(?:\.\w+)*)\s+import\s+(\w+)\s*$")
_REF = re.compile(r"@\w*(?:#\w*)*")  # a MONAI reference inside an expression (its own pattern)
_PATH_ITEM = "custom_path"
_ITEM_PREFIX = "custom_"
_PRETRAINED_DEFAULT = "bundles/reclf_pretrain/models/model.pt"


def _custom_imports(imports: Any, where: str) -> dict[str, str]:
    """``{NAME: module}`` for the ``$from custom[.x] import NAME`` entries of an ``imports`` list."""
    found: dict[str, str] = {}
    for entry in imports or []:
        if not isinstance(entry, str):
            continue
        match = _CUSTOM_IMPORT.match(entry.strip())
        if match:
            found[match.group(2)] = match.group(1)
        elif re.match(r"^\$\s*import\s+custom\b", entry.strip()):
            raise ValueError(f"{where}: {entry!r}: write `$from custom import x` (the export rewrites only that form)")
    return found


def rewrite_expression(expr: str, names: Iterable[str]) -> str:
    """``expr`` (a ``$...`` config expression) with every global ``NAME`` of ``names`` read as the
    config item ``@custom_NAME``. References (``@id#key``) are parsed as same-length stand-ins, so
    the Python AST gives the exact spans; names bound inside the expression are refused."""
    names = set(names)
    body = expr[1:]
    if not names or not any(n in body for n in names) or re.match(r"\s*(import|from)\s", body):
        return expr  # nothing to rewrite, or an import statement (kept as it is)
    plain = _REF.sub(lambda m: "_" + m.group()[1:].replace("#", "_"), body)
    try:
        tree = ast.parse(plain, mode="eval")
    except SyntaxError as err:
        raise ValueError(f"cannot parse config expression {expr!r}: {err}") from err
    spans = []
    for node in ast.walk(tree):
        bound = (node.arg if isinstance(node, ast.arg)
                 else node.id if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load) else None)
        if bound in names:
            raise ValueError(f"config expression {expr!r} binds {bound!r}, a name imported from custom: rename it")
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names:
            spans.append((node.lineno, node.col_offset, node.end_col_offset, node.id))
    # ast offsets are UTF-8 byte offsets per line: edit the bytes, last span first
    lines = body.encode("utf-8").split(b"\n")
    for lineno, start, end, name in sorted(spans, reverse=True):
        line = lines[lineno - 1]
        lines[lineno - 1] = line[:start] + f"@{_ITEM_PREFIX}{name}".encode() + line[end:]
    return "$" + b"\n".join(lines).decode("utf-8")


def _map_strings(value: Any, fn) -> Any:
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return fn(value) if isinstance(value, str) else value


def _add_requires(value: Any) -> Any:
    """Every ``_target_: custom....`` component gets ``_requires_: "@custom_path"`` (placed right
    after ``_target_``, as the text rewrite writes it)."""
    if isinstance(value, list):
        return [_add_requires(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        out[k] = _add_requires(v)
        if k == "_target_" and isinstance(v, str) and v.startswith("custom."):
            out["_requires_"] = f"@{_PATH_ITEM}"
    return out


def _module_item(module: str, name: str, package_dir: str) -> dict[str, str]:
    """The component that replaces ``$from module import name``, built once ``custom_path`` put the
    code on sys.path (``_requires_``): a submodule through ``importlib.import_module``, anything else
    located as ``module.name`` and returned as it is (``_mode_: callable``). Not an expression: MONAI
    parses any expression containing "import" as Python before it substitutes the ``@`` references."""
    rel = os.path.join(*module.split(".")[1:], name) if "." in module else name
    if os.path.isfile(os.path.join(package_dir, rel + ".py")) or os.path.isfile(os.path.join(package_dir, rel, "__init__.py")):
        return {"_target_": "importlib.import_module", "_requires_": f"@{_PATH_ITEM}", "name": f"{module}.{name}"}
    return {"_target_": f"{module}.{name}", "_requires_": f"@{_PATH_ITEM}", "_mode_": "callable"}


def _bundle_root_expr(export_root: str) -> str:
    """The exported folder while it is there, else the current directory when that is the bundle."""
    root = repr(export_root)
    test = ("os.path.isfile(os.path.join(p, 'configs', 'metadata.json')) "
            "and os.path.isdir(os.path.join(p, 'scripts', 'custom'))")
    return f"$next((p for p in [{root}, os.getcwd()] if {test}), {root})"


# <bundle_root>/scripts first on sys.path (once), or a clear error when bundle_root is not this bundle
_PATH_EXPR = (
    "$(lambda scripts: scripts if os.path.isdir(os.path.join(scripts, 'custom')) "
    "and (scripts in sys.path or not sys.path.insert(0, scripts)) "
    "else exec('raise FileNotFoundError(m)', {'m': 'bundle_root ' + repr(os.path.dirname(scripts)) "
    "+ ' holds no scripts/custom: pass --bundle_root <the exported bundle folder>'}))"
    "(os.path.abspath(os.path.join(@bundle_root, 'scripts')))"
)


def _yaml_scalar(value: str) -> str:
    """A double-quoted YAML scalar (JSON string syntax is valid YAML there)."""
    return json.dumps(value, ensure_ascii=False)


def _block_end(lines: list[str], start: int) -> int:
    """Index after the indented block that follows the top-level key on line ``start``."""
    end = start + 1
    while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():  # trailing blank lines stay after the block
        end -= 1
    return end


_QUOTED_EXPR = re.compile(r'"(\$[^"\\]*)"')
_PLAIN_EXPR = re.compile(r"^(\s*(?:- |[\w#+]+:\s+))(\$[^\"'#][^#]*?)(\s+#.*)?$")


def _rewrite_line(line: str, names: set[str]) -> str:
    if not names or "$" not in line or line.lstrip().startswith("#"):
        return line
    line = _QUOTED_EXPR.sub(lambda m: _yaml_scalar(rewrite_expression(m.group(1), names)), line)
    match = _PLAIN_EXPR.match(line)
    if match:
        new = rewrite_expression(match.group(2), names)
        if new != match.group(2):
            line = match.group(1) + _yaml_scalar(new) + (match.group(3) or "")
    return line


class _ConfigRewrite:
    """Rewrite one config file's text (see the module docstring) and the parsed YAML alike."""

    def __init__(self, name: str, filename: str, text: str, base_imports: dict[str, str], package_dir: str,
                 export_root: str, pretrained_value: str, extra_items: dict[str, Any] | None = None) -> None:
        self.where = f"bundles/{name}/configs/{filename}"
        self.name, self.text, self.package_dir = name, text, package_dir
        self.data = yaml.safe_load(text) or {}
        if not isinstance(self.data, dict):
            raise ValueError(f"{self.where}: expected a mapping at the top level")
        self.import_key = "+imports" if "+imports" in self.data else "imports"
        self.own = _custom_imports(self.data.get(self.import_key), self.where)
        self.overlay = self.import_key == "+imports"
        # an overlay (multi_gpu_train.yaml) also uses the names its base config imported
        self.names = set(self.own) | (set(base_imports) if self.overlay else set())
        self.has_targets = bool(re.search(r"^\s*(?:- )?_target_:\s*custom\.", text, re.M))
        self.export_root, self.pretrained_value = export_root, pretrained_value
        self.extra_items = extra_items or {}
        clash = [k for k in self.data if isinstance(k, str) and k.startswith(_ITEM_PREFIX)]
        if clash:
            raise ValueError(f"{self.where}: keys {clash} clash with the export's own custom_* items")

    # -- the parsed form: what the rewritten text must load as ----------------------------------
    def expected(self) -> dict[str, Any]:
        data = _map_strings(copy.deepcopy(self.data), lambda s: rewrite_expression(s, self.names)
                            if s.startswith("$") and not _CUSTOM_IMPORT.match(s.strip()) else s)
        data = _add_requires(data)
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key == self.import_key:
                value = [v for v in value if not (isinstance(v, str) and _CUSTOM_IMPORT.match(v.strip()))]
                value += [s for s in self._needed_imports() if s not in value]
            elif key == "bundle_root":
                value = _bundle_root_expr(self.export_root)
            elif key == "pretrained_ckpt" and value == _PRETRAINED_DEFAULT:
                value = self.pretrained_value
            out[key] = value
            if key == self.import_key:
                out.update(self._new_items())
        out.update(self.extra_items)
        return out

    def _needed_imports(self) -> list[str]:
        return ["$import sys"] if (self.own or self.has_targets) and not self.overlay else []

    def _new_items(self) -> dict[str, Any]:
        items = {} if self.overlay or not (self.own or self.has_targets) else {_PATH_ITEM: _PATH_EXPR}
        items.update({f"{_ITEM_PREFIX}{n}": _module_item(m, n, self.package_dir) for n, m in self.own.items()})
        return items

    # -- the text form (comments kept) -------------------------------------------------------------
    def rewritten_text(self) -> str:
        lines = self.text.split("\n")
        out: list[str] = [
            f"# Exported by `python -m custom export-bundle {self.name}` (docs/README.md, \"Using this exported",
            "# bundle\"): `custom` comes from this bundle's scripts/custom (the custom_* items below), paths",
            f"# written bundles/{self.name}/... below mean this folder; bundle_root defaults to it.",
        ]
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith(f"{self.import_key}:"):
                end = _block_end(lines, i)
                block = [ln for ln in lines[i:end] if not _CUSTOM_IMPORT.match(ln.strip().removeprefix("- ").strip())]
                item_lines = [ln for ln in block[1:] if ln.lstrip().startswith("- ")]
                indent = (item_lines[0][: len(item_lines[0]) - len(item_lines[0].lstrip())] if item_lines else "  ")
                present = {ln.strip().removeprefix("- ").strip() for ln in item_lines}
                last = max((k for k, ln in enumerate(block) if ln.lstrip().startswith("- ")), default=0)
                extra = [f"{indent}- {s}" for s in self._needed_imports() if s not in present]
                block = block[: last + 1] + extra + block[last + 1:]
                out += [_rewrite_line(ln, self.names) for ln in block]
                new_items = self._new_items()
                if new_items:
                    out.append("# ---- exported bundle: this bundle's own code, scripts/custom (replaces `$from custom import ...`)")
                    out += [f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in new_items.items()]
                i = end
                continue
            if re.match(r"^bundle_root:", line):
                out.append(f"bundle_root: {_yaml_scalar(_bundle_root_expr(self.export_root))}"
                           "   # the exported folder; --bundle_root PATH where it moved")
                i += 1
                continue
            match = re.match(rf"^pretrained_ckpt:\s*{re.escape(_PRETRAINED_DEFAULT)}\s*(#.*)?$", line)
            if match:
                note = ("the packaged models/pretrained/model.pt" if self.pretrained_value
                        else "no pretraining checkpoint was packaged: random init / run reclf_pretrain first")
                out.append(f"pretrained_ckpt: {_yaml_scalar(self.pretrained_value)}   # (export) {note}")
                i += 1
                continue
            out.append(_rewrite_line(line, self.names))
            target = re.match(r"^(\s*)(- )?_target_:\s*custom\.", line)
            if target:
                out.append(" " * (len(target.group(1)) + (2 if target.group(2) else 0)) + f'_requires_: "@{_PATH_ITEM}"')
            i += 1
        if self.extra_items:
            while out and not out[-1].strip():
                out.pop()
            out.append(yaml.safe_dump(self.extra_items, sort_keys=False, allow_unicode=True).rstrip("\n"))
        return "\n".join(out).rstrip("\n") + "\n"

    def result(self) -> str:
        text = self.rewritten_text()
        if yaml.safe_load(text) != self.expected():
            raise RuntimeError(f"export-bundle: the rewrite of {self.where} does not load as intended "
                               "(an unusual YAML layout there?); please report it with that file")
        leftover = [v for v in _strings(yaml.safe_load(text)) if v.startswith("bundles/")]
        if leftover:
            raise ValueError(f"{self.where}: values {leftover} point into the repository's bundles/ folder")
        return text


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value
