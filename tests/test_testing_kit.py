"""The plugin test kit's own options (``mimkit.testing``): which logged terms must fall, by how
much, averaged over what window. The training itself is exercised by tests/test_presets.py and by
every plugin's tests."""
import json

import pytest

from mimkit.testing import check_falls, check_preset_trains, read_metrics


def rows(**terms):
    n = len(next(iter(terms.values())))
    return [{"step": i + 1, **{k: v[i] for k, v in terms.items()}} for i in range(n)]


def test_check_falls_compares_the_first_and_last_values():
    check_falls(rows(loss=[1.0, 2.0, 0.9]))
    with pytest.raises(AssertionError, match=r"loss did not fall by 0% in 3 steps .*1\.00000 -> 1\.00000"):
        check_falls(rows(loss=[1.0, 0.5, 1.0]))


def test_min_drop_asks_for_a_relative_fall():
    check_falls(rows(loss=[1.0, 0.79]), min_drop=0.2)
    with pytest.raises(AssertionError, match="did not fall by 20%"):
        check_falls(rows(loss=[1.0, 0.81]), min_drop=0.2)


def test_window_averages_noisy_terms_and_keys_name_the_terms():
    r = rows(loss=[1.0, 1.0, 1.0, 1.0], **{"loss/patch": [1.0, 2.0, 0.5, 2.2]})
    check_falls(r, ["loss/patch"], window=2)  # the means fall: 1.5 -> 1.35
    with pytest.raises(AssertionError, match=r"loss/patch did not fall .*1\.00000 -> 2\.20000"):
        check_falls(r, ["loss/patch"])  # the last value alone rose
    with pytest.raises(AssertionError, match="loss did not fall"):
        check_falls(r, window=2)  # the total is the default
    with pytest.raises(AssertionError, match="'loss/cls' is not logged"):
        check_falls(r, ["loss/cls"])
    with pytest.raises(ValueError, match="window 3"):
        check_falls(r, window=3)


def test_a_window_longer_than_half_the_steps_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="window 4: need 1 <= window <= steps // 2 = 3"):
        check_preset_trains("no_such_preset", tmp_path, steps=6, window=4)
    assert not any(tmp_path.iterdir())


def test_read_metrics_keeps_the_training_rows(tmp_path):
    lines = [{"step": 1, "loss": 2.0}, {"step": 1, "knn": 0.5}, {"step": 2, "loss": 1.0, "loss/rec": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert read_metrics(tmp_path) == [lines[0], lines[2]]
