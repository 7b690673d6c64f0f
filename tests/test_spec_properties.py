"""Generated specs: whatever a spec file holds, the command line accepts it or says why in one line.

Specs come from the schema itself (the ``Rule`` tables of every section, walked here, so a new
field is generated without touching this file) and from mutations of the shipped ``spaces/*.yaml``.
Values are of every type and shape: valid ones, scalars of the wrong type, lists, mappings, null,
huge and negative numbers, NaN, empty and non-ASCII strings, ranges inverted or malformed.

The property, for ``mixsearch validate`` and for ``mixsearch run`` up to its first trial
(``--timeout`` smaller than any trial, so the run loads data, opens the study and stops): exit 0,
or exit 2 with exactly one line that names the spec file and a field; never a traceback, never
more than a few seconds, and a rejected spec writes nothing (``validate`` never writes).

Most examples call the CLI's ``main`` in this process; a few run ``python -m mixsearch``.
``pytest --hypothesis-profile=long`` runs many more (see conftest.py).
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import signal
import time
from pathlib import Path

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import ROOT, TINY_SPEC, run_cli
from mixsearch.choices import Rule
from mixsearch.cli import main
from mixsearch.measure import MEASURE_RULES
from mixsearch.pruning import PRUNERS
from mixsearch.space import SPACE_RULES
from mixsearch.errors import UsageError
from mixsearch.spec import CONSTRAINABLE, DATA_RULES, OBJECTIVES, STUDY_RULES, TOP_LEVEL, load_spec
from mixsearch.train import TRAIN_RULES

# Generated values of the fields that size the data (image shape, class count) stay at or below
# this: the data set is made in memory before the model exists, so a huge synthetic image is a
# memory test of the machine, not of the spec layer. The fields that size a network (widths,
# depths) get huge values too: the static size limits reject them before any allocation.
DATA_SIZE_MAX = 64
DATA_SIZE_FIELDS = {"data.image_shape", "data.num_classes"}

# Seconds one spec may take. Parsing takes milliseconds; a CLI call on a tiny spec takes well
# under a second on an idle machine, but tens of seconds on a 2-core machine shared by other
# work (torch's FLOP counter is slow under load), so the CLI bound only catches runaways.
SECONDS_TO_PARSE = 2.0
SECONDS_PER_CLI_CALL = 60.0
HANG_SECONDS = 120          # an in-process call still running after this is a hang
SPEC = "spec.yaml"
SECTION_RULES = {"study": STUDY_RULES, "data": DATA_RULES, "train": TRAIN_RULES, "measure": MEASURE_RULES,
                 "constraints": {name: Rule(float, None, nullable=True, minimum=0.0) for name in CONSTRAINABLE}}
SHIPPED = {path.name: yaml.safe_load(path.read_text()) for path in sorted((ROOT / "spaces").glob("*.yaml"))}
FIELD_LINE = re.compile(r"^error: (?P<file>\S+): (?P<field>.+?): ")


# -- values ------------------------------------------------------------------------------------

ODD_TEXT = st.sampled_from(["", " ", "é", "日本語", "\u00a0", "-", "0", "1e3", "null", "[1, 2]", "a" * 300,
                            "idx:", "folder:", "../..", "~", "\t", "none,", "1,2,x", "2,2,2,2,2,2,2,2,2,2"])


def leaves(int_max: int | None) -> st.SearchStrategy:
    big = 10**30 if int_max is None else int_max
    return st.one_of(
        st.none(), st.booleans(),
        st.integers(min_value=-10**30, max_value=big),
        st.integers(min_value=-3, max_value=min(big, 130)),
        st.sampled_from([-(10**400), -(2**63), 2**31, 2**32, 2**63, 10**400]).filter(lambda n: n <= big),
        st.floats() if int_max is None else st.floats(max_value=float(int_max)) | st.just(float("nan")),
        st.text(max_size=10), ODD_TEXT,
    )


def wild(int_max: int | None) -> st.SearchStrategy:
    """Anything YAML can hold: scalars, lists and mappings of them, nested."""
    return st.recursive(leaves(int_max), lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(["low", "high", "step", "log", "type"]),
                                  st.integers(-2, 2)), inner, max_size=4)), max_leaves=8)


def valid(rule: Rule, int_max: int | None) -> st.SearchStrategy:
    """A value the rule accepts on its own (combinations may still be impossible)."""
    if rule.allowed is not None:
        return st.sampled_from(rule.allowed)
    if rule.kind is bool:
        return st.booleans()
    if rule.kind is int:
        low = int(rule.minimum) if rule.minimum is not None else -5
        high = int(rule.maximum) if rule.maximum is not None else max(low, int_max or 10**12)
        return st.integers(min_value=low, max_value=min(high, int_max) if int_max else high)
    if rule.kind is float:
        low = rule.minimum if rule.minimum is not None else -1e6
        high = rule.maximum if rule.maximum is not None else (int_max or 1e12)
        return st.floats(min_value=low, max_value=max(low, high), allow_nan=False)
    if rule.kind is str:
        return st.from_regex(rule.pattern, fullmatch=True).filter(lambda s: len(s) < 40) if rule.pattern else \
            st.one_of(st.text(max_size=10), ODD_TEXT)
    if rule.kind is list:
        item = valid(rule.item, int_max) if rule.item else wild(int_max)
        return st.lists(item, min_size=1, max_size=4)
    if rule.kind is dict:
        return section(rule.rules, "")
    return wild(int_max)


@st.composite
def field_value(draw, path: str, rule: Rule) -> object:
    """Mostly valid (so that generation reaches the later checks), else anything at all."""
    int_max = DATA_SIZE_MAX if path in DATA_SIZE_FIELDS else None
    if rule.kind is dict:
        return draw(section(rule.rules, path) if draw(st.integers(0, 4)) else wild(int_max))
    roll = draw(st.integers(0, 9))
    if roll < 6:
        return draw(valid(rule, int_max))
    if roll < 8 and rule.searchable:
        one = valid(rule, int_max) if draw(st.booleans()) else wild(int_max)
        if draw(st.booleans()):
            return draw(st.lists(one, max_size=4))
        # a range: low/high in any order (inverted too), maybe a step or log, maybe keys missing
        rng = {"low": draw(one), "high": draw(one)}
        for key, value in (("step", one), ("log", st.booleans() | wild(int_max))):
            if draw(st.booleans()):
                rng[key] = draw(value)
        if draw(st.integers(0, 5)) == 0:
            rng.pop(draw(st.sampled_from(["low", "high"])))
        return rng
    return draw(wild(int_max))


@st.composite
def section(draw, rules: dict[str, Rule], path: str) -> dict:
    """Some of a section's fields (each one mostly valid), sometimes an unknown key."""
    keys = draw(st.lists(st.sampled_from(sorted(rules)), unique=True, max_size=len(rules))) if rules else []
    data = {key: draw(field_value(f"{path}.{key}" if path else key, rules[key])) for key in keys}
    if draw(st.integers(0, 9)) == 0:
        data[draw(st.text(min_size=1, max_size=8))] = draw(wild(None))
    return data


