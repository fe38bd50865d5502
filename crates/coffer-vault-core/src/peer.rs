//! Messages between the hosts of a replicated realm (`POST /v1/peer`), and
//! a log item as a member's store keeps it (ADR 0013).
//!
//! Host framing, not used by the core itself: it lives in this crate so
//! the fuzz targets (`fuzz_targets/vault_peer.rs`) need no daemon. Every
//! value that matters inside is MAC'd by a core (entries, acks,
//! certificates); the framing is parsed from untrusted bytes with hard
//! limits.
//!
//! ```text
//! message = tag u8 | group u8 | from u8 | epoch u64 | rest   (group: the realm's group number)
//!   tag 1 Append:  n u32 | (item_len u32 | item)*n | cert_len u16 | cert
//!                  (item = store::LogItem bytes; an empty list is a heartbeat)
//!   tag 2 Poll:    nothing
//!   tag 3 VoteReq: request[105] (the candidate core's signed slot, promising
//!                  its epoch; the message's epoch is that epoch)
//! reply   = status | ack_flag u8 | ack[105]? | cert_len u16 | cert
//! status  = node u8 | promised u64 | last_epoch u64 | index u64 | mac[32]
//!           | applied u64 | ready u8 | leader u8 (0: none known)
//! ```

use crate::log::{Ack, Certificate, Entry, Mac, NodeId, ACK_LEN};
use crate::transition::MAX_BODY_LEN;

/// One log item as the store keeps it.
#[derive(Debug, Clone)]
pub struct LogItem {
    /// The entry.
    pub entry: Entry,
    /// Its MAC.
    pub mac: Mac,
    /// Its body.
    pub body: Vec<u8>,
}

