//! Sessions and the replay cache, both bounded and expiring on the core's clock.

use std::collections::{HashMap, VecDeque};

use coffer_vault_proto::channel::{ServerChannel, SessionId, ENC_LEN};
use coffer_vault_proto::CofferSuite;
use opaque_ke::ServerLogin;

use crate::RecordId;

/// A session lives this long after it opens.
pub const SESSION_TTL_MS: u64 = 120_000;
/// Most sessions held at once.
pub const MAX_SESSIONS: usize = 100_000;
/// An open frame's clock may differ from the core's by this much.
pub const CLOCK_WINDOW_MS: u64 = 60_000;
/// Most remembered open frames.
pub const MAX_REPLAY_ENTRIES: usize = 2_000_000;

pub(crate) enum Phase {
    /// Opened; nothing done yet.
    Fresh,
    /// RegisterStart answered; RegisterFinish expected.
    Registering {
        max_attempts: u8,
        replace: bool,
        authenticated: bool,
        /// The new registration's salt (its OPRF key's identifier).
        salt: [u8; crate::record::SALT_LEN],
    },
    /// KE2 sent (attempt spent); KE3 expected.
    LoginPending(Box<ServerLogin<CofferSuite>>),
    /// A correct KE3: password change or delete allowed.
    Authenticated,
    /// Nothing more to do.
    Done,
}

pub(crate) struct Session {
    pub(crate) channel: ServerChannel,
    pub(crate) record: RecordId,
    pub(crate) phase: Phase,
}

#[derive(Default)]
pub(crate) struct Sessions {
    map: HashMap<SessionId, Session>,
    expiry: VecDeque<(u64, SessionId)>,
}

impl Sessions {
    fn expire(&mut self, now: u64) {
        while let Some(&(t, id)) = self.expiry.front() {
            if t > now {
                break;
            }
            self.expiry.pop_front();
            self.map.remove(&id);
        }
    }

    pub(crate) fn has_room(&mut self, now: u64) -> bool {
        self.expire(now);
        self.map.len() < MAX_SESSIONS
    }

    pub(crate) fn insert(&mut self, now: u64, id: SessionId, s: Session) {
        self.map.insert(id, s);
        self.expiry.push_back((now + SESSION_TTL_MS, id));
    }

    pub(crate) fn take(&mut self, now: u64, id: &SessionId) -> Option<Session> {
        self.expire(now);
        self.map.remove(id)
    }

    /// Puts a session back after a request (its expiry entry still stands).
    pub(crate) fn put_back(&mut self, id: SessionId, s: Session) {
        self.map.insert(id, s);
    }

    pub(crate) fn record_of(&self, id: &SessionId) -> Option<RecordId> {
        self.map.get(id).map(|s| s.record)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Encapsulated keys of recently accepted open frames.
#[derive(Default)]
pub(crate) struct ReplayCache {
    seen: HashMap<[u8; ENC_LEN], u64>,
    order: VecDeque<(u64, [u8; ENC_LEN])>,
}

pub(crate) enum ReplayCheck {
    Fresh,
    Replayed,
    Full,
}

impl ReplayCache {
    pub(crate) fn check_and_insert(&mut self, now: u64, enc: [u8; ENC_LEN]) -> ReplayCheck {
        while let Some(&(t, e)) = self.order.front() {
            if t > now {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&e);
        }
        if self.seen.contains_key(&enc) {
            return ReplayCheck::Replayed;
        }
        if self.seen.len() >= MAX_REPLAY_ENTRIES {
            return ReplayCheck::Full;
        }
        // Kept past the last moment the frame's clock could still be accepted.
        let until = now + 2 * CLOCK_WINDOW_MS + 10_000;
        self.seen.insert(enc, until);
        self.order.push_back((until, enc));
        ReplayCheck::Fresh
    }
}
