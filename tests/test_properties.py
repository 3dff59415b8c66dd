"""Property-based tests (hypothesis) of papertune's parsers: the JSONL readers and the stage readers built on
them, the model-reply parsers, and the config parser (YAML files, ``--set`` strings, typed coercion).

Whatever the input (arbitrary bytes, arbitrary JSON-like structures, valid rows with one field broken), only
papertune's own errors (``PapertuneError``) ever escape; valid rows come back unchanged and every skipped line
is reported with its line number. The request parser of ``papertune serve`` is in test_properties_serve.py.
Each run is deterministic (``derandomize``, no example database) and bounded.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import bag_of_words
from papertune import index, rundir
from papertune.config import PapertuneConfig, config_to_dict, load_config
from papertune.curate.judge import BLIND_SCHEMA, GRADE_SCHEMA, parse_reply
from papertune.curate.stage import read_inputs
from papertune.errors import ConfigError, InputError
from papertune.evaluate.judge import chunk_texts, parse_judge_reply
from papertune.generate.replies import ParsedPair, parse_pairs
from papertune.generate.stage import load_chunks
from papertune.settings import apply_overrides, coerce, from_dict

# derandomize: the same examples on every run (CI is deterministic); database=None: nothing stored between runs.
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(PROPERTY, max_examples=40)

HUGE_INT = "1" * 5000  # past Python's 4300-digit limit for reading integers
DEEP = "[" * 5000  # past Python's recursion limit
YAML_DEEP = "[" * 1000  # the same for PyYAML, which recurses several calls a level
SPECIAL_LINES = [HUGE_INT.encode(), f'{{"id": 1, "text": {HUGE_INT}}}'.encode(), DEEP.encode(),
                 b'{"id": "1", "text": "\\ud800"}', b"NaN", b'{"id": 1, "text": NaN}', b"\xff\xfe\x00",
                 b'{"id": "1", "text": "x", "id": null}', b"[]", b"null", b'"text"']

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300, max_value=10**400)
           | st.floats() | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
nonblank = st.text(min_size=1, max_size=40).filter(lambda s: s.strip())
ids = nonblank | st.integers(min_value=-(10**30), max_value=10**30)


def _dumps(value: typing.Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def _rows(required: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    extras = st.dictionaries(st.text(max_size=8).filter(lambda k: k not in required), json_values, max_size=3)
    return st.builds(lambda fields, more: {**more, **fields}, st.fixed_dictionaries(required), extras)


chunk_rows = _rows({"id": ids, "text": nonblank})
pair_rows = _rows({"id": ids, "question": nonblank, "answer": nonblank, "chunk_id": ids})


@st.composite
def mutated(draw: st.DrawFn, rows: st.SearchStrategy) -> dict:
    """A valid row with one field replaced by an arbitrary JSON value, or deleted."""
    row = draw(rows)
    key = draw(st.sampled_from(sorted(row)))
    if draw(st.booleans()):
        del row[key]
    else:
        row[key] = draw(json_values)
    return row


@st.composite
def jsonl_files(draw: st.DrawFn, rows: st.SearchStrategy) -> tuple[bytes, dict[int, dict]]:
    """File bytes mixing valid rows, mutated rows, arbitrary bytes, special lines and blank lines; and the
    valid rows by their line number."""
    lines, valid = [], {}
    line_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" "))
    for number, kind in enumerate(draw(st.lists(st.sampled_from(["valid", "mutated", "bytes", "special", "blank"]),
                                                 max_size=12)), start=1):
        if kind == "valid":
            valid[number] = draw(rows)
            lines.append(_dumps(valid[number]))
        elif kind == "mutated":
            lines.append(_dumps(draw(mutated(rows))))
        elif kind == "bytes":
            lines.append(draw(line_bytes))
        elif kind == "special":
            lines.append(draw(st.sampled_from(SPECIAL_LINES)))
        else:
            lines.append(draw(st.sampled_from([b"", b"  ", b"\t"])))
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    return ending.join(lines) + (ending if lines and draw(st.booleans()) else b""), valid


def _lines(text: str) -> list[str]:
    """The lines of a file as Python's text files read them (universal newlines: \\n, \\r\\n and \\r)."""
    return re.split(r"\r\n|\r|\n", text)


