"""charlm.corpus: corpus loading and its refusals, the vocabulary, the split, and the batchers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from charlm.corpus import (
    DataError,
    RandomBatcher,
    StreamBatcher,
    Vocab,
    eval_windows,
    load_corpus,
    make_batcher,
    same_text,
    split_text,
    training_data,
)

TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer\n" * 3


# --- load_corpus ---------------------------------------------------------------------------------------


def test_load_corpus_reads_utf8_and_drops_a_bom(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes("\ufeffcafé naïve\n".encode())
    assert load_corpus(p) == "café naïve\n"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"\xef\xbb\xbf", "no text"),
        (b"abc\x00\x01\x02", "binary"),
        ("caf\u00e9".encode("latin-1"), "not UTF-8"),
        ("hello".encode("utf-16"), "binary"),  # UTF-16 of ASCII is full of NUL bytes
    ],
)
def test_load_corpus_refuses_in_one_line_naming_the_file(tmp_path, content, words):
    p = tmp_path / "bad corpus.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_corpus(p)
    msg = str(err.value)
    assert str(p) in msg and words in msg and "\n" not in msg


def test_load_corpus_refuses_a_directory(tmp_path):
    with pytest.raises(DataError, match="directory"):
        load_corpus(tmp_path)


# --- Vocab -----------------------------------------------------------------------------------------------


def test_vocab_is_the_sorted_characters_and_round_trips():
    v = Vocab.from_text("hello, world\n")
    assert v.chars == sorted(set("hello, world\n"))
    ids = v.encode("world, hello")
    assert ids.dtype == np.int32 and list(ids) == [v.index[c] for c in "world, hello"]
    assert v.decode(ids) == "world, hello"
    assert Vocab.from_json(v.to_json()) == v
    assert "h" in v and "z" not in v and len(v) == len(set("hello, world\n"))


def test_vocab_encodes_non_bmp_characters():
    v = Vocab.from_text("a😀b")
    assert v.decode(v.encode("b😀a")) == "b😀a"


def test_unknown_characters_are_named_or_mapped_to_a_stand_in():
    v = Vocab.from_text("abc ")
    with pytest.raises(DataError) as err:
        v.encode("abxx\t", what="the prime")
    assert "the prime" in str(err.value) and "'x' (2)" in str(err.value) and "'\\t' (1)" in str(err.value)
    assert v.decode(v.encode("abxx", unknown=" ")) == "ab  "
    with pytest.raises(DataError, match="not in the vocabulary"):
        v.encode("abx", unknown="z")
    ids, known = v.encode_masked("axb", stand_in=v.index[" "])
    assert list(known) == [True, False, True] and v.decode(ids) == "a b"
    assert v.unknown("axxyb") == Counter({"x": 2, "y": 1})


@pytest.mark.parametrize(
    ("chars", "why"),
    [([], "at least one character"), (["a", "a"], "'a' twice"), (["ab"], "not 'ab'"), ([1], "not 1")],
)
def test_a_bad_stored_vocabulary_is_refused(chars, why):
    with pytest.raises(DataError, match=why):
        Vocab.from_json(chars)


# --- split ---------------------------------------------------------------------------------------------------


def test_split_is_contiguous_with_the_validation_part_last():
    text = "".join(chr(65 + i % 26) for i in range(1000))
    train, val = split_text(text, 0.1)
    assert train + val == text and len(val) == 100
    train, val = split_text(text, 0.25)
    assert len(val) == 250 and text.endswith(val)
    # a tiny fraction still leaves one (input, target) pair to validate on
    assert len(split_text("abcdefghij", 0.01)[1]) == 2
    with pytest.raises(DataError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        split_text(text, 1.0)


# --- stream batcher -----------------------------------------------------------------------------------------


def test_stream_batches_continue_each_row_and_targets_are_the_next_character():
    ids = np.arange(1000, dtype=np.int32)
    b = StreamBatcher(ids, batch_size=4, seq_len=10)
    assert b.stream_len == 249 and b.windows == 24
    first, second = b.next(), b.next()
    assert first.reset and not second.reset
    assert first.x.shape == (4, 10)
    np.testing.assert_array_equal(first.y, first.x + 1)
    # row r of the next window starts where row r of this one stopped
    np.testing.assert_array_equal(second.x[:, 0], first.x[:, -1] + 1)
    np.testing.assert_array_equal(first.x[:, 0], [0, 249, 498, 747])


def test_stream_epoch_wraps_with_a_reset():
    b = StreamBatcher(np.arange(101, dtype=np.int32), batch_size=2, seq_len=10)
    assert b.windows == 5
    batches = [b.next() for _ in range(6)]
    assert [x.reset for x in batches] == [True, False, False, False, False, True]
    assert b.epoch == 1
    np.testing.assert_array_equal(batches[5].x, batches[0].x)


def test_stream_position_restores_the_same_batches():
    ids = np.random.default_rng(0).integers(0, 50, 5000).astype(np.int32)
    a = StreamBatcher(ids, 8, 16)
    for _ in range(50):
        a.next()
    saved = a.state_dict()
    expected = [a.next() for _ in range(30)]
    b = StreamBatcher(ids, 8, 16)
    b.load_state_dict(saved)
    for e, got in zip(expected, (b.next() for _ in range(30))):
        np.testing.assert_array_equal(e.x, got.x)
        np.testing.assert_array_equal(e.y, got.y)
        assert e.reset == got.reset


def test_stream_uses_fewer_streams_when_the_text_is_short_and_refuses_less_than_a_window():
    b = StreamBatcher(np.arange(35, dtype=np.int32), batch_size=32, seq_len=10)
    assert b.batch_size == 3 and b.next().x.shape == (3, 10)
    StreamBatcher(np.arange(11, dtype=np.int32), 4, 10)  # exactly one window fits
    with pytest.raises(DataError, match="shorter than one window"):
        StreamBatcher(np.arange(10, dtype=np.int32), 4, 10)


def test_windows_from_start_leave_the_position_alone():
    b = StreamBatcher(np.arange(500, dtype=np.int32), 4, 10)
    b.next()
    windows = list(b.windows_from_start(3))
    assert len(windows) == 3 and windows[0].reset and b.position == 1
    assert len(list(b.windows_from_start(0))) == b.windows


# --- random batcher -------------------------------------------------------------------------------------------


def test_random_windows_are_real_windows_and_resume_exactly():
    ids = np.arange(300, dtype=np.int32)
    a = RandomBatcher(ids, 5, 7, seed=3)
    batch = a.next()
    assert batch.reset
    np.testing.assert_array_equal(batch.x[:, 1:], batch.x[:, :-1] + 1)  # contiguous pieces of the text
    np.testing.assert_array_equal(batch.y, batch.x + 1)
    assert batch.x.min() >= 0 and batch.y.max() <= 299
    saved = a.state_dict()
    expected = a.next()
    b = RandomBatcher(ids, 5, 7, seed=99)
    b.load_state_dict(saved)
    np.testing.assert_array_equal(b.next().x, expected.x)
    with pytest.raises(DataError, match="is for 'random' batching, this run uses 'stream'"):
        StreamBatcher(ids, 5, 7).load_state_dict(saved)


def test_make_batcher_names():
    ids = np.arange(100, dtype=np.int32)
    assert isinstance(make_batcher("stream", ids, 2, 5, 0), StreamBatcher)
    assert isinstance(make_batcher("random", ids, 2, 5, 0), RandomBatcher)
    with pytest.raises(DataError, match="unknown batching 'shuffle'"):
        make_batcher("shuffle", ids, 2, 5, 0)


# --- scoring windows ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "streams", "seq_len"), [(2, 4, 3), (50, 4, 7), (101, 3, 10), (64, 8, 8)])
def test_eval_windows_score_every_pair_exactly_once(n, streams, seq_len):
    ids = np.arange(n, dtype=np.int32)
    known = np.ones(n, dtype=bool)
    known[n // 2] = False  # a target the vocabulary lacked: masked out
    pairs = []
    for x, y, m in eval_windows(ids, known, streams, seq_len):
        pairs += [(int(a), int(b)) for a, b in zip(x[m], y[m])]
    expected = [(i, i + 1) for i in range(n - 1) if known[i + 1]]
    assert sorted(pairs) == expected


# --- a run's data ----------------------------------------------------------------------------------------------


def _data(path, **kw):
    settings = {"val_fraction": 0.1, "batch_size": 4, "seq_len": 8, "batching": "stream", "seed": 0}
    return training_data(path, **{**settings, **kw})


def test_training_data_splits_encodes_and_records_the_corpus(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    notes = []
    data = _data(path, note=notes.append)
    assert data.vocab == Vocab.from_text(TEXT) and not notes
    train, val = split_text(TEXT, 0.1)
    assert data.vocab.decode(data.train_ids) == train and data.vocab.decode(data.val_ids) == val
    assert data.record["path"] == str(path.resolve()) and data.record["chars"] == len(TEXT)
    assert same_text(data.record, TEXT) and not same_text(data.record, TEXT + "!")
    assert data.batcher.batch_size == 4 and data.val_batcher.seq_len == 8
    # resuming: the text must be the recorded one
    path.write_text(TEXT + "!")
    with pytest.raises(DataError, match="not the text this run was trained on"):
        _data(path, vocab=data.vocab, recorded=data.record)


def test_training_data_with_a_kept_vocabulary_maps_or_refuses_unknown_characters(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT + "#~#")
    vocab = Vocab.from_text(TEXT)
    with pytest.raises(DataError, match=r"'#' \(2\), '~' \(1\).*--unknown-char"):
        _data(path, vocab=vocab)
    notes = []
    data = _data(path, vocab=vocab, unknown_char=" ", note=notes.append)
    assert data.vocab is vocab and data.record["unknown_char"] == " "
    assert len(notes) == 1 and "3 character(s) outside the vocabulary mapped to ' '" in notes[0]
    assert data.vocab.decode(data.val_ids).endswith(TEXT[-5:] + "   ")
