"""keras-tuner's distributed search: what the chief and the workers add to it.

With keras-tuner's environment variables set (``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``,
``KERASTUNER_ORACLE_PORT``: :class:`Distributed`), one process is the chief and the others are
workers. The chief serves the oracle over gRPC and runs no trial (:func:`run_chief`); each worker
asks it for trials until it has none left (:func:`run_worker`).

Where keras-tuner's chief would wait forever for a worker that died mid-trial (keras-tuner#915),
this one gives up on a worker it has not heard from for ``worker_timeout`` seconds and fails its
trial: :func:`give_up_on_silent_workers` is the one place that ends a trial for a worker. Workers
send a heartbeat during each trial (:func:`worker_heartbeat`) so that a long trial is not taken
for a dead worker, and wait at most ``worker_timeout`` seconds for a chief
(:func:`deadline_stub`) instead of keras-tuner's hour (keras-tuner#990).

A chief killed at any moment (``kill -9``) and started again with the same command takes the
search over: every file of the search folder is written whole, and the trials that were running stay
with their workers (:mod:`transferkit._search_state`). Meanwhile each worker's calls wait for the
chief up to ``worker_timeout`` and are sent again to the new one (:func:`deadline_stub`); the worker
says when it starts waiting and when the chief answers again (:class:`ChiefLink`). The new chief
takes a repeated report of a trial's end once (:func:`servicer_class`).

This module knows nothing of what a trial trains: :mod:`transferkit._tuning` runs the trials and
builds the results.
"""

from __future__ import annotations

import collections.abc
import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from transferkit._errors import ConfigError, MissingDependencyError, TransferkitError
from transferkit._search_state import Recovery, already_ended, search_is_over

log = logging.getLogger("transferkit")

WORKER_TIMEOUT = 120.0  # seconds without word from a worker before the chief fails its trial
CONSECUTIVE_FAILURES = 3  # keras-tuner's default limit, enforced by the chief in a distributed search
_POLL = 0.2  # seconds between the chief's checks of its workers
_OVER_GRACE = 5.0  # seconds a chief restarted on a finished search answers the workers that may still ask


class SearchError(TransferkitError, RuntimeError):
    """A search that cannot go on: no trial completed, or a worker lost its chief."""


def require_keras_tuner() -> Any:
    """The ``keras_tuner`` module, imported on first use so that ``import transferkit`` stays fast.

    Raises:
        MissingDependencyError: keras-tuner is not installed.
    """
    try:
        import keras_tuner
    except ImportError:
        raise MissingDependencyError("Search needs keras-tuner. Fix: pip install keras-tuner tensorboard") from None
    return keras_tuner


@dataclass(frozen=True)
class Distributed:
    """This process's part in keras-tuner's distributed search, read from its environment.

    Attributes:
        tuner_id: ``KERASTUNER_TUNER_ID``: ``chief`` for the chief (keras-tuner's test is that the id
            contains "chief"), a distinct id per worker (``tuner0``, ``tuner1``, …).
        host: ``KERASTUNER_ORACLE_IP``: where the chief listens and the workers connect.
        port: ``KERASTUNER_ORACLE_PORT``.
    """

    tuner_id: str
    host: str
    port: int

    @property
    def chief(self) -> bool:
        return "chief" in self.tuner_id

    @property
    def role(self) -> str:
        return "chief" if self.chief else "worker"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"  # as keras-tuner forms it

    @classmethod
    def from_environment(cls, environ: collections.abc.Mapping[str, str] | None = None) -> Distributed | None:
        """The distributed setting, or ``None`` when ``KERASTUNER_ORACLE_IP`` is unset (one process)."""
        env = os.environ if environ is None else environ
        host = env.get("KERASTUNER_ORACLE_IP")
        if host is None:
            return None
        example = ("KERASTUNER_TUNER_ID=chief (one process) or tuner0, tuner1, … (the workers), "
                   "KERASTUNER_ORACLE_IP=<the chief's address>, KERASTUNER_ORACLE_PORT=<a free port>")
        missing = [name for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if not env.get(name)]
        if missing or not host:
            unset = missing or ["KERASTUNER_ORACLE_IP"]
            raise ConfigError(f"KERASTUNER_ORACLE_IP={host!r} asks for keras-tuner's distributed search, but "
                              f"{' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set. Set all three "
                              f"in every process ({example}), or none for a search in one process.")
        port = env["KERASTUNER_ORACLE_PORT"]
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"Expected KERASTUNER_ORACLE_PORT to be a port number (1–65535). Received: "
                              f"KERASTUNER_ORACLE_PORT={port!r}.")
        return cls(tuner_id=env["KERASTUNER_TUNER_ID"], host=host, port=int(port))