# Hypothesis runs a test body many times, so the files go to fresh folders inside one folder that is removed
# when the test process ends (a function-scoped tmp_path would be shared by every example).
_EXAMPLES_ROOT = tempfile.TemporaryDirectory(prefix="papertune-properties-")


def _write(data: bytes, name: str = "rows.jsonl") -> Path:
    path = Path(tempfile.mkdtemp(dir=_EXAMPLES_ROOT.name)) / name
    path.write_bytes(data)
    return path


def _with_string_ids(row: dict, shape: rundir.RowShape) -> dict:
    return {k: str(v) if shape.required.get(k, shape.optional.get(k)) == rundir.ID and v is not None else v
            for k, v in row.items()}


def _check_read_rows(path: Path, data: bytes, valid: dict[int, dict], shape: rundir.RowShape,
                     rows: list[dict], problems: list[str]) -> None:
    text_lines = _lines(data.decode("utf-8", "replace"))
    nonblank_lines = [n for n, line in enumerate(text_lines, start=1) if line.strip()]
    skipped = []
    for message in problems:  # every skipped line is reported as FILE:LINE: problem
        assert message.startswith(f"{path}:") and message.endswith("; line skipped"), message
        skipped.append(int(message[len(f"{path}:"):].split(":", 1)[0]))
    assert len(set(skipped)) == len(skipped) and set(skipped) <= set(nonblank_lines)
    kept = [n for n in nonblank_lines if n not in skipped]
    assert len(kept) == len(rows)
    for number, row in zip(kept, rows):
        if number in valid:  # a valid row comes back unchanged (ids as strings)
            assert json.dumps(row) == json.dumps(_with_string_ids(valid[number], shape))  # NaN == NaN here
        for key, types in shape.required.items():  # whatever else is kept has the shape
            assert isinstance(row[key], str if types == rundir.ID else types) and str(row[key]).strip()
    assert not set(valid) & set(skipped)


# --- the JSONL readers --------------------------------------------------------------------------------


@PROPERTY
@given(jsonl_files(chunk_rows))
@example((f'{{"id": 1, "text": {HUGE_INT}}}\n'.encode(), {}))  # was a ValueError (int digit limit)
@example(((DEEP + "\n").encode(), {}))  # was a RecursionError
def test_read_chunks_keeps_valid_rows_and_reports_every_skipped_line(case):
    data, valid = case
    path = _write(data)
    rows, problems = rundir.read_chunks(path)
    _check_read_rows(path, data, valid, rundir.CHUNK, rows, problems)


def test_a_row_with_a_lone_surrogate_is_skipped_so_it_can_be_written_again(tmp_path):
    path = tmp_path / "chunks.jsonl"
    path.write_text('{"id": 1, "text": "x \\ud800"}\n{"id": 2, "text": "fine \\u00e9"}\n', encoding="utf-8")
    rows, problems = rundir.read_chunks(path)
    assert rows == [{"id": "2", "text": "fine \u00e9"}]
    assert problems == [f"{path}:1: holds a lone surrogate escape (\\ud800-\\udfff), which is not text; line skipped"]
    assert rundir.write_jsonl_atomic(tmp_path / "again.jsonl", rows) == 1


@PROPERTY
@given(jsonl_files(pair_rows))
def test_read_pairs_keeps_first_of_each_id_and_reports_the_rest(case):
    data, valid = case
    path = _write(data)
    unique, problems, duplicates = rundir.read_pairs(path)
    all_rows, same_problems = rundir.read_rows(path, rundir.PAIR)
    assert problems == same_problems
    _check_read_rows(path, data, valid, rundir.PAIR, all_rows, problems)
    seen, expected = set(), []
    for row in all_rows:
        if row["id"] not in seen:
            seen.add(row["id"])
            expected.append(row)
    assert unique == expected and len(duplicates) == len(all_rows) - len(unique)
    strict, strict_problems = rundir.read_rows(path, rundir.PAIR_OF_CHUNK)  # curate's reading of qa.jsonl
    _check_read_rows(path, data, valid, rundir.PAIR_OF_CHUNK, strict, strict_problems)


