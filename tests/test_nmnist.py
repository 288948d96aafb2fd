"""N-MNIST: the event format, folder/zip layouts, checksums, binning to frames and the frame cache.

Real data is the 1,100-recording subset at ``$STBP_DATA/nmnist-small`` (the tests that need it
skip without it); everything else runs on small recordings built here.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stbp.data import nmnist as nm
from stbp.data.events import EVENT_DTYPE, first_saccade, to_frames
from stbp.data.nmnist import (
    NMNIST,
    SENSOR_SIZE,
    list_recordings,
    load_frames,
    locate_nmnist,
    parse_nmnist,
    read_nmnist,
)
from stbp.errors import StbpError

# from the data README, section nmnist-small
TRAIN_COUNTS = [97, 116, 99, 93, 105, 92, 94, 117, 87, 100]
TEST_COUNTS = [8, 14, 8, 11, 14, 7, 10, 15, 2, 11]
SUBSET_SHA256 = "e60d061b5ed5ed26ab3db63b0c2fca5122bafe1579c8ce4fb89340855591d192"


@pytest.fixture(scope="module")
def small() -> Path:
    root = os.environ.get("STBP_DATA")
    folder = Path(root) / "nmnist-small" if root else None
    if folder is None or not ((folder / "Train").is_dir() and (folder / "Test").is_dir()):
        pytest.skip(
            "the real N-MNIST subset is absent: set STBP_DATA to a folder holding nmnist-small/ "
            "(Train/<digit>/<index>.bin and Test/<digit>/<index>.bin, 1,100 recordings)"
        )
    return folder


# --------------------------------------------------------------------------- helpers


def encode(events) -> bytes:
    """(x, y, t, p) tuples to N-MNIST bytes (y = 240 for an overflow marker)."""
    out = bytearray()
    for x, y, t, p in events:
        out += bytes([x, y, (p << 7) | (t >> 16) & 0x7F, (t >> 8) & 0xFF, t & 0xFF])
    return bytes(out)


def make_events(rows) -> np.ndarray:
    ev = np.zeros(len(rows), dtype=EVENT_DTYPE)
    for i, (x, y, t, p) in enumerate(rows):
        ev[i] = (x, y, t, p)
    return ev


def reference_frames(events, steps, *, sensor_size=(34, 34, 2), time_window=None, binary=True):
    """A straightforward loop over events (independent of stbp's vectorised binning)."""
    w_, h_, p_ = sensor_size
    out = np.zeros((steps, p_, h_, w_), dtype=np.int64)
    if len(events) == 0:
        return out.astype(np.uint8)
    t0, t1 = int(events[0]["t"]), int(events[-1]["t"])
    width = time_window if time_window is not None else max((t1 - t0) // steps, 1)
    for x, y, t, p in events.tolist():
        b = (t - t0) // width
        if b < steps:
            out[b, int(p), y, x] += 1
    return np.minimum(out, 1 if binary else 255).astype(np.uint8)


def distinct_cells(events, steps, *, time_window=None) -> int:
    t0, t1 = int(events[0]["t"]), int(events[-1]["t"])
    width = time_window if time_window is not None else max((t1 - t0) // steps, 1)
    cells = set()
    for x, y, t, p in events.tolist():
        b = (t - t0) // width
        if b < steps:
            cells.add((b, p, y, x))
    return len(cells)


def write_split(root: Path, split: str, per_class: dict[int, int], *, zipped: bool = False,
                top: str | None = None, name: str | None = None) -> Path:
    """A tiny generated split: ``per_class[label]`` recordings of a few events each."""
    folder = split.capitalize()
    rng = np.random.default_rng(len(per_class) + 7)
    files = {}
    for label, count in per_class.items():
        for k in range(count):
            n = int(rng.integers(3, 30))
            t = np.sort(rng.integers(0, 300_000, n))
            rows = [(int(rng.integers(34)), int(rng.integers(34)), int(tt), int(rng.integers(2))) for tt in t]
            files[f"{folder}/{label}/{k + 1:05d}.bin"] = encode(rows)
    if zipped:
        path = root / (name or f"{folder}.zip")
        with zipfile.ZipFile(path, "w") as zf:
            for rel, data in files.items():
                zf.writestr(f"{top}/{rel}" if top else rel, data)
        return path
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root / folder


def zip_folder(src: Path, dest: Path, top: str | None = None) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(src.rglob("*.bin")):
            rel = p.relative_to(src.parent).as_posix()
            zf.write(p, f"{top}/{rel}" if top else rel)
    return dest


# --------------------------------------------------------------------------- format


def test_decode_hand_built_events():
    data = bytes([1, 2, 0x80, 0x00, 0x05, 33, 0, 0x01, 0x23, 0x45, 0, 33, 0xFF, 0xFF, 0xFF])
    ev = parse_nmnist(data)
    assert ev.dtype == EVENT_DTYPE
    assert ev["x"].tolist() == [1, 33, 0]
    assert ev["y"].tolist() == [2, 0, 33]
    assert ev["t"].tolist() == [5, 0x012345, 0x7FFFFF]
    assert ev["p"].tolist() == [True, False, True]


def test_overflow_marker():
    data = encode([(1, 1, 100, 0), (0, 240, 0, 0), (2, 2, 10, 1), (9, 240, 5, 1), (3, 3, 1, 0)])
    ev = parse_nmnist(data)
    assert ev["x"].tolist() == [1, 2, 3]  # markers dropped
    assert ev["t"].tolist() == [100, 10 + 8192, 1 + 2 * 8192]
    with pytest.raises(StbpError, match="no events"):
        parse_nmnist(encode([(0, 240, 0, 0)] * 3), "m.bin")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", ["x.bin", "no events"]),
        (bytes(7), ["x.bin", "7 bytes", "multiple of 5", "truncated"]),
        (encode([(0, 0, 0, 0), (34, 3, 1, 0)]), ["x.bin", "event 1", "x=34", "outside the 34x34"]),
        (encode([(0, 241, 0, 0)]), ["x.bin", "event 0", "y=241"]),
        (encode([(0, 0, 50, 0), (1, 1, 60, 1), (2, 2, 40, 0)]),
         ["x.bin", "backwards at event 2", "60 -> 40"]),
        # the index counts records in the file, markers included
        (encode([(0, 0, 50, 0), (0, 240, 0, 0), (2, 34, 40, 0)]), ["event 2", "y=34"]),
    ],
)
def test_bad_recordings(data, words):
    with pytest.raises(StbpError) as err:
        parse_nmnist(data, "x.bin")
    for word in words:
        assert word in str(err.value)


def test_read_nmnist_errors(tmp_path):
    with pytest.raises(StbpError, match="cannot read"):
        read_nmnist(tmp_path / "missing.bin")
    (tmp_path / "t.bin").write_bytes(bytes(12))
    with pytest.raises(StbpError, match=r"t\.bin: 12 bytes"):
        read_nmnist(tmp_path / "t.bin")


# --------------------------------------------------------------------------- binning


def test_to_frames_small_cases():
    ev = make_events([(0, 0, 0, 0), (1, 2, 4, 1), (1, 2, 5, 1), (3, 3, 9, 0), (4, 4, 10, 1)])
    fr = to_frames(ev, 3, sensor_size=(5, 5, 2), binary=False)
    assert fr.shape == (3, 2, 5, 5) and fr.dtype == np.uint8
    # w = 10 // 3 = 3: bins [0,3) [3,6) [6,9); t = 9 and 10 are the dropped tail (as tonic)
    assert fr.sum() == 3 and fr[0, 0, 0, 0] == 1 and fr[1, 1, 2, 1] == 2
    assert to_frames(ev, 3, sensor_size=(5, 5, 2))[1, 1, 2, 1] == 1
    # time_window: bins of 4 µs from t0, after 2 bins (8 µs) dropped
    fr = to_frames(ev, 2, sensor_size=(5, 5, 2), time_window=4, binary=False)
    assert fr[0].sum() == 1 and fr[1, 1, 2, 1] == 2 and fr.sum() == 3
    # a short recording in a long window leaves later bins empty
    assert to_frames(ev, 8, sensor_size=(5, 5, 2), time_window=100).sum(axis=(1, 2, 3)).tolist() == [
        4, 0, 0, 0, 0, 0, 0, 0]


def test_to_frames_shorter_than_steps():
    # span 3 µs < 10 steps: width 1 µs, every event in bin t - t0 (tonic would give all zeros)
    ev = make_events([(1, 1, 1000, 0), (2, 2, 1001, 1), (3, 3, 1003, 0)])
    fr = to_frames(ev, 10)
    assert [int(fr[i].sum()) for i in range(10)] == [1, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    one = to_frames(make_events([(5, 6, 777, 1)]), 4)
    assert one[0, 1, 6, 5] == 1 and one.sum() == 1
    assert not to_frames(np.zeros(0, EVENT_DTYPE), 5).any()
    assert to_frames(np.zeros(0, EVENT_DTYPE), 5).shape == (5, 2, 34, 34)


def test_to_frames_saturates():
    ev = make_events([(7, 8, t, 1) for t in range(300)] + [(0, 0, 3000, 0)])
    assert to_frames(ev, 1, binary=False)[0, 1, 8, 7] == 255
    assert to_frames(ev, 1)[0, 1, 8, 7] == 1


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"steps": 2.5}, "steps must be an integer >= 1"),
        ({"steps": True}, "steps must be an integer >= 1"),
        ({"steps": 2, "time_window": 0}, "time_window must be an integer >= 1"),
        ({"steps": 2, "sensor_size": (34, 34)}, "sensor_size must be three integers"),
        ({"steps": 2, "sensor_size": (4, 34, 2)}, "x = 5, outside the sensor"),
        ({"steps": 2, "sensor_size": (34, 34, 1)}, "p = 1, outside the sensor"),
    ],
)
def test_to_frames_bad_arguments(kwargs, words):
    ev = make_events([(5, 1, 0, 1), (1, 1, 10, 0)])
    with pytest.raises(StbpError, match=words):
        to_frames(ev, **kwargs)


