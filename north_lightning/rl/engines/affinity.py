"""Episode affinity for `ServerPool`: all turns of one episode go to the same `vllm serve` sampler server, and
so do the episodes of one group as long as that keeps the servers evenly loaded.

Why: vLLM caches the KV of recent prefixes. An agent episode's prompt is the previous prompt plus one turn, so on
the server that decoded the previous turn all but the new observation is a cache hit, while on another server the
whole conversation (up to 128K tokens) is prefilled again. The G rollouts of a group share the task prompt as well,
which is worth less (one prompt per episode) than an even load, hence the weaker rule for groups.

How the key reaches the pool: the rollout service runs each episode inside `routing(group, episode)`, which sets a
context variable; `ServerPool.generate` reads it with `current_route()`. The `Policy` interface (`generate(prompts,
...)`) is unchanged, and engines that have a single engine (in-process, subprocess) never look at it. Context
variables are per thread (and per `contextvars.Context`), so concurrent episodes on worker threads do not see each
other's routes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

_ROUTE: ContextVar[Route | None] = ContextVar("north_sampler_route", default=None)


@dataclass(eq=False)  # identity: one object per running episode, even when (group, episode) repeats on a retry
class Route:
    """The routing key of one running episode, and the pool's server index of each of its calls, in order."""

    group: Hashable
    episode: Hashable
    served_by: list[int] = field(default_factory=list)
    _on_end: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def on_end(self, fn: Callable[[], None]) -> None:
        """Call `fn` when the episode ends (a pool forgets the episode's server then)."""
        self._on_end.append(fn)


@contextmanager
def routing(group: Hashable, episode: Hashable) -> Iterator[Route]:
    """Run the body as episode `episode` of group `group`: sampler calls made inside it carry this route."""
    route = Route(group, episode)
    token = _ROUTE.set(route)
    try:
        yield route
    finally:
        _ROUTE.reset(token)
        for fn in route._on_end:
            fn()


def current_route() -> Route | None:
    """The route of the episode this code runs in, or None outside `routing`."""
    return _ROUTE.get()


class AffinityTable:
    """Which server each running episode and group uses. Not thread-safe: `ServerPool` calls it under its lock.

    An episode keeps the server of its first call while that server is alive; when it died, the episode moves
    like a new one. A new episode goes to its group's server (the group's first episode's) if that server then
    holds no more than its fair share of the running episodes, ceil(running / live servers); otherwise, and for
    the first episode of a group, to the least busy live server (`least_busy`). So a group stays whole when its
    episodes start together with other groups' (the usual case: every worker runs one group at a time), and is
    split rather than leave a server idle when groups are fewer than servers.
    """

    def __init__(self, n_servers: int) -> None:
        self.server: dict[Route, int] = {}  # running episode -> server index
        self.home: dict[Hashable, int] = {}  # group -> server of its first episode (while any of it runs)
        self.group_episodes: dict[Hashable, int] = {}
        self.active = [0] * n_servers  # running episodes per server
        self.moved = 0  # episodes moved off a dead server

    def pick(self, route: Route, live: list[int], least_busy: Callable[[list[int]], int]) -> int:
        """The server for the next call of `route` among `live` (non-empty) server indices."""
        i = self.server.get(route)
        if i is not None and i in live:
            return i
        if i is not None:  # its server died: move it
            self.active[i] -= 1
            self.moved += 1
        else:
            self.group_episodes[route.group] = self.group_episodes.get(route.group, 0) + 1
        home = self.home.get(route.group)
        fair = math.ceil((sum(self.active[j] for j in live) + 1) / len(live))
        if home in live and self.active[home] + 1 <= fair:
            i = home
        else:
            i = least_busy(live)
            if home not in live:
                self.home[route.group] = i
        self.server[route] = i
        self.active[i] += 1
        return i

    def end(self, route: Route) -> None:
        """The episode is over: free its place (unknown routes, e.g. of an episode that never called, are ignored)."""
        i = self.server.pop(route, None)
        if i is None:
            return
        self.active[i] -= 1
        left = self.group_episodes[route.group] - 1
        if left:
            self.group_episodes[route.group] = left
        else:
            del self.group_episodes[route.group]
            self.home.pop(route.group, None)

    def running(self) -> int:
        return len(self.server)