@PROPERTY
@given(st.binary(max_size=300) | jsonl_files(chunk_rows).map(lambda case: case[0]))
@example(f'{{"a": {HUGE_INT}}}\n'.encode())
@example(b'{"a": 1}\n\xff\n')  # was a UnicodeDecodeError
@example(b"[1]\n")
def test_read_jsonl_yields_objects_or_raises_input_error(data):
    path = _write(data)
    try:
        rows = list(rundir.read_jsonl(path))
    except InputError as exc:
        assert str(exc).startswith(f"{path}:")
        return
    assert all(isinstance(row, dict) for row in rows)
    assert json.dumps(rows) == json.dumps([json.loads(line) for line in _lines(data.decode("utf-8")) if line.strip()])


@FEW
@given(jsonl_files(chunk_rows))
def test_stage_readers_of_chunks_never_raise(case):
    data, valid = case
    path = _write(data, "chunks.jsonl")
    chunks, problems, repeated = load_chunks(path)  # generate
    assert len({c["id"] for c in chunks}) == len(chunks)
    rows, _ = rundir.read_chunks(path)
    assert len(chunks) + repeated == len(rows)
    texts = chunk_texts(path.parent, {c["id"] for c in chunks})  # evaluate's judge
    assert set(texts) == {c["id"] for c in chunks}
    with pytest.MonkeyPatch.context() as patch:  # the chunk index of ask --cite and serve
        patch.setattr(index, "embed_texts", bag_of_words)
        built = index.ChunkIndex.load_or_build(path.parent, "bag-of-words")
        assert set(built.ids) == {str(row["id"]) for row in rows}
        assert index.ChunkIndex.load_or_build(path.parent, "bag-of-words").built is False


@FEW
@given(jsonl_files(pair_rows), jsonl_files(chunk_rows))
def test_curate_reads_any_pairs_and_chunks_as_strings(pairs, chunks):
    run = _write(pairs[0], rundir.QA).parent
    (run / rundir.CHUNKS).write_bytes(chunks[0])
    rows, texts, problems = read_inputs(run)
    expected, expected_problems = rundir.read_rows(run / rundir.QA, rundir.PAIR_OF_CHUNK)
    assert len(rows) == len(expected) and len(problems) == len(expected_problems) + len(rundir.read_chunks(
        run / rundir.CHUNKS)[1])
    assert all(isinstance(row[key], str) for row in rows for key in ("id", "question", "answer", "chunk_id"))
    assert all(isinstance(key, str) and isinstance(text, str) for key, text in texts.items())


@FEW
@given(st.binary(max_size=200), st.binary(max_size=200))
@example(b"{}", b"5")  # ids.json not a list: was a TypeError
@example(b"{}", b"[[1]]")  # unhashable ids: was a TypeError
@example(b"{}", DEEP.encode())
def test_a_damaged_chunk_index_is_rebuilt(meta, ids):
    run = _write(b'{"id": "c1", "text": "attention heads"}\n', "chunks.jsonl").parent
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(index, "embed_texts", bag_of_words)
        index.ChunkIndex.load_or_build(run, "bag-of-words")
        (run / rundir.INDEX_DIR / "meta.json").write_bytes(meta)
        (run / rundir.INDEX_DIR / "ids.json").write_bytes(ids)
        assert index.ChunkIndex.load_or_build(run, "bag-of-words").ids == ["c1"]


# --- the model-reply parsers: however a reply is broken, they never raise ------------------------------

reply_fragments = st.one_of(st.text(max_size=30), json_values.map(lambda v: json.dumps(v)),
                            st.sampled_from(['{"correctness": ', '"groundedness": 4', "```json\n", "```", "}", "{",
                                             "[", "]", "Question: ", "\nAnswer: ", "correctness = 3", '\\"', "1e999",
                                             HUGE_INT, DEEP, '"question": "Why', "'answer': 'x'"]))