def test_to_frames_bad_events():
    with pytest.raises(StbpError, match="structured array"):
        to_frames(np.zeros((3, 4)), 2)
    with pytest.raises(StbpError, match="lack the field"):
        to_frames(np.zeros(3, dtype=[("x", int), ("y", int), ("t", int)]), 2)
    with pytest.raises(StbpError, match="backwards at event 1"):
        to_frames(make_events([(0, 0, 10, 0), (0, 0, 5, 0)]), 2)
    with pytest.raises(StbpError, match="y = 40"):
        to_frames(make_events([(0, 40, 10, 0)]), 2)


def test_first_saccade():
    ev = make_events([(0, 0, 0, 0), (1, 1, 99_999, 1), (2, 2, 100_000, 0)])
    assert first_saccade(ev)["x"].tolist() == [0, 1]


# --------------------------------------------------------------------------- fuzzing


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_parse_random_bytes(data):
    try:
        ev = parse_nmnist(data, "fuzz")
    except StbpError as err:
        assert str(err).startswith("fuzz: ")
        return
    assert ev.dtype == EVENT_DTYPE and len(ev) >= 1


record = st.tuples(
    st.integers(0, 40), st.one_of(st.integers(0, 33), st.just(240), st.integers(0, 255)),
    st.integers(0, 255), st.integers(0, 255), st.integers(0, 255),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(record, max_size=30))
