"""The sliding-window detector (stbp.detect, `stbp detect`) on real-digit scenes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from stbp.boxes import average_precision, box_vote, nms, suppress
from stbp.cli import main
from stbp.config import load_config
from stbp.data.scenes import box_iou, write_benchmark
from stbp.detect import Detector, evaluate_scenes, window_grid
from stbp.errors import StbpError
from stbp.train import train

ANN = ["model.spiking=false", "encoding.kind='direct'", "encoding.steps=1"]


@pytest.fixture(scope="module")
def bench(mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("detect") / "bench"
    write_benchmark(out, mnist, seed=1, counts={"train": 80, "val": 12, "test": 6})
    return out


def _run(bench, out, overrides, epochs=3, **kwargs):
    cfg = load_config("detect-cnn", dataset=f"folder:{bench / 'windows'}",
                      overrides=[f"train.epochs={epochs}", "model.channels=[6, 12]", "model.hidden=[64]",
                                 *overrides])
    train(cfg, out, progress=False, **kwargs)
    return out


@pytest.fixture(scope="module")
def ann_run(bench):
    return _run(bench, bench.parent / "ann", ANN)


@pytest.fixture(scope="module")
def snn_run(bench):
    """A spiking run, barely trained: for output formats, not for accuracy."""
    return _run(bench, bench.parent / "snn", ["encoding.steps=2"], epochs=1, limit_train=100, limit_eval=50)


def test_window_grid_covers_the_image():
    boxes = window_grid(40, 50, [16, 32, 64], 0.25)
    sides = boxes[:, 2] - boxes[:, 0]
    assert set(sides.tolist()) == {16, 32}, "a window larger than the image is skipped"
    small = boxes[sides == 16]
    assert sorted(set(small[:, 0].tolist())) == [0, 4, 8, 12, 16, 20, 24, 28, 32, 34]
    assert small[:, 3].max() == 40 and small[:, 2].max() == 50, "flush with the border"
    assert len(small) == 10 * len(set(small[:, 1].tolist()))
    for scales, stride, message in (([], 0.25, "scales"), ([0], 0.25, "scales"), ([8], 0.0, "stride"),
                                    ([8], 1.5, "stride")):
        with pytest.raises(StbpError, match=message):
            window_grid(10, 10, scales, stride)


def test_nms_keeps_the_best_of_each_overlapping_group():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]])
    scores = np.array([0.8, 0.9, 0.5, 0.9])
    assert nms(boxes, scores, 0.3).tolist() == [1, 2]
    # ties: the lower index first; box 0 is an exact copy of box 3 and goes with it
    assert nms(boxes, scores, 0.99).tolist() == [1, 3, 2]
    assert nms(boxes, np.array([0.9, 0.1, 0.5, 0.9]), 0.99).tolist() == [0, 2, 1]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    with pytest.raises(StbpError, match="3 boxes but 2 scores"):
        nms(boxes[:3], scores[:2], 0.5)


def test_nms_equals_the_textbook_loop_on_many_boxes():
    """Greedy NMS as written in textbooks (the whole IoU matrix up front) keeps the same boxes."""
    rng = np.random.default_rng(0)
    xy = rng.integers(0, 80, (600, 2))
    boxes = np.concatenate([xy, xy + rng.integers(8, 40, (600, 1))], axis=1)
    scores = np.round(rng.random(600), 1)  # many ties
    for iou in (0.1, 0.3, 0.5):
        order = np.lexsort((np.arange(600), -scores))
        overlaps, gone, want = box_iou(boxes, boxes), np.zeros(600, bool), []
        for i in order:
            if not gone[i]:
                want.append(i)
                gone |= overlaps[i] > iou
        assert nms(boxes, scores, iou).tolist() == want


def test_average_precision_by_hand():
    truths = [np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [20, 20, 30, 30]])]
    perfect = [(0, 0.9, [0, 0, 10, 10]), (1, 0.8, [20, 20, 30, 30]), (1, 0.7, [1, 1, 10, 10])]
    assert average_precision(perfect, truths) == pytest.approx(1.0)
    # a false positive ranked first, then the three hits: precision 1/2, 2/3, 3/4 at recall 1/3..1,
    # made monotone from the right (VOC all-point interpolation) -> 3/4 everywhere
    fp_first = [(0, 0.95, [50, 50, 60, 60])] + perfect
    assert average_precision(fp_first, truths) == pytest.approx(3 / 4)
    # a hit, a false positive, then two hits: 1 at recall 1/3, then 3/4 at 2/3 and 1
    fp_second = [perfect[0], (0, 0.85, [50, 50, 60, 60]), *perfect[1:]]
    assert average_precision(fp_second, truths) == pytest.approx((1 + 3 / 4 + 3 / 4) / 3)
    # a duplicate of a matched box is a false positive; a box with IoU < 0.5 misses
    dup = [(0, 0.9, [0, 0, 10, 10]), (0, 0.8, [0, 0, 10, 10]), (1, 0.7, [0, 0, 4, 4])]
    assert average_precision(dup, truths) == pytest.approx(1 / 3)
    assert average_precision([], truths) == 0.0
    assert math.isnan(average_precision(perfect, [np.zeros((0, 4)), np.zeros((0, 4))]))


def test_trained_ann_detects_real_digits(ann_run, bench):
    """The ANN baseline trained on 80 scenes' windows finds the digits of unseen scenes; the same
    network untrained (its initial weights) does not."""
    from stbp.runs import load_run
    from stbp.train import build_model

    detector = Detector.from_run(ann_run)
    result = evaluate_scenes(detector, bench / "scenes" / "val")
    assert result["objects"] >= 25 and result["scenes"] == 12
    assert result["ap"] > 0.4 and 0 < result["ap_other"] <= 1
    _, cfg, _, _ = load_run(ann_run)
    untrained = Detector(build_model(cfg), cfg)
    before = evaluate_scenes(untrained, bench / "scenes" / "val")["ap"]
    assert result["ap"] > before + 0.2, (result["ap"], before)


def test_cli_detect_writes_json_and_png(snn_run, bench, tmp_path, capsys):
    scenes = sorted((bench / "scenes" / "test").glob("*.png"))[:2]
    out = tmp_path / "dets"
    assert main(["detect", *map(str, scenes), "--run", str(snn_run), "--out", str(out),
                 "--min-score", "0"]) == 0
    assert "box(es)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["00000.json", "00000.png", "00001.json", "00001.png"]
    record = json.loads((out / "00000.json").read_text())
    assert record["width"] == 96 and record["settings"]["scales"] == [24, 32, 42]
    assert record["settings"]["vote"] is True
    dets = record["detections"]
    assert dets and all(d["class"] == "object" and 0 <= d["score"] <= 1 for d in dets)
    assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
    boxes = np.array([d["box"] for d in dets])
    assert (boxes >= 0).all() and (boxes <= 96).all()
    with Image.open(out / "00000.png") as img:
        assert img.size == (480, 480) and img.mode == "RGB"  # enlarged 5x to be readable
    # --scenes evaluates instead
    assert main(["detect", "--run", str(snn_run), "--scenes", str(bench / "scenes" / "test")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scenes"] == 6 and 0 <= result["ap"] <= 1


def test_cli_detect_shared_windows_find_real_digits(bench, capsys):
    """A network with unpadded convolutions scores every window of a scale in one pass
    (`--windows shared`, what `auto` picks for it); trained on 80 scenes' windows it finds the
    digits of unseen scenes, with either readout."""
    run = _run(bench, bench.parent / "ann-valid", [*ANN, "model.padding='valid'"])
    for readout in ("rate", "current"):
        assert main(["detect", "--run", str(run), "--scenes", str(bench / "scenes" / "val"),
                     "--readout", readout]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["windows"] == "shared" and result["readout"] == readout
        assert result["ap"] > 0.4, result
    det = Detector.from_run(run)  # shared windows step 8 px at 28: the nearest to 1/4 side
    assert det.shared.stride == 8
    image = np.zeros((1, 96, 96), np.uint8)
    per_scene = sum(np.prod(det.shared.windows(*lv.shape[-2:])) for _, lv in det.pyramid(image))
    assert result["windows_scored"] == 12 * per_scene


def test_cli_detect_shared_needs_an_unpadded_network(bench, capsys):
    padded = _run(bench, bench.parent / "snn-same", ["encoding.steps=2", "model.padding='same'"],
                  epochs=1, limit_train=50, limit_eval=20)
    assert main(["detect", "--run", str(padded), "--windows", "shared",
                 "--scenes", str(bench / "scenes" / "test")]) == 2
    assert "unpadded convolutions" in capsys.readouterr().err


def test_cli_detect_bad_input_writes_nothing(snn_run, bench, mnist_dir, tmp_path, capsys):
    good = next((bench / "scenes" / "test").glob("*.png"))
    Image.new("L", (20, 30)).save(tmp_path / "small.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / good.name).write_bytes(good.read_bytes())
    out = tmp_path / "dets"
    cases = [
        ([str(good), str(tmp_path / "small.png")], "20x30 is smaller than the smallest window (24x24)"),
        ([str(good), str(tmp_path / "empty.png")], "empty.png: empty file (0 bytes)"),
        ([str(tmp_path / "junk.jpg")], "junk.jpg: unreadable or not a PNG/JPEG image"),
        ([str(good), str(tmp_path / "sub" / good.name)], "would write the same"),
        ([], "give at least one IMAGE"),
        ([str(good), "--scenes", str(bench)], "not both"),
        ([str(good), "--scales", "24,x"], "--scales '24,x'"),
        ([str(good), "--stride", "0"], "stride"),
        ([str(good), "--nms-iou", "2"], "--nms-iou must be in [0, 1]"),
        ([str(good), "--background", "sky"], "none is the background class 'sky'"),
        (["--scenes", str(tmp_path)], "no boxes.json"),
    ]
    for args, message in cases:
        assert main(["detect", "--run", str(snn_run), "--out", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
        assert not out.exists() or not any(out.iterdir()), "nothing written on bad input"
    assert main(["detect", str(good), "--run", str(tmp_path)]) == 2
    assert "best.pt: no such file" in capsys.readouterr().err
    # a run trained on MNIST digits is not an object/background detector
    mnist_run = tmp_path / "mnist-run"
    cfg = load_config("mnist-mlp", overrides=["train.epochs=1", "model.sizes=[784, 10]", "encoding.steps=1"])
    train(cfg, mnist_run, data_dir=mnist_dir, limit_train=10, limit_eval=10, progress=False)
    assert main(["detect", str(good), "--run", str(mnist_run)]) == 2
    assert "a detector needs a run trained on an image folder" in capsys.readouterr().err


def test_box_vote_centres_tied_windows():
    # three windows tied at the top score around a 10x10 object, one weak window elsewhere
    boxes = np.array([[0, 0, 10, 10], [4, 0, 14, 10], [2, 0, 12, 10], [40, 40, 50, 50]])
    scores = np.array([1.0, 1.0, 1.0, 0.6])
    keep = nms(boxes, scores, 0.3)
    assert keep.tolist() == [0, 3]
    voted, vs, support = box_vote(boxes, scores, keep, suppress(boxes, scores, 0.3)[1])
    assert voted.tolist() == [[2, 0, 12, 10], [40, 40, 50, 50]]
    assert vs.tolist() == pytest.approx([1.0, 0.6]) and support.tolist() == pytest.approx([1.0, 0.6])
    # each kept box keeps its own score; the group's mean score is its support
    scores2 = np.array([0.9, 0.2, 0.2, 0.8])
    voted2, vs2, support2 = box_vote(boxes, scores2, *suppress(boxes, scores2, 0.3))
    assert vs2.tolist() == pytest.approx([0.9, 0.8])
    assert support2.tolist() == pytest.approx([(0.9 + 0.2 + 0.2) / 3, 0.8])
    assert voted2[0].tolist() == [1, 0, 11, 10]  # (0.9*0 + 0.2*4 + 0.2*2) / 1.3 = 0.92 -> 1
    empty = box_vote(boxes, scores, np.zeros(0, np.int64), np.zeros(4, np.int64))
    assert empty[0].shape == (0, 4) and empty[1].shape == empty[2].shape == (0,)


def test_select_ranks_tied_scores_by_support():
    """Boxes whose scores tie are ranked by the mean score of their group, best first."""
    det = Detector.__new__(Detector)  # select() needs only the classes and the voting setting
    det.classes, det.vote = ["background", "object"], True
    # two isolated objects tied at 1.0: the one with strong neighbours ranks first
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [51, 50, 61, 60]])
    scores = np.array([1.0, 0.2, 1.0, 0.9])
    found = det.select(boxes, scores, np.ones(4, np.int64), min_score=0.0, nms_iou=0.3)
    assert [d.score for d in found] == [1.0, 1.0]
    assert found[0].box[0] >= 50 and found[1].box[0] <= 1


def test_final_boxes_never_overlap_more_than_nms_iou():
    """Voting moves the kept boxes, so two of them may come to overlap: the detector suppresses
    again, so that no two final boxes overlap by more than nms_iou (with or without voting)."""
    det = Detector.__new__(Detector)
    det.classes, det.vote = ["background", "object"], True
    rng = np.random.default_rng(5)
    for _ in range(20):
        xy = rng.integers(0, 60, (80, 2))
        boxes = np.concatenate([xy, xy + rng.integers(20, 40, (80, 1))], axis=1)
        scores = rng.random(80)
        for vote in (True, False):
            for nms_iou in (0.2, 0.3, 0.5):
                found = det.select(boxes, scores, np.ones(80, np.int64), min_score=0.0,
                                   nms_iou=nms_iou, vote=vote)
                kept = np.asarray([d.box for d in found])
                overlaps = box_iou(kept, kept)
                np.fill_diagonal(overlaps, 0)
                assert overlaps.max() <= nms_iou + 1e-12
                assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)


def test_digit_labelled_windows_name_the_digit(mnist, tmp_path):
    """`--labels digit`: the same windows filed by digit; a detector trained on them names digits."""
    bench = tmp_path / "digits"
    summary = write_benchmark(bench, mnist, seed=1, counts={"train": 80, "val": 25, "test": 25},
                              labels="digit")
    assert summary["labels"] == "digit"
    names = sorted(p.name for p in (bench / "windows" / "train").iterdir())
    assert names == ["background"] + [f"digit-{d}" for d in range(10)]
    truth = json.loads((bench / "scenes" / "train" / "boxes.json").read_text())["scenes"]
    first = sorted(p.name for p in (bench / "windows" / "train" / f"digit-{truth[0]['digits'][0]}").iterdir())
    assert "00000-00.png" in first, "scene 0's first object window is filed under its first digit"
    run = _run(bench, tmp_path / "run", ANN, epochs=4)
    result = evaluate_scenes(Detector.from_run(run), bench / "scenes" / "val")
    assert result["digits_found"] > 50 and result["digit_accuracy"] > 0.2  # chance: 0.1
    with pytest.raises(StbpError, match="window labels must be one of"):
        write_benchmark(tmp_path / "x", mnist, labels="colour")


def test_rgb_detector_writes_outputs(tmp_path):
    """An RGB object/background network (untrained: this checks shapes and files, not accuracy)."""
    from stbp.config import resolve_dataset
    from stbp.detect import write_detections
    from stbp.train import build_model

    for c in ("background", "object"):
        (tmp_path / "set" / c).mkdir(parents=True)
        Image.new("RGB", (20, 20), (200, 10, 10)).save(tmp_path / "set" / c / "a.png")
        Image.new("RGB", (20, 20), (10, 200, 10)).save(tmp_path / "set" / c / "b.jpg")
    cfg = resolve_dataset(load_config("detect-cnn", dataset=f"folder:{tmp_path / 'set'}",
                                      overrides=["data.color='rgb'", "data.size=16", "encoding.steps=2"]))
    detector = Detector(build_model(cfg), cfg, scales=[16, 24], stride=0.5, windows="each")
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[5:30, 10:35] = (250, 250, 0)
    Image.fromarray(rgb).save(tmp_path / "scene.jpg")
    boxes, scores, labels = detector.score_windows(detector.read(tmp_path / "scene.jpg"))
    assert len(boxes) == len(window_grid(40, 50, [16, 24], 0.5)) == len(scores) == len(labels)
    [record] = write_detections(detector, [tmp_path / "scene.jpg"], tmp_path / "out", min_score=0.0)
    assert record["width"] == 50 and record["height"] == 40
    with Image.open(tmp_path / "out" / "scene.png") as img:
        assert img.size == (600, 480)  # 12x: the shorter side at least 480 px
        assert img.mode == "RGB"
