"""Under CI a missing server fails the test instead of skipping it: any non-empty ``CI`` value
but ``0`` and ``false`` turns CI on (GitHub sets ``true``, others ``1`` or ``yes``)."""

from __future__ import annotations

import pytest

from tests.conftest import _unreachable, ci


@pytest.mark.parametrize("value, on", [("", False), ("0", False), ("false", False), ("FALSE", False),
                                       (" false ", False), ("true", True), ("True", True), ("1", True),
                                       ("yes", True), ("on", True)])
def test_ci_is_on_for_any_value_but_empty_0_and_false(monkeypatch: pytest.MonkeyPatch, value: str, on: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert ci() is on
    outcome = pytest.fail.Exception if on else pytest.skip.Exception
    with pytest.raises(outcome) as info:
        _unreachable("127.0.0.1:1: Connection refused")
    assert "127.0.0.1:1: Connection refused" in str(info.value)  # the reason, either way


def test_ci_unset_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert ci() is False