def test_fuzz_parse_records(records):
    data = b"".join(bytes(r) for r in records)
    try:
        ev = parse_nmnist(data, "fuzz")
    except StbpError:
        return
    real = [r for r in records if r[1] != 240]
    assert len(ev) == len(real)
    assert (ev["x"] <= 33).all() and (ev["y"] <= 33).all() and (np.diff(ev["t"]) >= 0).all()
    kept = [i for i, r in enumerate(records) if r[1] != 240]
    markers_before = np.cumsum([r[1] == 240 for r in records])[kept]
    low = [((r[2] & 0x7F) << 16) | (r[3] << 8) | r[4] for r in real]
    assert ev["t"].tolist() == [a + 8192 * int(m) for a, m in zip(low, markers_before, strict=True)]
    assert ev["p"].tolist() == [r[2] >= 128 for r in real]


@st.composite
def event_arrays(draw):
    w, h, p = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 2))
    n = draw(st.integers(0, 60))
    t = sorted(draw(st.lists(st.integers(0, 2_000), min_size=n, max_size=n)))
    rows = [(draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1)), tt, draw(st.integers(0, p - 1)))
            for tt in t]
    return make_events(rows), (w, h, p)


@settings(max_examples=300, deadline=None)
@given(event_arrays(), st.integers(1, 12), st.one_of(st.none(), st.integers(1, 300)), st.booleans())
def test_fuzz_to_frames_matches_loop(drawn, steps, time_window, binary):
    ev, size = drawn
    got = to_frames(ev, steps, sensor_size=size, time_window=time_window, binary=binary)
    want = reference_frames(ev, steps, sensor_size=size, time_window=time_window, binary=binary)
    assert got.dtype == np.uint8 and np.array_equal(got, want)