impl LogItem {
    /// `entry_len u16 | entry | mac[32] | body`.
    pub fn encode(&self) -> Vec<u8> {
        let e = self.entry.encode();
        let mut out = Vec::with_capacity(2 + e.len() + 32 + self.body.len());
        out.extend_from_slice(&(e.len() as u16).to_be_bytes());
        out.extend_from_slice(&e);
        out.extend_from_slice(self.mac.as_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// Parses [`LogItem::encode`]'s bytes (untrusted: the core checks MACs).
    pub fn decode(b: &[u8]) -> Option<Self> {
        let n = usize::from(u16::from_be_bytes(b.get(..2)?.try_into().ok()?));
        let entry = Entry::decode(b.get(2..2 + n)?).ok()?;
        let mac: [u8; 32] = b.get(2 + n..2 + n + 32)?.try_into().ok()?;
        Some(Self {
            entry,
            mac: Mac(mac),
            body: b.get(2 + n + 32..)?.to_vec(),
        })
    }
}

/// Most items in one Append (a catch-up is one segment: ADR 0013).
pub const MAX_ITEMS: usize = 100_000;
/// Largest message accepted (bytes).
pub const MAX_MESSAGE: usize = 256 << 20;

/// A node's replication status, as its host reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The node.
    pub node: NodeId,
    /// Its promised epoch.
    pub promised: u64,
    /// Its last entry's epoch.
    pub last_epoch: u64,
    /// Its last entry's index.
    pub index: u64,
    /// Its last entry's MAC.
    pub mac: Mac,
    /// Its applied index.
    pub applied: u64,
    /// Whether its store reaches its NVRAM.
    pub ready: bool,
    /// The leader it follows (0: none known).
    pub leader: NodeId,
}

/// A message to a peer.
#[derive(Debug, Clone)]
pub enum PeerMsg {
    /// A leader's entries (possibly none: a heartbeat) and best certificate.
    Append {
        /// Sender.
        from: NodeId,
        /// Its epoch.
        epoch: u64,
        /// Consecutive log items.
        items: Vec<LogItem>,
        /// The best commit certificate it knows.
        cert: Option<Certificate>,
    },
    /// Who is out there, and how far is their log?
    Poll {
        /// Sender.
        from: NodeId,
    },
    /// A candidate asks for a vote.
    VoteReq {
        /// Sender.
        from: NodeId,
        /// The candidate's epoch.
        epoch: u64,
        /// The candidate core's signed slot (`Core::vote` checks it).
        request: Ack,
    },
}

/// The answer to any message.
#[derive(Debug, Clone)]
pub struct PeerReply {
    /// The answering node's status.
    pub status: Status,
    /// Its ack (after an Append) or vote (after a VoteReq).
    pub ack: Option<Ack>,
    /// The best certificate it knows.
    pub cert: Option<Certificate>,
}

/// Malformed peer bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed peer message: {0}")]
pub struct PeerError(pub &'static str);

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PeerError> {
        if self.0.len() < n {
            return Err(PeerError("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, PeerError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PeerError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PeerError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, PeerError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn mac(&mut self) -> Result<Mac, PeerError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(Mac(a))
    }
    fn cert(&mut self) -> Result<Option<Certificate>, PeerError> {
        let n = usize::from(self.u16()?);
        if n == 0 {
            return Ok(None);
        }
        Certificate::decode(self.take(n)?)
            .map(Some)
            .map_err(|_| PeerError("bad certificate"))
    }
    fn done(&self) -> Result<(), PeerError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(PeerError("trailing bytes"))
        }
    }
}

fn put_cert(out: &mut Vec<u8>, cert: &Option<Certificate>) {
    match cert {
        Some(c) => {
            let b = c.encode();
            out.extend_from_slice(&(b.len() as u16).to_be_bytes());
            out.extend_from_slice(&b);
        }
        None => out.extend_from_slice(&0u16.to_be_bytes()),
    }
}

impl PeerMsg {
    /// The message's bytes, for the realm's group number `group`.
    pub fn encode(&self, group: u8) -> Vec<u8> {
        let (tag, from, epoch) = match self {
            PeerMsg::Append { from, epoch, .. } => (1, *from, *epoch),
            PeerMsg::Poll { from } => (2, *from, 0),
            PeerMsg::VoteReq { from, epoch, .. } => (3, *from, *epoch),
        };
        let mut out = vec![tag, group, from];
        out.extend_from_slice(&epoch.to_be_bytes());
        match self {
            PeerMsg::Append { items, cert, .. } => {
                out.extend_from_slice(&(items.len() as u32).to_be_bytes());
                for it in items {
                    let b = it.encode();
                    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                    out.extend_from_slice(&b);
                }
                put_cert(&mut out, cert);
            }
            PeerMsg::Poll { .. } => {}
            PeerMsg::VoteReq { request, .. } => out.extend_from_slice(&request.encode()),
        }
        out
    }

    /// Parses untrusted bytes: the group number and the message.
    pub fn decode(b: &[u8]) -> Result<(u8, Self), PeerError> {
        if b.len() > MAX_MESSAGE {
            return Err(PeerError("too large"));
        }
        let mut r = R(b);
        let tag = r.u8()?;
        let group = r.u8()?;
        let from = r.u8()?;
        let epoch = r.u64()?;
        let msg = match tag {
            1 => {
                let n = r.u32()? as usize;
                if n > MAX_ITEMS {
                    return Err(PeerError("too many items"));
                }
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let len = r.u32()? as usize;
                    if len > 2 + 1024 + 32 + MAX_BODY_LEN {
                        return Err(PeerError("item too large"));
                    }
                    let item = LogItem::decode(r.take(len)?).ok_or(PeerError("bad item"))?;
                    if let Some(prev) = items.last() {
                        let prev: &LogItem = prev;
                        if prev.entry.index.checked_add(1) != Some(item.entry.index) {
                            return Err(PeerError("items not consecutive"));
                        }
                    }
                    items.push(item);
                }
                let cert = r.cert()?;
                PeerMsg::Append {
                    from,
                    epoch,
                    items,
                    cert,
                }
            }
            2 => PeerMsg::Poll { from },
            3 => PeerMsg::VoteReq {
                from,
                epoch,
                request: Ack::decode(r.take(ACK_LEN)?)
                    .map_err(|_| PeerError("bad vote request"))?,
            },
            _ => return Err(PeerError("unknown message")),
        };
        r.done()?;
        Ok((group, msg))
    }
}

impl PeerReply {
    /// The reply's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let s = &self.status;
        let mut out = Vec::with_capacity(80 + ACK_LEN);
        out.push(s.node);
        out.extend_from_slice(&s.promised.to_be_bytes());
        out.extend_from_slice(&s.last_epoch.to_be_bytes());
        out.extend_from_slice(&s.index.to_be_bytes());
        out.extend_from_slice(s.mac.as_bytes());
        out.extend_from_slice(&s.applied.to_be_bytes());
        out.push(u8::from(s.ready));
        out.push(s.leader);
        match &self.ack {
            Some(a) => {
                out.push(1);
                out.extend_from_slice(&a.encode());
            }
            None => out.push(0),
        }
        put_cert(&mut out, &self.cert);
        out
    }

    /// Parses untrusted bytes.
    pub fn decode(b: &[u8]) -> Result<Self, PeerError> {
        if b.len() > MAX_MESSAGE {
            return Err(PeerError("too large"));
        }
        let mut r = R(b);
        let status = Status {
            node: r.u8()?,
            promised: r.u64()?,
            last_epoch: r.u64()?,
            index: r.u64()?,
            mac: r.mac()?,
            applied: r.u64()?,
            ready: match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(PeerError("bad flag")),
            },
            leader: r.u8()?,
        };
        let ack = match r.u8()? {
            0 => None,
            1 => Some(Ack::decode(r.take(ACK_LEN)?).map_err(|_| PeerError("bad ack"))?),
            _ => return Err(PeerError("bad flag")),
        };
        let cert = r.cert()?;
        r.done()?;
        Ok(Self { status, ack, cert })
    }
}
