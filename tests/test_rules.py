"""One source for every rule (issue 18): the limits, choices, caps, tolerances and file rules both hosts follow are
defined in dode_core/rules.py and dode_core/file_rules.py only, and behave as documented there."""

import ast
import glob
import os

import pytest
from conftest import ROOT

from dode_core import file_rules, rules

RULE_FILES = ("dode_core/rules.py", "dode_core/file_rules.py")
# every product file but the rule modules: the hosts, the rest of dode_core, the demo
PRODUCT_FILES = sorted(
    os.path.relpath(path, ROOT)
    for pattern in ("nodes/*.py", "dode_webui/*.py", "scripts/*.py", "dode_core/*.py", "dode_demo/*.py", "*.py")
    for path in glob.glob(os.path.join(ROOT, pattern)))
PRODUCT_FILES = [path for path in PRODUCT_FILES if path not in RULE_FILES]
HOSTS = ("nodes/", "dode_webui/", "scripts/")
# values no host may write down: a second copy of them is a second rule
LIMITS = {rules.MAX_TEACHER_STEPS, rules.MAX_FIT_VALUES, rules.MAX_TEXT_CHARS}


def rule_names() -> set[str]:
    """The constants, functions and classes the rule modules define."""
    names = set()
    for path in RULE_FILES:
        tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                names.add(node.name)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name) and name.id.isupper():
                        names.add(name.id)
    return names


def definitions(tree):
    """``(name, line)`` of everything a module defines or assigns at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    yield name.id, node.lineno


def constant(node):
    """The value of a number literal or of a constant shift or product of them (``1 << 24``); None otherwise. Read
    from the tree, never evaluated (comfy node validate flags eval, even in tests)."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.LShift, ast.Mult)):
        left, right = constant(node.left), constant(node.right)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Mult):
            return left * right
        return left << right if isinstance(left, int) and isinstance(right, int) and 0 <= right < 64 else None
    return None


def numbers(tree):
    """``(value, line)`` of every number literal, and of constant shifts and products (``1 << 24``)."""
    for node in ast.walk(tree):
        value = constant(node)
        if value is not None:
            yield value, node.lineno


def test_the_rule_modules_define_what_the_hosts_share():
    names = rule_names()
    assert {"MAX_TEACHER_STEPS", "HISTORY_CHOICES", "MAX_TEXT_CHARS", "HOST_SIGMA_RTOL", "SIGMA_RTOL", "choose_file",
            "use_file", "model_mismatch", "proof_lines", "CHECKPOINT_SHA256", "WEIGHTS_DIGEST"} <= names
    assert len(PRODUCT_FILES) > 30


@pytest.mark.parametrize("path", PRODUCT_FILES)
def test_no_product_file_defines_a_rule_of_its_own(path):
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    shared = rule_names()
    copies = [f"{path}:{line} defines {name}" for name, line in definitions(tree) if name in shared]
    assert not copies, "a rule of dode_core/rules.py or file_rules.py written again:\n" + "\n".join(copies)
    limits = [f"{path}:{line}: {value}" for value, line in numbers(tree) if value in LIMITS and path.startswith(HOSTS)]
    assert not limits, "a limit of dode_core/rules.py written as a number:\n" + "\n".join(limits)
    choices = [node.lineno for node in ast.walk(tree) if isinstance(node, (ast.Tuple, ast.List))
               and [getattr(element, "value", None) for element in node.elts] == list(rules.HISTORY_CHOICES)]
    assert not choices, f"{path}: the history choices written again at lines {choices}"


def test_history_is_a_menu_choice_an_api_number_or_auto():
    assert [rules.parse_history(value) for value in ("1", 2, 3.0, " auto ", "AUTO", "8")] == [1, 2, 3, "auto",
                                                                                              "auto", 8]
    for value in ("0", "9", 9, "2.5", "", "٤", True, None, "1e3"):
        with pytest.raises(ValueError) as error:
            rules.parse_history(value)
        assert f"1 to {rules.MAX_HISTORY}" in str(error.value)


def test_the_size_of_a_fit_is_bounded_with_a_way_out():
    assert rules.fit_size_problem(20, 100) is None  # the largest the menus allow at 20 steps
    too_long = rules.fit_size_problem(50, 100)
    assert "50 steps x 100" in too_long and str(rules.MAX_TEACHER_STEPS) in too_long and "at most 80" in too_long
    assert rules.fit_size_problem(1, 1, [16, 16, 128, 128]) is None
    too_wide = rules.fit_size_problem(1, 1, [80, 4, 256, 256])
    assert "80 latents" in too_wide and "at most 64" in too_wide


def test_host_fields_are_strings_cut_to_the_cap_and_never_override_the_fit():
    fields = rules.host_fields({"prompt": "x" * 10_000, "seed": "12", "cfg": 7.5, "steps": 99, "none": None,
                                "bad_seed": 1, "scheduler": "karras"}, reserved={"steps": "8"})
    assert fields == {"prompt": "x" * rules.MAX_TEXT_CHARS, "seed": "12", "cfg": "7.5", "bad_seed": "1",
                      "scheduler": "karras"}
    assert "seed" not in rules.host_fields({"seed": "not a number"})


def test_the_file_rules_are_documented_where_users_read_them():
    readme = open(os.path.join(ROOT, "lambdas", "README.md"), encoding="utf-8").read()
    for key in (file_rules.CHECKPOINT_SHA256, file_rules.WEIGHTS_DIGEST, file_rules.CHECKPOINT_NAME,
                file_rules.LEGACY_FINGERPRINT):
        assert f"`{key}`" in readme, key