# -- whole specs ------------------------------------------------------------------------------

@st.composite
def pruner(draw) -> object:
    name = draw(st.sampled_from(sorted(PRUNERS)) | wild(None))
    if not isinstance(name, str) or name not in PRUNERS or draw(st.booleans()):
        return name
    return {"type": name, **draw(section(PRUNERS[name][1], "study.pruner"))}


@st.composite
def space(draw) -> object:
    family = draw(st.sampled_from(sorted(SPACE_RULES)))
    data = draw(section(SPACE_RULES[family], "space"))
    roll = draw(st.integers(0, 9))
    if roll < 7:
        data["family"] = family
    elif roll == 7:
        data["family"] = draw(wild(None))
    return data


@st.composite
def schema_spec(draw) -> dict:
    """A spec generated from the Rule tables: every section, every field may appear."""
    spec = {}
    for name in TOP_LEVEL:
        if name == "space":
            if draw(st.integers(0, 19)):
                spec["space"] = draw(space() if draw(st.integers(0, 9)) else wild(None))
            continue
        if not draw(st.booleans()):
            continue
        if name == "objectives":
            options = st.sampled_from(OBJECTIVES) if draw(st.integers(0, 4)) else wild(None)
            spec[name] = draw(st.lists(options, max_size=5) if draw(st.integers(0, 5)) else wild(None))
        elif draw(st.integers(0, 9)):
            spec[name] = draw(section(SECTION_RULES[name], name))
            if name == "study" and draw(st.booleans()):
                spec[name]["pruner"] = draw(pruner())
        else:
            spec[name] = draw(wild(None))
    if draw(st.integers(0, 19)) == 0:
        spec[draw(st.text(min_size=1, max_size=8))] = draw(wild(None))
    return spec


