"""How a failure on one rank ends every rank with a documented exit code.

Two kinds of failure in a run of several processes:

* a failure every rank knows about, because the ranks compared notes first
  (:func:`~pacbound.parallel.collectives.collectively`, ``agree``): every rank raises a
  :class:`SharedError` with the same message and exit code, and only rank 0 prints it;
* a failure of one rank alone (a NaN in its shard, out of memory, a signal, a crash): that rank
  exits with its own code; the others find out when their next collective breaks (the peer's
  connection closes, or the collective timeout passes) or when torchrun's agent sends them
  SIGTERM, and end with :class:`PeerFailedError` or SIGTERM: exit 143 either way (terminated
  from outside this rank; no new exit code).
"""

from __future__ import annotations

from pacbound.errors import EXIT_TERMINATED, PacboundError

#: Words of the messages torch.distributed's backends raise when a peer is gone or late.
_PEER_SIGNS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "timed out",
    "gloo",
    "nccl",
)


class PeerFailedError(PacboundError):
    """This rank stopped because another rank failed, was killed, never joined or timed out
    (exit 143, as when torchrun's agent terminates it); the other rank's own error line says
    why."""

    exit_code = EXIT_TERMINATED


class SharedError(PacboundError):
    """A failure every rank raises alike (after comparing notes): printed by rank 0 only,
    every rank exits with ``exit_code``. ``param`` names the option at fault, if any."""

    def __init__(self, message: str, *, exit_code: int, param: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.param = param


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised by torch.distributed, says that another rank is gone or late."""
    if type(exc).__module__.startswith("torch.distributed"):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return any(sign in text for sign in _PEER_SIGNS)


def peer_failed(exc: BaseException, rank: int, what: str) -> PeerFailedError:
    """The error a rank ends with when ``exc`` broke its collective ``what``."""
    detail = " ".join(str(exc).split())[:160]
    return PeerFailedError(
        f"rank {rank} stopped during {what}: another rank failed, was killed or timed out "
        f"({type(exc).__name__}: {detail}); see that rank's error line"
    )
