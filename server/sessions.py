"""Localisation sessions: one OnlineSequenceMatcher per robot stream, each behind its own lock, forgotten when idle."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vpr.sequence import OnlineSequenceMatcher, SequenceConfig


@dataclass
class Session:
    id: str
    map_name: str
    matcher: OnlineSequenceMatcher
    last_used: float
    frames: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def push(self, row: np.ndarray) -> tuple[np.ndarray, int]:
        """The sequence-matched row and how many frames it spans; concurrent pushes to one session are serialised."""
        with self.lock:
            matched = self.matcher.push(row)
            self.frames += 1
            return matched, min(self.frames, self.matcher.config.length)


class SessionLimitError(Exception):
    pass


class SessionStore:
    """Sessions by id; a session unused for ``idle_seconds`` is gone (looked up or swept)."""

    def __init__(self, idle_seconds: float, max_sessions: int, clock: Callable[[], float] = time.monotonic):
        self.idle_seconds, self.max_sessions, self.clock = idle_seconds, max_sessions, clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def sweep(self) -> int:
        """Forget idle sessions; returns how many were forgotten."""
        now = self.clock()
        with self._lock:
            expired = [sid for sid, s in self._sessions.items() if now - s.last_used > self.idle_seconds]
            for sid in expired:
                del self._sessions[sid]
        return len(expired)

    def create(self, map_name: str, config: SequenceConfig, session_id: str | None = None) -> Session:
        """A new session under a fresh random id, or under ``session_id`` (replacing a session of that id: a
        scaled-out deployment routes a robot's frames by the id the robot chose)."""
        self.sweep()
        with self._lock:
            replacing = session_id is not None and session_id in self._sessions
            if not replacing and len(self._sessions) >= self.max_sessions:
                raise SessionLimitError(f"{self.max_sessions} sessions are open; delete one or wait for idle expiry")
            session = Session(session_id or secrets.token_urlsafe(16), map_name, OnlineSequenceMatcher(config), self.clock())
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        """The live session (its idle clock restarted), or None if unknown or expired."""
        now = self.clock()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.last_used > self.idle_seconds:
                del self._sessions[session_id]
                return None
            session.last_used = now
            return session

    def delete(self, session_id: str) -> bool:
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def delete_map(self, map_name: str) -> int:
        """Forget every session on map ``map_name`` (the map was deleted); returns how many."""
        with self._lock:
            gone = [sid for sid, s in self._sessions.items() if s.map_name == map_name]
            for sid in gone:
                del self._sessions[sid]
        return len(gone)