# --------------------------------------------------------------------------- layout (generated)


def test_locate(tmp_path, monkeypatch):
    monkeypatch.delenv("STBP_DATA", raising=False)
    with pytest.raises(StbpError, match="cannot be downloaded here"):
        locate_nmnist()
    with pytest.raises(StbpError, match="no such directory"):
        locate_nmnist(tmp_path / "nope")
    write_split(tmp_path / "nmnist-small", "train", {0: 1})
    write_split(tmp_path / "nmnist-small", "test", {0: 1})
    monkeypatch.setenv("STBP_DATA", str(tmp_path))
    with pytest.raises(StbpError, match="nmnist-small is used only when passed explicitly"):
        locate_nmnist()  # never silently the subset
    assert locate_nmnist(tmp_path / "nmnist-small") == tmp_path / "nmnist-small"
    full = tmp_path / "nmnist"
    full.mkdir()
    write_split(full, "train", {1: 2}, zipped=True, name="train.zip")
    with pytest.raises(StbpError, match="no N-MNIST Test split"):
        locate_nmnist(full)
    write_split(full, "test", {1: 2})  # one split zipped, the other extracted
    assert locate_nmnist() == full
    assert locate_nmnist(tmp_path) == full  # a root holding nmnist/
    with pytest.raises(StbpError, match="not a directory"):
        locate_nmnist(full / "train.zip")


@pytest.mark.parametrize("top", [None, "N-MNIST"])
def test_generated_zip_equals_folder(tmp_path, top):
    folder_root, zip_root = tmp_path / "f", tmp_path / "z"
    zip_root.mkdir()
    write_split(folder_root, "test", {3: 2, 0: 3, 9: 1})
    write_split(zip_root, "test", {3: 2, 0: 3, 9: 1}, zipped=True, top=top, name="test.zip")
    recs = list_recordings(folder_root, "test")
    assert [label for _, label in recs] == [0, 0, 0, 3, 3, 9]
    assert recs[0] == ("Test/0/00001.bin", 0)
    zrecs = list_recordings(zip_root, "test")
    assert [(n.removeprefix(f"{top}/") if top else n, lab) for n, lab in zrecs] == recs
    a, b = NMNIST(folder_root, "test"), NMNIST(zip_root, "test", verify=False)
    for i in range(len(a)):
        assert np.array_equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]


