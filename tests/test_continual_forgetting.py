"""The forgetting report: AA/BWT/plasticity by hand, JSON round trip, table, PNG heat-map, evaluate()."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from backpropagate.continual.forgetting import (
    HEATMAP_SIZE_PX,
    ForgettingReport,
    average_score,
    backward_transfer,
    evaluate,
    plasticity,
)
from backpropagate.data.templates import IGNORE_INDEX, TokenizedSample
from backpropagate.errors import BackpropagateError

# a[i][j]: accuracy on task j after run i.
ACC = [[0.9],
       [0.6, 0.8],
       [0.5, 0.7, 1.0]]
LOSS = [[0.2],
        [1.0, 0.4],
        [1.4, 0.6, 0.1]]


def test_metrics_by_hand() -> None:
    assert average_score(ACC) == pytest.approx((0.5 + 0.7 + 1.0) / 3)
    # BWT = ((0.5 - 0.9) + (0.7 - 0.8)) / 2 = -0.25
    assert backward_transfer(ACC) == pytest.approx(-0.25)
    assert plasticity(ACC) == pytest.approx((0.9 + 0.8 + 1.0) / 3)
    # loss: lower is better, so forgetting shows as a positive BWT: ((1.4 - 0.2) + (0.6 - 0.4)) / 2 = 0.7
    assert backward_transfer(LOSS) == pytest.approx(0.7)
    # Two runs: BWT is the single difference; one run: nothing to forget.
    assert backward_transfer(ACC[:2]) == pytest.approx(-0.3)
    assert backward_transfer(ACC[:1]) == 0.0 and average_score(ACC[:1]) == plasticity(ACC[:1]) == 0.9
    # Positive transfer is possible: a later run raised an earlier task.
    assert backward_transfer([[0.4], [0.6, 0.9]]) == pytest.approx(0.2)

    report = ForgettingReport(ACC, LOSS, merge_mode="slao")
    assert (report.aa, report.bwt, report.plasticity) == pytest.approx((average_score(ACC), -0.25, plasticity(ACC)))
    assert report.summary()["loss"]["bwt"] == pytest.approx(0.7)


def test_add_run_grows_the_matrix_and_rejects_bad_rows() -> None:
    report = ForgettingReport()
    assert report.summary() is None and "no runs yet" in report.to_text()
    for acc, loss in zip(ACC, LOSS, strict=True):
        report.add_run(acc, loss)
    assert report.accuracy == ACC and report.bwt == pytest.approx(-0.25)
    with pytest.raises(BackpropagateError) as err:
        report.add_run([0.5, 0.5], [1.0, 1.0])  # run 4 must score 4 tasks
    assert err.value.code == "INPUT_INVALID_VALUE" and "lower-triangular" in err.value.message
    assert len(report.accuracy) == 3  # the failed row left the report as it was
    for bad_acc, bad_loss in ([[[0.5, 0.5]], [[1.0, 1.0]]],  # not lower-triangular
                              [[[float("nan")]], [[1.0]]],   # NaN
                              [[[1.5]], [[1.0]]],            # accuracy outside [0, 1]
                              [[[0.5]], []],                 # loss has fewer runs
                              [[["x"]], [[1.0]]]):           # not numbers
        with pytest.raises(BackpropagateError) as err:
            ForgettingReport(bad_acc, bad_loss)
        assert err.value.code == "INPUT_INVALID_VALUE"


def test_json_round_trip_and_coded_errors() -> None:
    report = ForgettingReport(ACC, LOSS, tasks=["week 1", "week 2", "week 3"], merge_mode="slao",
                              notes=["experimental: DoRA"])
    data = json.loads(report.to_json())
    assert data["summary"]["accuracy"]["bwt"] == pytest.approx(-0.25)
    assert data["accuracy"] == ACC and data["tasks"][0] == "week 1"
    assert ForgettingReport.from_json(report.to_json()) == report
    data["summary"]["accuracy"]["aa"] = 123.0  # a tampered summary is recomputed, not trusted
    assert ForgettingReport.from_json(json.dumps(data)).aa == report.aa
    for text, code in (("{not json", "INPUT_INVALID_JSON"), ('{"accuracy": [[0.5]]}', "INPUT_INVALID_VALUE"),
                       ('{"version": 99, "accuracy": [], "loss": []}', "INPUT_INVALID_VALUE")):
        with pytest.raises(BackpropagateError) as err:
            ForgettingReport.from_json(text)
        assert err.value.code == code


def test_text_table_shows_cells_and_metrics() -> None:
    text = ForgettingReport(ACC, LOSS, tasks=["a", "b", "c"], merge_mode="slao", notes=["flagged"]).to_text()
    assert "merge_mode=slao" in text
    assert "50.0% (1.400)" in text and "100.0% (0.100)" in text
    assert "AA 73.3%" in text and "BWT -25.0 pts" in text and "plasticity 90.0%" in text
    assert "BWT +0.700" in text and "note: flagged" in text
    assert "\x1b[" not in text  # plain text, no colour codes


def test_save_writes_json_and_heatmap(tmp_path: Path) -> None:
    from PIL import Image

    report = ForgettingReport(ACC, LOSS, merge_mode="slao")
    json_path, png_path = report.save(tmp_path / "run")
    assert ForgettingReport.from_json(json_path.read_text()) == report
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["forgetting.json", "forgetting.png"]

    image = Image.open(png_path).convert("RGB")
    assert image.size == HEATMAP_SIZE_PX
    fig = report.heatmap_figure()  # same layout as the saved file: locate cells through the axes
    for ax in fig.axes[::2]:  # the two heat-map panels (every other axes is a colour bar)
        for i in range(3):
            for j in range(3):
                if j <= i:
                    assert _cell_pixel(image, ax, i, j) != WHITE, (i, j)  # a scored cell is coloured
                else:
                    assert _cell_pixel(image, ax, i, j) == WHITE, (i, j)  # the upper triangle stays blank
    # Different scores, different colours: run 3 on task 1 (50%) against task 3 (100%).
    assert _cell_pixel(image, fig.axes[0], 2, 0) != _cell_pixel(image, fig.axes[0], 2, 2)


WHITE = (255, 255, 255)


def _cell_pixel(image, ax, i: int, j: int) -> tuple[int, int, int]:
    """The saved image's colour near the corner of cell (i, j), away from the number in its centre."""
    x, y = ax.transData.transform((j - 0.35, i - 0.35))
    return image.getpixel((int(x), int(HEATMAP_SIZE_PX[1] - y)))