replies = st.lists(reply_fragments, max_size=8).map("".join)


@PROPERTY
@given(replies)
@example('{"correctness": 1' + "0" * 400 + ', "groundedness": 3}')  # was an OverflowError
@example('{"correctness": ' + HUGE_INT + ', "groundedness": 3}')  # was a ValueError
@example('{"correctness": ' + DEEP + "}")
def test_evaluate_judge_reply_is_two_scores_from_1_to_5_or_none(reply):
    parsed = parse_judge_reply(reply)
    assert parsed is None or (set(parsed) == {"correctness", "groundedness"}
                              and all(1 <= v <= 5 for v in parsed.values()))


@PROPERTY
@given(st.integers(1, 5), st.integers(1, 5), st.text(max_size=30).filter(lambda s: "{" not in s))
def test_evaluate_judge_reads_a_valid_reply_in_prose(correctness, groundedness, prose):
    reply = f'{prose}```json\n{{"correctness": {correctness}, "groundedness": "{groundedness}"}}\n```'
    assert parse_judge_reply(reply) == {"correctness": correctness, "groundedness": groundedness}


@PROPERTY
@given(replies, st.sampled_from([GRADE_SCHEMA, BLIND_SCHEMA]))
def test_curate_judge_reply_is_the_schema_or_none(reply, schema):
    parsed = parse_reply(reply, schema)
    assert parsed is None or set(parsed) == set(schema["properties"])


# Bugs these properties found in modules being finished elsewhere, pinned until they are fixed there (strict:
# each turns into a failure once its module is fixed, so the mark gets removed).
@pytest.mark.parametrize("reply", [
    pytest.param('{"quote": "q", "answerable": 1e999}', id="infinite-score-OverflowError"),
    pytest.param('{"quote": "q", "answerable": ' + HUGE_INT + "}", id="huge-int-ValueError"),
    pytest.param('{"quote": ' + DEEP + "]" * len(DEEP) + "}", id="deep-RecursionError"),
])
def test_curate_judge_reply_that_is_broken_is_none(reply):
    assert parse_reply(reply, GRADE_SCHEMA) is None


@pytest.mark.parametrize("reply", [DEEP + "]" * len(DEEP), '{"question": ' + DEEP + "]" * len(DEEP) + "}"])
def test_generate_reply_nested_past_the_recursion_limit_is_none(reply):
    assert parse_pairs(reply) is None


@PROPERTY
@given(replies)
def test_generate_reply_is_pairs_of_text_or_none(reply):
    pairs = parse_pairs(reply)
    assert pairs is None or all(isinstance(p, ParsedPair) and isinstance(p.question, str)
                                and isinstance(p.answer, str) for p in pairs)


# --- the config parser --------------------------------------------------------------------------------


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, typing.Any]]:
    """(dotted name, annotation) of every setting."""
    hints = typing.get_type_hints(cls)
    out = []
    for item in dataclasses.fields(cls):
        name = f"{prefix}.{item.name}" if prefix else item.name
        annotation = hints[item.name]
        out += _leaves(annotation, name) if dataclasses.is_dataclass(annotation) else [(name, annotation)]
    return out


SETTINGS = _leaves(PapertuneConfig)
yaml_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
                           | st.dates(), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3), max_leaves=8)


def _loads_or_config_error(call: typing.Callable[[], typing.Any]) -> typing.Any:
    try:
        return call()
    except ConfigError as exc:
        assert str(exc)
        return None


@PROPERTY
@given(st.sampled_from(SETTINGS), yaml_values)
@example(("train.learning_rate", float), 10**400)  # was an OverflowError
def test_coerce_returns_a_value_or_names_the_setting(setting, value):
    name, annotation = setting
    try:
        coerce(value, annotation, name)
    except ConfigError as exc:
        assert name in str(exc)