def _fields(family: str) -> list[tuple[str, Rule]]:
    found = [(f"{name}.{key}", rule) for name, rules in SECTION_RULES.items() for key, rule in rules.items()]
    found.append(("objectives", Rule(list, item=Rule(str, allowed=OBJECTIVES))))
    for key, rule in SPACE_RULES[family].items():
        found.append((f"space.{key}", rule))
        for sub, sub_rule in (rule.rules or {}).items():
            found.append((f"space.{key}.{sub}", sub_rule))
    for name, (_, rules) in PRUNERS.items():
        found += [(f"study.pruner.{key}", rule) for key, rule in rules.items()]
    return found


@st.composite
def mutation(draw, base: dict) -> tuple[dict, list[str]]:
    """``base`` with one to three fields set to generated values, deleted, or misspelt."""
    spec = copy.deepcopy(base)
    family = spec.get("space", {}).get("family", "mixer")
    fields = _fields(family if family in SPACE_RULES else "mixer")
    touched = []
    for _ in range(draw(st.integers(1, 3))):
        path, rule = draw(st.sampled_from(fields))
        *parents, last = path.split(".")
        node = spec
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {"type": "pareto"} if path.startswith("study.pruner.") else {}
            node = node[key]
        action = draw(st.integers(0, 9))
        if action == 0:
            node.pop(last, None)
        elif action == 1:
            node[last + draw(st.sampled_from(["s", "_", "x"]))] = node.pop(last, 1)
        else:
            node[last] = draw(field_value(path, rule))
        touched.append(path)
    return spec, touched


# -- running the parser and the command line -------------------------------------------------

@contextlib.contextmanager
def hang_alarm(seconds: int):
    def hung(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def call_main(argv: list[str]) -> tuple[int, str, str, float]:
    """``mixsearch ARGV`` in this process: exit status, stdout, stderr, seconds."""
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), hang_alarm(HANG_SECONDS):
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code
    return status, out.getvalue(), err.getvalue(), time.monotonic() - started


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write(spec: object, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():  # one scratch directory serves every example of a test
        if old.is_dir():
            import shutil
            shutil.rmtree(old)
        else:
            old.unlink()
    path = directory / SPEC
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return path


def assert_clean(status, out: str, err: str, seconds: float, path: Path, accepted_text: str, spec) -> None:
    assert "Traceback" not in out + err, err
    assert seconds < SECONDS_PER_CLI_CALL, f"took {seconds:.1f} s"
    if status == 0:
        assert accepted_text in out and not err.strip(), (out[-500:], err)
        return
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, (status, err)
    assert len(lines) == 1, err
    match = FIELD_LINE.match(lines[0])
    assert match and match["file"] == str(path), f"no file and field in {lines[0]!r}"
    # the field: a path in a known section, or an unknown top-level key of the file
    # (an odd key is quoted, so that a line break in it cannot break the line)
    keys = list(TOP_LEVEL) + [text for key in spec for text in (str(key), repr(key))] if isinstance(spec, dict) \
        else list(TOP_LEVEL)
    assert any(match["field"] == key or match["field"].startswith(key + ".") or match["field"].startswith(key + "[")
               for key in keys), f"no field in {lines[0]!r}"


def check_validate(spec: object, directory: Path) -> None:
    path = write(spec, directory)
    before = snapshot(directory)
    status, out, err, seconds = call_main(["validate", str(path)])
    assert_clean(status, out, err, seconds, path, "ok", spec)
    assert snapshot(directory) == before  # validate never writes


def check_run(spec: object, directory: Path) -> None:
    path = write(spec, directory)
    before = snapshot(directory)
    storage = f"sqlite:///{directory / 'studies' / 'study.db'}"
    status, out, err, seconds = call_main(["run", str(path), "--storage", storage, "--timeout", "1e-9"])
    assert_clean(status, out, err, seconds, path, "0 trials added", spec)
    if status != 0:
        assert snapshot(directory) == before  # a rejected spec writes nothing


def small_data(spec: dict) -> dict:
    """Data that ``run`` can load offline in a fraction of a second: bundled MNIST or synthetic."""
    data = spec.get("data")
    if not isinstance(data, dict):
        return spec
    if data.get("dataset") not in ("synthetic",):
        data["dataset"] = "mnist"
        data["source"] = "bundled"
    for key in ("train_size", "val_size", "test_size"):
        if isinstance(data.get(key), int) and not isinstance(data.get(key), bool):
            data[key] = min(data[key], 2000)
    return spec


PROPERTY = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much],
                    deadline=None)