def test_junk_is_ignored(tmp_path):
    write_split(tmp_path, "train", {2: 2})
    (tmp_path / "Train" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "Train" / "__MACOSX").mkdir()
    (tmp_path / "Train" / "2" / "._00001.bin").write_bytes(b"junk")
    (tmp_path / "Train" / "2" / "notes.txt").write_text("x")
    assert [n for n, _ in list_recordings(tmp_path, "train")] == ["Train/2/00001.bin", "Train/2/00002.bin"]
    z = tmp_path / "zz"
    z.mkdir()
    with zipfile.ZipFile(z / "Train.zip", "w") as zf:
        zf.writestr("Train/4/00001.bin", encode([(1, 1, 1, 1)]))
        zf.writestr("__MACOSX/Train/4/._00001.bin", b"junk")
        zf.writestr("Train/4/.hidden.bin", b"junk")
        zf.writestr("Train/", b"")
    assert list_recordings(z, "train") == [("Train/4/00001.bin", 4)]


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ({"readme.txt": b"x"}, "no N-MNIST recordings in the archive"),
        ({"Train/00001.bin": b"x"}, "'Train/00001.bin' is not where a recording belongs"),
        ({"a/b/Train/0/00001.bin": b"x"}, "is not where a recording belongs"),
        ({"Test/0/00001.bin": b"x"}, "expected members Train/<digit 0-9>/<name>.bin"),
        ({"Train/seven/00001.bin": b"x"}, "class folder 'seven' is not a digit"),
        ({"A/Train/0/1.bin": b"x", "B/Train/0/2.bin": b"x"}, "several folders"),
    ],
)
def test_zip_without_layout(tmp_path, members, words):
    with zipfile.ZipFile(tmp_path / "train.zip", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(StbpError, match="train.zip") as err:
        list_recordings(tmp_path, "train")
    assert words in str(err.value)


def test_folder_without_layout(tmp_path):
    write_split(tmp_path, "train", {1: 1})
    (tmp_path / "Train" / "seven").mkdir()
    with pytest.raises(StbpError, match="class folder 'seven' is not a digit"):
        list_recordings(tmp_path, "train")
    shutil.rmtree(tmp_path / "Train")
    (tmp_path / "Train").mkdir()
    with pytest.raises(StbpError, match="Train: no N-MNIST recordings"):
        list_recordings(tmp_path, "train")
    (tmp_path / "Train" / "00001.bin").write_bytes(encode([(1, 1, 1, 1)]))
    with pytest.raises(StbpError, match="outside a class folder"):
        list_recordings(tmp_path, "train")
    with pytest.raises(StbpError, match="no N-MNIST Test split"):
        list_recordings(tmp_path, "test")
    with pytest.raises(StbpError, match="unknown N-MNIST split 'val'"):
        list_recordings(tmp_path, "val")
    (tmp_path / "Test.zip").write_bytes(b"not a zip")
    with pytest.raises(StbpError, match="Test.zip: not a readable zip archive"):
        list_recordings(tmp_path, "test")
    # a zip whose central directory asks for an extract version Python's zipfile does not know
    # (it raises NotImplementedError): the same one clear error
    (tmp_path / "v").mkdir()
    zipped = write_split(tmp_path / "v", "test", {1: 1}, zipped=True, name="Test.zip")
    data = bytearray(zipped.read_bytes())
    at = data.index(b"PK\x01\x02")
    data[at + 6:at + 8] = (64).to_bytes(2, "little")
    (tmp_path / "Test.zip").write_bytes(bytes(data))
    with pytest.raises(StbpError, match="Test.zip: not a readable zip archive"):
        list_recordings(tmp_path, "test")


def test_md5_checked_when_cache_is_built(tmp_path, monkeypatch):
    path = write_split(tmp_path, "train", {0: 2, 1: 1}, zipped=True, name="train.zip")
    with pytest.raises(StbpError) as err:
        load_frames(tmp_path, "train", steps=2)
    msg = str(err.value)
    actual = hashlib.md5(path.read_bytes()).hexdigest()
    for word in ("train.zip", "checksum mismatch", actual, nm.ARCHIVE_MD5["train"], "verify=False",
                 "[data] verify = false"):
        assert word in msg
    with pytest.raises(StbpError, match="checksum mismatch"):
        NMNIST(tmp_path, "train")
    frames, labels = load_frames(tmp_path, "train", steps=2, verify=False)
    assert labels.tolist() == [0, 0, 1]
    monkeypatch.setitem(nm.ARCHIVE_MD5, "train", actual)
    frames2, _ = load_frames(tmp_path, "train", steps=2, binary=False)  # verified, then built
    assert torch.equal(frames2.clamp(max=1), frames)
    assert len(NMNIST(tmp_path, "train")) == 3


def test_bad_recording_in_cache_build(tmp_path):
    write_split(tmp_path, "test", {5: 2})
    (tmp_path / "Test" / "5" / "00002.bin").write_bytes(bytes(11))
    with pytest.raises(StbpError, match=r"00002\.bin: 11 bytes is not a multiple of 5"):
        load_frames(tmp_path, "test", steps=3)
    assert not list((nm.cache_root() / "nmnist").glob("*"))  # nothing half-written


def test_cache_progress_and_arguments(tmp_path):
    write_split(tmp_path, "test", {5: 2, 6: 1})
    frames, labels = load_frames(tmp_path, "test", steps=3, progress=True)
    assert frames.shape == (3, 3, 2, 34, 34) and labels.tolist() == [5, 5, 6]
    with pytest.raises(StbpError, match="steps must be"):
        load_frames(tmp_path, "test", steps=0)
    with pytest.raises(StbpError, match="time_window must be"):
        load_frames(tmp_path, "test", steps=3, time_window=-1)
    packed, _ = load_frames(tmp_path, "test", steps=3, packed=True)  # as kept in the cache
    assert packed.shape == (3, 3 * 2312 // 8) and packed.dtype == torch.uint8
    bits = np.unpackbits(packed.numpy(), axis=1).reshape(frames.shape)
    assert np.array_equal(bits, frames.numpy())
    with pytest.raises(StbpError, match="packed=True needs binary frames"):
        load_frames(tmp_path, "test", steps=3, binary=False, packed=True)


def test_dataset_pickles_for_workers(tmp_path):
    write_split(tmp_path, "test", {1: 2}, zipped=True)
    ds = NMNIST(tmp_path, "test", verify=False)
    first = ds[0][0]
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone[0][0], first)


# --------------------------------------------------------------------------- real subset


def test_real_listing_counts_and_checksum(small):
    train, test = list_recordings(small, "train"), list_recordings(small, "test")
    assert np.bincount([lab for _, lab in train], minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount([lab for _, lab in test], minlength=10).tolist() == TEST_COUNTS
    assert train[0] == ("Train/0/00002.bin", 0)
    assert [(lab, Path(n).name) for n, lab in train] == sorted((lab, Path(n).name) for n, lab in train)
    digest = hashlib.sha256()
    for name in sorted(n for n, _ in train + test):
        digest.update((small / name).read_bytes())
    assert digest.hexdigest() == SUBSET_SHA256


def test_real_recordings_parse(small):
    sizes = []
    for split in ("train", "test"):
        for name, _ in list_recordings(small, split):
            ev = read_nmnist(small / name)
            sizes.append(len(ev))
            assert ev["x"].max() <= 33 and ev["y"].max() <= 33 and ev["x"].min() >= 0
            assert (np.diff(ev["t"]) >= 0).all()
            assert 280_000 <= ev["t"][-1] - ev["t"][0] <= 320_000
            assert 0 < ev["p"].sum() < len(ev)
    assert len(sizes) == 1100 and min(sizes) == 1069 and max(sizes) == 7152


@pytest.mark.parametrize("top", [None, "NMNIST"])
def test_real_zip_reads_like_folder(small, tmp_path, top):
    zip_folder(small / "Train", tmp_path / "Train.zip", top)
    folder, zipped = list_recordings(small, "train"), list_recordings(tmp_path, "train")
    assert [(n.removeprefix(f"{top}/") if top else n, lab) for n, lab in zipped] == folder
    a, b = NMNIST(small, "train"), NMNIST(tmp_path, "train", verify=False)
    for i in range(0, len(a), 7):
        assert np.array_equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
    fa, la = load_frames(small, "train", steps=5)
    fb, lb = load_frames(tmp_path, "train", steps=5, verify=False)
    assert torch.equal(fa, fb) and torch.equal(la, lb)


def test_real_frame_cache(small, monkeypatch):
    frames, labels = load_frames(small, "test", steps=30)
    assert frames.shape == (100, 30, 2, 34, 34) and frames.dtype == torch.uint8
    assert labels.dtype == torch.int64
    assert labels.tolist() == [lab for _, lab in list_recordings(small, "test")]
    assert int(frames.max()) == 1 and frames.sum() > 0
    files = list((nm.cache_root() / "nmnist").glob("*"))
    assert len(files) == 1 and files[0].suffix == ".npz"
    assert files[0].stat().st_size < 100 * 30 * 2312 // 8 + 20_000  # bit-packed

    def boom(*args, **kwargs):
        raise AssertionError("a cache hit must not read recordings")

    with monkeypatch.context() as m:
        m.setattr(nm, "read_nmnist", boom)
        m.setattr(nm, "parse_nmnist", boom)
        again, labels2 = load_frames(small, "test", steps=30)
    assert torch.equal(again, frames) and torch.equal(labels2, labels)

    # other parameters: another cache file
    counts, _ = load_frames(small, "test", steps=30, binary=False)
    assert torch.equal(counts.clamp(max=1), frames) and int(counts.max()) > 1
    assert len(list((nm.cache_root() / "nmnist").glob("*"))) == 2

    # corrupt caches (a flipped byte in the header or the frames, a truncated file, garbage)
    # are rebuilt from the recordings, never used
    raw = files[0].read_bytes()
    mid = len(raw) // 3
    for bad in (raw[:100] + bytes([raw[100] ^ 0xFF]) + raw[101:],
                raw[:mid] + bytes([raw[mid] ^ 0x01]) + raw[mid + 1:],
                raw[: len(raw) // 2],
                raw[:-3000] + bytes(3000),
                b"garbage"):
        files[0].write_bytes(bad)
        calls: list = []
        real_read = nm.read_nmnist
        with monkeypatch.context() as m:
            m.setattr(nm, "read_nmnist", lambda p, _r=real_read, _c=calls: _c.append(p) or _r(p))
            rebuilt, _ = load_frames(small, "test", steps=30)
        assert torch.equal(rebuilt, frames) and len(calls) == 100
        with monkeypatch.context() as m:  # rewritten intact: a hit again
            m.setattr(nm, "read_nmnist", boom)
            assert torch.equal(load_frames(small, "test", steps=30)[0], frames)
    assert not list((nm.cache_root() / "nmnist").glob("*.part"))


def test_real_frames_match_reference_loop(small):
    names = [n for n, _ in list_recordings(small, "test")]
    ev = read_nmnist(small / names[0])
    for kwargs in ({}, {"time_window": 10_000}, {"time_window": 3_000}):
        for steps in (1, 7, 30):
            binary = to_frames(ev, steps, **kwargs)
            counts = to_frames(ev, steps, binary=False, **kwargs)
            assert int(binary.sum()) == distinct_cells(ev, steps, **kwargs)
            assert np.array_equal(binary, reference_frames(ev, steps, **kwargs))
            assert np.array_equal(counts, reference_frames(ev, steps, binary=False, **kwargs))
    sac = first_saccade(ev)
    assert 0 < len(sac) < len(ev) and sac["t"].max() < 100_000
    assert np.array_equal(to_frames(sac, 10, binary=False), reference_frames(sac, 10, binary=False))

    # and through load_frames, with every option
    frames, _ = load_frames(small, "test", steps=10, binary=False, time_window=10_000, first_saccade=True)
    for i in (0, 50, 99):
        sac = first_saccade(read_nmnist(small / names[i]))
        want = reference_frames(sac, 10, time_window=10_000, binary=False)
        assert np.array_equal(frames[i].numpy(), want)


def test_real_dataset(small):
    ds = NMNIST(small, "test", first_saccade=True, transform=lambda ev: ev[:5], target_transform=str)
    assert len(ds) == 100 and ds.sensor_size == SENSOR_SIZE
    ev, label = ds[3]
    assert ev.dtype == EVENT_DTYPE and len(ev) == 5 and label == str(ds.targets[3])


# --------------------------------------------------------------------------- tonic, if installed


def test_matches_tonic(small):
    tonic = pytest.importorskip(
        "tonic", reason="tonic is not installed (the optional reference: pip install tonic)"
    )
    from tonic.io import events_struct, read_mnist_file

    assert events_struct == EVENT_DTYPE
    names = [n for split in ("train", "test") for n, _ in list_recordings(small, split)]
    for name in names[::10]:
        ours = read_nmnist(small / name)
        theirs = read_mnist_file(str(small / name), dtype=events_struct)
        assert np.array_equal(ours, theirs)
        for steps in (1, 10, 30):
            ref = tonic.transforms.ToFrame(sensor_size=SENSOR_SIZE, n_time_bins=steps)(theirs)
            assert np.array_equal(to_frames(ours, steps, binary=False), ref)
        # tonic's time_window gives a varying number of frames; the complete ones agree
        ref = tonic.transforms.ToFrame(sensor_size=SENSOR_SIZE, time_window=10_000)(theirs)
        k = min(len(ref), 30)
        assert np.array_equal(to_frames(ours, 30, binary=False, time_window=10_000)[:k], ref[:k])

    data = encode([(1, 1, 100, 0), (0, 240, 0, 0), (2, 2, 10, 1), (9, 240, 5, 1), (3, 3, 1, 0)])
    theirs = read_mnist_file(io.BytesIO(data), events_struct, is_stream=True)
    assert np.array_equal(parse_nmnist(data), theirs)  # the overflow marker, as tonic
    to_frame = tonic.transforms.ToFrame(sensor_size=NMNIST.sensor_size, n_time_bins=30)
    ds = NMNIST(small, "test", transform=to_frame)
    frames, _ = load_frames(small, "test", steps=30, binary=False)
    assert np.array_equal(ds[42][0], frames[42].numpy())