@st.composite
def near_valid_configs(draw: st.DrawFn) -> dict:
    """The default config as a dict, with one setting (or section) replaced, deleted or misspelt."""
    data = config_to_dict(PapertuneConfig())
    path = draw(st.sampled_from([name for name, _ in SETTINGS] + [f.name for f in dataclasses.fields(PapertuneConfig)]))
    *parents, key = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    action = draw(st.sampled_from(["replace", "delete", "misspell"]))
    if action == "replace":
        node[key] = draw(yaml_values)
    elif action == "delete":
        del node[key]
    else:
        node[key + draw(st.text(min_size=1, max_size=3))] = node.pop(key)
    return data


@PROPERTY
@given(near_valid_configs() | yaml_values)
def test_from_dict_builds_a_config_or_raises_config_error(data):
    cfg = _loads_or_config_error(lambda: from_dict(PapertuneConfig, data, ""))
    if cfg is not None:
        _loads_or_config_error(cfg.validate)


@FEW
@given(st.binary(max_size=200) | near_valid_configs().map(lambda d: yaml.safe_dump(d).encode())
       | st.lists(st.sampled_from(["ingest:", "  workers: ", "2001-13-45", "!!bool maybe", "!!int 0x", "? [a]\n: 1",
                                   "!!timestamp x", HUGE_INT, YAML_DEEP, "\n", "train: {learning_rate: 1e999}",
                                   "&a [*a]",
                                   "<<: 1", "\t"]), max_size=6).map(lambda parts: "".join(parts).encode()))
@example(b"\xff\xfe ingest: {}")  # was a UnicodeDecodeError
@example(b"ingest: {workers: 2001-13-45}")  # was a ValueError
@example(b"ingest: {workers: !!timestamp x}")  # was an AttributeError
@example(b"ingest: {ocr: !!bool maybe}")  # was a KeyError
@example(f"ingest: {YAML_DEEP}".encode())  # was a RecursionError
@example(f"train: {{learning_rate: 1{'0' * 400}}}".encode())  # was an OverflowError
def test_load_config_of_any_file_is_a_config_or_config_error(data):
    path = _write(data, "config.yaml")
    cfg = _loads_or_config_error(lambda: load_config(path))
    assert cfg is None or isinstance(cfg, PapertuneConfig)


def test_the_default_config_written_as_yaml_loads_unchanged(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(PapertuneConfig())), encoding="utf-8")
    assert load_config(path) == PapertuneConfig()


@PROPERTY
@given(st.sampled_from([name for name, _ in SETTINGS]) | st.text(max_size=20),
       st.text(max_size=30) | st.sampled_from(["2001-13-45", "!!int 0x", "!!timestamp x", "!!bool maybe", HUGE_INT,
                                               YAML_DEEP, "1" + "0" * 400, "[1, 2", "{a: 1}", ".nan", "-.inf", "~"]))
@example("train.learning_rate", "1" + "0" * 400)  # was an OverflowError
@example("ingest.ocr_lang", "2001-13-45")  # was a ValueError
@example("ingest.ocr_lang", YAML_DEEP)  # was a RecursionError
def test_set_strings_of_any_text_load_or_raise_config_error(key, value):
    cfg = _loads_or_config_error(lambda: load_config(None, [f"{key}={value}"]))
    assert cfg is None or isinstance(cfg, PapertuneConfig)


@PROPERTY
@given(st.text(max_size=40))
def test_apply_overrides_sets_the_named_setting_or_raises_config_error(item):
    data: dict = {}
    if _loads_or_config_error(lambda: apply_overrides(data, [item])) is None:
        return
    key = item.split("=", 1)[0].strip()
    node = data
    for part in key.split("."):
        node = node[part]


@pytest.mark.parametrize("value", ["2001-13-45", "!!int 0x", "!!timestamp x", "!!bool maybe", HUGE_INT])
def test_a_set_value_yaml_cannot_construct_is_kept_as_text(value):
    assert apply_overrides({}, [f"ingest.ocr_lang={value}"]) == {"ingest": {"ocr_lang": value}}


def test_an_integer_past_float_range_is_not_a_finite_number():
    with pytest.raises(ConfigError, match="train.learning_rate must be a finite number"):
        load_config(None, ["train.learning_rate=1" + "0" * 400])