def fewer(fraction: float, most: int = 30) -> settings:
    """The active profile's example count, scaled and capped: a CLI check costs seconds, up to
    tens of seconds on a loaded machine, so the long profile adds depth mostly to the parser."""
    return settings(PROPERTY, max_examples=min(most, max(3, int(settings.default.max_examples * fraction))))


def check_load_spec(spec: object, directory: Path) -> None:
    """The parser alone (``mixsearch.spec.load_spec``): a Spec, or one SpecError naming file and field."""
    path = write(spec, directory)
    started = time.monotonic()
    try:
        with hang_alarm(HANG_SECONDS):
            load_spec(path)
    except UsageError as exc:
        lines = str(exc).splitlines()
        assert len(lines) == 1, str(exc)
        assert_clean(2, "", f"error: {exc}", time.monotonic() - started, path, "", spec)
    assert time.monotonic() - started < SECONDS_TO_PARSE


# -- the properties ---------------------------------------------------------------------------
# Parsing is fast, so the parser sees the most specs; the CLI checks (which build the corner
# archs, or load data and open a study) see fewer.

@PROPERTY
@given(spec=schema_spec())
def test_the_parser_accepts_or_names_the_field_of_a_schema_generated_spec(tmp_path, spec):
    check_load_spec(spec, tmp_path / "w")


@PROPERTY
@given(base=st.sampled_from(sorted(SHIPPED)), data=st.data())
def test_the_parser_accepts_or_names_the_field_of_a_mutated_shipped_spec(tmp_path, base, data):
    spec, _ = data.draw(mutation(SHIPPED[base]))
    check_load_spec(spec, tmp_path / "w")


@fewer(0.15)
@given(data=st.data())
def test_validate_accepts_or_names_the_field_of_a_mutated_spec(tmp_path, data):
    spec, _ = data.draw(mutation(TINY_SPEC))
    check_validate(spec, tmp_path / "w")


@fewer(0.15)
@given(spec=schema_spec())
def test_validate_accepts_or_names_the_field_of_a_schema_generated_spec(tmp_path, spec):
    check_validate(spec, tmp_path / "w")


@fewer(0.15)
@given(data=st.data())
def test_run_up_to_the_first_trial_accepts_or_names_the_field(tmp_path, data):
    spec, _ = data.draw(mutation(TINY_SPEC))
    check_run(small_data(spec), tmp_path / "w")


@fewer(0.1)
@given(spec=schema_spec())
def test_run_of_a_schema_generated_spec_accepts_or_names_the_field(tmp_path, spec):
    assume(isinstance(spec.get("data", {}), dict))
    spec.setdefault("data", {})
    check_run(small_data(spec), tmp_path / "w")


@fewer(0.05, most=10)
@given(data=st.data())
def test_a_real_process_prints_one_line_for_a_mutated_spec(tmp_path, data):
    # The in-process calls miss what only a fresh process shows: import-time warnings, logging
    # handlers, rich's terminal detection.
    spec, _ = data.draw(mutation(TINY_SPEC))
    directory = tmp_path / "w"
    path = write(spec, directory)
    before = snapshot(directory)
    started = time.monotonic()
    done = run_cli(["validate", path], directory, timeout=HANG_SECONDS)
    seconds = time.monotonic() - started
    assert_clean(done.returncode, done.stdout, done.stderr, seconds, path, "ok", spec)
    assert snapshot(directory) == before


def test_the_generator_covers_every_field_of_every_section():
    # The field list is read from the Rule tables, so a new field is generated automatically.
    paths = {path for family in SPACE_RULES for path, _ in _fields(family)}
    for name, rules in SECTION_RULES.items():
        assert {f"{name}.{key}" for key in rules} <= paths
    for rules in SPACE_RULES.values():
        assert {f"space.{key}" for key in rules} <= paths
    assert {"space.sharing.mode", "space.fusion.first_k", "study.pruner.margin", "objectives"} <= paths
    assert len(paths) > 60
