"""World size 1 (a plain run): no process group, every collective is the identity."""

from __future__ import annotations

import pytest
import torch

from pacbound.errors import EXIT_BAD_INPUT, InvalidInputError, NumericalError
from pacbound.parallel import (
    PeerFailedError,
    World,
    agree,
    agree_all,
    all_gather_objects,
    all_reduce_mean_,
    collectively,
    current,
    environment_rank,
    init_from_environment,
    is_peer_failure,
    launched_by_torchrun,
    on_writer,
    shutdown,
    sum_ints,
)
from pacbound.parallel.world import TORCHRUN_VARIABLES, timeout_seconds


@pytest.fixture(autouse=True)
def _plain(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_plain_world() -> None:
    world = init_from_environment(torch.device("cpu"))
    assert world == World() == current()
    assert world.to_dict() == {
        "rank": 0,
        "world_size": 1,
        "local_rank": 0,
        "backend": None,
        "launcher": "none",
    }
    assert not world.distributed and world.is_writer
    assert not launched_by_torchrun() and environment_rank() == 0
    shutdown()  # harmless without a process group
    assert current() == World()


def test_collectives_are_the_identity() -> None:
    assert sum_ints([3, 0, 7]) == (3, 0, 7)
    assert all_gather_objects({"a": 1}) == [{"a": 1}]
    agree("x", "same")
    agree_all({"x": "1", "y": "2"})
    assert collectively(lambda: 42) == 42
    written: list[int] = []
    on_writer(lambda: written.append(1))
    assert written == [1]
    grad = torch.tensor([1.5, -2.0])
    all_reduce_mean_([grad])
    assert grad.tolist() == [1.5, -2.0]


def test_errors_pass_through_unchanged_in_one_process() -> None:
    def bad() -> None:
        raise NumericalError("NaN in the loss")

    with pytest.raises(NumericalError, match="NaN in the loss"):
        collectively(bad)
    with pytest.raises(NumericalError, match="NaN in the loss"):
        on_writer(bad)


def test_launched_by_torchrun_needs_every_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_VARIABLES[:-1]:
        monkeypatch.setenv(name, "1" if name != "MASTER_ADDR" else "127.0.0.1")
    assert not launched_by_torchrun() and environment_rank() == 0
    monkeypatch.setenv(TORCHRUN_VARIABLES[-1], "29500")
    assert launched_by_torchrun() and environment_rank() == 1


def test_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PACBOUND_DIST_TIMEOUT", raising=False)
    assert timeout_seconds() == 1800.0
    monkeypatch.setenv("PACBOUND_DIST_TIMEOUT", "2.5")
    assert timeout_seconds() == 2.5
    for bad in ("0", "-1", "nan", "soon"):
        monkeypatch.setenv("PACBOUND_DIST_TIMEOUT", bad)
        with pytest.raises(InvalidInputError, match="PACBOUND_DIST_TIMEOUT") as info:
            timeout_seconds()
        assert info.value.exit_code == EXIT_BAD_INPUT


def test_peer_failure_is_recognised() -> None:
    gone = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [::1]:2")
    assert is_peer_failure(gone)
    assert is_peer_failure(RuntimeError("Timed out waiting 2000ms for recv operation"))
    assert not is_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_peer_failure(ValueError("gloo"))  # not a backend error type
    assert PeerFailedError("x").exit_code == 143
