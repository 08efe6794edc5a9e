"""Profiles are strict data files: the shipped ones load, and a profile with an unknown key
or a negative threshold is refused with a message naming the key and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_tests.cli import main
from device_tests.errors import ProfileError
from device_tests.profile import load_profile, profile_names
from device_tests.workload import load_workload

SHIPPED = ("jetson-orin-nano", "mac-m1", "rpi5", "x86-ci")


def test_the_four_device_classes_ship_and_say_where_their_numbers_come_from() -> None:
    assert set(SHIPPED) <= set(profile_names())
    for name in SHIPPED:
        profile = load_profile(name)
        assert profile.name == name
        assert list(profile.thresholds.items()), name
        assert len(profile.source.basis) > 80
    assert load_profile("x86-ci").source.kind == "measured"
    assert {load_profile(n).source.kind for n in ("rpi5", "jetson-orin-nano", "mac-m1")} == {
        "estimate"
    }


def _write(tmp_path: Path, thresholds: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(
        'schema = 1\nname = "t"\ndevice = "d"\n[source]\nkind = "estimate"\nbasis = "b"\n'
        f"[thresholds]\n{thresholds}\n"
    )
    return path


def test_an_unknown_key_is_refused_by_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "ttft_p59_ms = 400")  # a typo would switch the check off
    with pytest.raises(ProfileError, match=r"thresholds\.ttft_p59_ms: unknown key"):
        load_profile(str(path))


def test_a_negative_threshold_is_refused_by_name(tmp_path: Path) -> None:
    path = _write(tmp_path, 'vision_p95_ms = { "text-orientation" = -5 }')
    with pytest.raises(ProfileError, match=r"vision_p95_ms\.text-orientation: .*greater than 0"):
        load_profile(str(path))
    path = _write(tmp_path, "ttft_p95_ms = -1")
    with pytest.raises(ProfileError, match=r"thresholds\.ttft_p95_ms: .*greater than 0.*-1"):
        load_profile(str(path))


@pytest.mark.parametrize(
    ("thresholds", "said"),
    [
        ("embedding_p95_ms = 5\nbogus = 1", "thresholds.bogus: unknown key"),
        ("embedding_p95_ms = -5", "thresholds.embedding_p95_ms: Input should be greater than 0"),
        ("embedding_p95_ms = [", "is not valid TOML"),
    ],
)
def test_the_runner_exits_2_on_a_bad_profile_before_it_measures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], thresholds: str, said: str
) -> None:
    path = _write(tmp_path, thresholds)
    code = main(["run", "--profile", str(path), "--agent", "http://127.0.0.1:9", "--token", "t"])
    err = capsys.readouterr().err
    assert code == 2 and said in err, err


def test_an_unknown_profile_name_lists_the_shipped_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-profile", "rpi-5"]) == 2
    assert "rpi5, x86-ci" in capsys.readouterr().err


def test_the_workload_is_versioned_and_its_images_are_checked(tmp_path: Path) -> None:
    workload = load_workload()
    assert workload.version and workload.chat_prompts and workload.questions
    assert workload.images_for("text-orientation-int8")[0].startswith(b"\x89PNG")
    assert workload.images_for("efficientnet-lite0")[0].startswith(b"\xff\xd8")
