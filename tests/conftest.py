"""Shared fixtures: one real mosquitto per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.broker import Mosquitto


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """A mosquitto for the whole session; tests that stop it must start it again."""
    broker = Mosquitto()
    broker.start()
    yield broker
    broker.close()


@pytest.fixture
def broker(mosquitto: Mosquitto) -> Mosquitto:
    """The session broker, guaranteed running when the test starts."""
    mosquitto.start()
    return mosquitto