def test_save_without_matplotlib_is_a_coded_error_and_writes_nothing(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # matplotlib is installed here; a None entry in sys.modules is how Python spells "not importable".
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BackpropagateError) as err:
        ForgettingReport(ACC, LOSS).save(tmp_path / "run")
    assert err.value.code == "DEP_EXTRA_MISSING" and "matplotlib" in err.value.message
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def model(tiny_llama: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()


def _reference(model, samples: list[TokenizedSample]) -> tuple[list[list[int]], float]:
    """Each sample alone, no packing: the argmax predictions and the summed loss on labelled tokens."""
    preds, loss_sum, count = [], 0.0, 0
    for s in samples:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([s.input_ids]), use_cache=False).logits[0]
        targets = torch.tensor(s.labels[1:] + [IGNORE_INDEX])
        loss_sum += float(torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX,
                                                            reduction="sum"))
        count += int((targets != IGNORE_INDEX).sum())
        preds.append(logits.argmax(-1).tolist())
    return preds, loss_sum / max(count, 1)


def test_evaluate_scores_assistant_tokens_like_each_sample_alone(model) -> None:
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 900, (int(torch.randint(6, 30, (1,), generator=g)),), generator=g).tolist()
               for _ in range(7)]
    unlabelled = [TokenizedSample(ids, [IGNORE_INDEX] * len(ids)) for ids in prompts]
    preds, _ = _reference(model, unlabelled)
    # Label the second half of each sample with the model's own next-token prediction: accuracy 1 ...
    right, wrong, half = [], [], []
    for ids, p in zip(prompts, preds, strict=True):
        cut = len(ids) // 2
        labels = [IGNORE_INDEX] * cut + [p[t - 1] for t in range(cut, len(ids))]
        right.append(TokenizedSample(ids, labels))
        wrong.append(TokenizedSample(ids, [lab if lab == IGNORE_INDEX else (lab + 1) % 1024 for lab in labels]))
        half.append(right[-1] if len(half) % 2 == 0 else wrong[-1])
    model.train()
    loss, acc = evaluate(model, right, pad_token_id=0, max_seq_length=64, batch_size=2)
    assert model.training  # the caller's mode is restored
    model.eval()
    assert acc == 1.0
    assert evaluate(model, wrong, pad_token_id=0)[1] == 0.0
    n_right = sum(s.num_label_tokens for s in half[0::2])
    assert evaluate(model, half, pad_token_id=0)[1] == pytest.approx(n_right / sum(s.num_label_tokens for s in half))
    # ... and the loss is the token-weighted mean cross-entropy, exactly as computed sample by sample,
    # whatever the packing width (samples share rows at 64 tokens, not at 8).
    _, ref_loss = _reference(model, right)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert evaluate(model, right, pad_token_id=0, max_seq_length=8)[0] == pytest.approx(ref_loss, rel=1e-5)


def test_evaluate_without_assistant_tokens_is_a_coded_error(model) -> None:
    with pytest.raises(BackpropagateError) as err:
        evaluate(model, [TokenizedSample([5, 6, 7], [IGNORE_INDEX] * 3)], pad_token_id=0)
    assert err.value.code == "INPUT_DATASET_EMPTY"