# --- the workers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def heartbeat(oracle: Any, trial_id: str, every: float) -> collections.abc.Iterator[None]:
    """While a worker runs a trial, ask the chief for it every ``every`` seconds: the chief counts
    any call about a trial as word from the worker running it."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            with contextlib.suppress(Exception):  # a lost chief shows in the worker's next real call
                oracle.get_trial(trial_id)

    threading.Thread(target=beat, name=f"transferkit-heartbeat-{trial_id}", daemon=True).start()
    try:
        yield
    finally:
        stop.set()


def heartbeat_interval(worker_timeout: float) -> float:
    """Seconds between a worker's heartbeats: several within the chief's ``worker_timeout``."""
    return min(10.0, worker_timeout / 4)


def worker_heartbeat(oracle: Any, trial_id: str, distributed: Distributed | None, worker_timeout: float
                     ) -> contextlib.AbstractContextManager[None]:
    """What runs around one trial: a :func:`heartbeat` in a worker, nothing in a chief or a single process."""
    if distributed is None or distributed.chief:
        return contextlib.nullcontext()
    return heartbeat(oracle, trial_id, heartbeat_interval(worker_timeout))


class ChiefLink:
    """A worker's view of its chief: says once when the chief stops answering, and when it answers again.

    The chief may be restarted (killed, then the same command run again): a worker keeps each call
    waiting for it up to its ``worker_timeout`` and prints one line when the wait starts and one
    when it ends.
    """

    def __init__(self, tuner_id: str, address: str, seconds: float) -> None:
        self.tuner_id, self.address, self.seconds = tuner_id, address, seconds
        self._lock = threading.Lock()
        self._lost_at: float | None = None

    def lost(self) -> None:
        with self._lock:
            if self._lost_at is not None:
                return
            self._lost_at = time.monotonic()
        log.warning("Worker %s: the chief at %s does not answer; waiting up to %g s for it (a chief started again "
                    "with the same command takes the search over)", self.tuner_id, self.address, self.seconds)

    def answered(self) -> None:
        with self._lock:
            lost_at, self._lost_at = self._lost_at, None
        if lost_at is not None:
            log.warning("Worker %s: the chief at %s answers again after %.0f s; the search goes on", self.tuner_id,
                        self.address, time.monotonic() - lost_at)


_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
              ("grpc.max_reconnect_backoff_ms", 1000)]  # a restarted chief is found within a second


def deadline_stub(address: str, seconds: float, link: ChiefLink | None = None) -> Any:
    """A stub for the chief's service whose calls wait at most ``seconds`` for the chief, instead of
    keras-tuner's hour (keras-tuner#990).

    Within that time a call that finds no chief, or whose chief went away before answering (killed
    mid-call), is sent again once the chief listens: the restarted chief takes each call again
    (see :mod:`transferkit._search_state` and :func:`servicer_class`). ``link`` hears of each
    outage and its end.
    """
    import grpc
    from keras_tuner.src import protos

    class Deadline(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            give_up = time.monotonic() + (seconds if details.timeout is None else min(details.timeout, seconds))
            ready = False  # the first try fails at once where no chief listens, so that the wait is announced
            while True:
                remaining = max(give_up - time.monotonic(), 0.001)
                call = continuation(details._replace(timeout=remaining, wait_for_ready=ready), request)
                if call.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= give_up:
                    if link is not None and call.code() == grpc.StatusCode.OK:
                        link.answered()
                    return call
                if link is not None:
                    link.lost()
                if ready:  # a chief that accepted the connection and went away: do not spin
                    time.sleep(min(0.2, remaining))
                ready = True

    channel = grpc.intercept_channel(grpc.insecure_channel(address, options=_RECONNECT), Deadline())
    return protos.get_service_grpc().OracleStub(channel)


def run_worker(runner: Any, distributed: Distributed, worker_timeout: float) -> None:
    """Run trials until the chief has none left (``runner`` is the worker's keras-tuner tuner).

    Raises:
        SearchError: The chief did not answer within ``worker_timeout`` seconds, or answered with an error.
    """
    import grpc

    try:
        runner.search(verbose=0)
    except grpc.RpcError as error:
        code = error.code()
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            raise SearchError(
                f"Worker {distributed.tuner_id}: the chief at {distributed.address} did not answer within "
                f"{worker_timeout:g} s ({code.name}). It is not running: not started yet, stopped (and not started "
                "again in time), or done with a search that ended before this worker asked for a trial. Start the "
                "chief first, or give the workers a longer worker_timeout (--worker-timeout).") from None
        raise SearchError(f"Worker {distributed.tuner_id}: the chief at {distributed.address} answered with an "
                          f"error ({code.name}: {error.details()}).") from None


# --- the chief --------------------------------------------------------------------------------------


def give_up_on_silent_workers(oracle: Any, heard: dict[str, float], worker_timeout: float) -> list[str]:
    """The chief's watchdog: forget each worker not heard from for ``worker_timeout`` seconds, and
    end its running trial as FAILED, so that the search finishes with the trials that completed.

    keras-tuner's chief waits until every worker it handed a trial has ended it and asked for
    the next (keras-tuner#915): a worker killed mid-trial would keep it waiting forever. This is
    the only place where the chief ends a trial for a worker. A given-up worker that was only
    slow and reports later still gets its result recorded. Also stops handing out trials after
    ``CONSECUTIVE_FAILURES`` failed ones in a row (keras-tuner's own check raises inside the
    oracle's lock, which would leave the chief hung, so the chief's oracle has it turned off).
    Call with the oracle's lock held (``keras_tuner.synchronized``); it never raises, which
    would leave that lock held. Returns the ids given up.
    """
    now = time.monotonic()
    given_up = []
    for tuner_id in sorted(oracle.tuner_ids):
        silent = now - heard.setdefault(tuner_id, now)  # registered just now: heard from
        if silent <= worker_timeout:
            continue
        trial = oracle.ongoing_trials.get(tuner_id)
        if trial is not None:
            trial.status = "FAILED"
            trial.message = (f"Worker {tuner_id} was not heard from for {silent:.0f} s (killed, or its machine "
                             "lost); the chief failed its trial.")
            try:
                oracle.end_trial(trial)
            except Exception as error:  # never leave the oracle's lock held
                log.warning("Ending trial %s of worker %s failed (%s)", trial.trial_id, tuner_id, error)
                oracle.ongoing_trials.pop(tuner_id, None)
        oracle.tuner_ids.discard(tuner_id)
        given_up.append(tuner_id)
        log.warning("The chief gave up on worker %s: not heard from for %.0f s%s", tuner_id, silent,
                    f"; its trial {trial.trial_id} is marked failed" if trial is not None else "")
    ended = [oracle.trials[t].status for t in oracle.end_order[-CONSECUTIVE_FAILURES:]]
    if (len(ended) == CONSECUTIVE_FAILURES and all(s == "FAILED" for s in ended)
            and (oracle.max_trials is None or oracle.max_trials > len(oracle.trials))):
        oracle.max_trials = len(oracle.trials)  # every worker's next request gets STOPPED
        log.warning("%d trials in a row failed: the chief hands out no more trials", CONSECUTIVE_FAILURES)
    return given_up


def no_worker_left(oracle: Any) -> bool:
    """Whether the chief is done: no worker it knows of, and no trial running."""
    return not oracle.tuner_ids and not oracle.ongoing_trials


def servicer_class() -> type:
    """keras-tuner's oracle service as a class that also notes when each worker was last heard from."""
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer
    from keras_tuner.src.engine.trial import Trial

    kt = require_keras_tuner()

    class ChiefServicer(OracleServicer):  # type: ignore[misc]
        """keras-tuner's oracle service, noting when each worker was last heard from."""

        def __init__(self, oracle: Any, heard: dict[str, float]) -> None:
            super().__init__(oracle)
            self.heard = heard

        def _heard_about(self, trial_id: str) -> None:
            for tuner_id, trial in list(self.oracle.ongoing_trials.items()):
                if trial.trial_id == trial_id:
                    self.heard[tuner_id] = time.monotonic()

        def CreateTrial(self, request: Any, context: Any) -> Any:  # gRPC's names
            response = super().CreateTrial(request, context)
            self.heard[request.tuner_id] = time.monotonic()  # after: by now the oracle knows this worker
            return response

        def UpdateTrial(self, request: Any, context: Any) -> Any:
            self._heard_about(request.trial_id)
            return super().UpdateTrial(request, context)

        def EndTrial(self, request: Any, context: Any) -> Any:
            self._heard_about(request.trial.trial_id)
            status = Trial.from_proto(request.trial).status
            if kt.synchronized(already_ended)(self.oracle, request.trial.trial_id, status):
                # a worker sending its report again (its chief was killed before answering): recorded once
                return protos.get_service().EndTrialResponse()
            return super().EndTrial(request, context)

        def GetTrial(self, request: Any, context: Any) -> Any:  # also the workers' heartbeat
            self._heard_about(request.trial_id)
            return super().GetTrial(request, context)

    return ChiefServicer


def serve(oracle: Any, distributed: Distributed, worker_timeout: float) -> None:
    """The chief: serve ``oracle`` to the workers until none is left, giving up on silent ones.

    Replaces keras-tuner's ``oracle_chief.start_server``, which waits forever for a dead worker and
    checks for the end every 20 s. The port is bound without ``SO_REUSEPORT`` (gRPC's default sets
    it), so a chief left over on the same port makes this one fail instead of sharing the port with
    it and taking half of the new search's requests.

    Raises:
        ConfigError: Another process holds the port.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos

    kt = require_keras_tuner()
    heard: dict[str, float] = {}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), options=[("grpc.so_reuseport", 0)])
    protos.get_service_grpc().add_OracleServicer_to_server(servicer_class()(oracle, heard), server)
    try:
        server.add_insecure_port(distributed.address)
    except RuntimeError:
        raise ConfigError(f"The chief cannot listen on {distributed.address}: the port is taken (by a chief left "
                          "over from another search?). Stop that process, or choose another "
                          "KERASTUNER_ORACLE_PORT for the chief and the workers.") from None
    server.start()
    # A search with nothing left (its chief was killed after the last trial ended) waits a moment for
    # a worker still asking for trials, to tell it to stop, and not forever for workers long gone.
    over_at = time.monotonic() + min(worker_timeout, _OVER_GRACE) if kt.synchronized(search_is_over)(oracle) else None
    try:
        while not ((heard or (over_at is not None and time.monotonic() > over_at))
                   and kt.synchronized(no_worker_left)(oracle)):
            time.sleep(_POLL)
            kt.synchronized(give_up_on_silent_workers)(oracle, heard, worker_timeout)
    finally:
        server.stop(grace=1.0)  # the last worker's answer (STOPPED) is still on its way


def run_chief(runner: Any, distributed: Distributed, worker_timeout: float, *, verbose: object,
              recovery: Recovery | None = None) -> None:
    """The chief's whole search (``runner`` is its keras-tuner tuner): save the tuner's state, then
    :func:`serve` its oracle until no worker is left. The chief runs no trial.

    ``recovery`` is what :func:`transferkit._search_state.recover` repaired in the folder of a
    chief that was stopped and started again; it is reported before serving.
    """
    runner.oracle.verbose = verbose
    if recovery:
        log.warning("%s", recovery.describe(worker_timeout=worker_timeout))
    runner.save()
    serve(runner.oracle, distributed, worker_timeout)
