//! A replicated group of real cores in one process (ADR 0013), driven
//! synchronously: a test decides who is up, who leads and what each member
//! receives. The daemon's host (`coffer-vault/src/replication.rs`) does the
//! same over HTTP with timers; this one exists to reach exact interleavings
//! (an uncommitted suffix replaced, a store rolled back) deterministically.

use crate::log::{Ack, Certificate, Entry, Mac};
use crate::peer::LogItem;
use crate::replica::{AckEffect, MemberStore};
use crate::testing::{MemPlatform, MemStore, Vault};
use crate::transition::Body;
use crate::{Core, CoreError, Input, Platform, RealmConfig, StartState, StoreWrites};

/// One member: its core, NVRAM (in the platform), store and log.
pub struct MemMember {
    /// The core.
    pub core: Core<MemPlatform>,
    /// Its platform (NVRAM survives restarts and store rollbacks).
    pub platform: MemPlatform,
    /// Records as of the applied index.
    pub store: MemStore,
    /// The log: index i at `log[i - 1]`.
    pub log: Vec<LogItem>,
    /// The applied index the store reflects.
    pub applied: u64,
    /// Whether it is running and reachable.
    pub up: bool,
}

/// A group of members.
pub struct MemGroup {
    /// The members (node id = position + 1).
    pub members: Vec<MemMember>,
    /// Who leads (the test's choice; the cores check).
    pub leader: Option<usize>,
    /// Master secret.
    pub master: [u8; 32],
    /// Realm config.
    pub config: RealmConfig,
    /// Sealed setup.
    pub sealed_setup: Vec<u8>,
    /// The public key.
    pub public_key: [u8; 32],
    /// The best certificate seen.
    pub cert: Option<Certificate>,
}

fn pairs(items: &[LogItem]) -> Vec<(Entry, Mac)> {
    items.iter().map(|i| (i.entry.clone(), i.mac)).collect()
}

impl MemGroup {
    /// `realm new` for `n` members, all up, nobody leading yet.
    pub fn new(seed: u64, n: usize) -> Result<Self, CoreError> {
        Self::new_in(seed, n, (0, 1))
    }

    /// Group `index` of `groups` (ADR 0014): it owns its share of buckets.
    pub fn new_in(seed: u64, n: usize, (index, groups): (u8, u8)) -> Result<Self, CoreError> {
        let base = MemPlatform::new(seed, 1_800_000_000_000);
        let (master, config) = super::realm_keys(&base);
        let ids: Vec<u8> = (1..=n as u8).collect();
        let mut platforms: Vec<MemPlatform> = (0..n)
            .map(|i| MemPlatform::new(seed.wrapping_add(1 + i as u64), 1_800_000_000_000))
            .collect();
        for p in &mut platforms[1..] {
            // One clock for the realm.
            p.clock = base.clock.clone();
        }
        platforms[0].clock = base.clock.clone();
        let created = Core::init_group(
            platforms[0].clone(),
            &master,
            config.clone(),
            1,
            &ids,
            (index, groups),
            None,
        )?;
        for (i, p) in platforms.iter().enumerate().skip(1) {
            Core::join_group(
                p.clone(),
                &master,
                &config,
                (i + 1) as u8,
                &created.genesis,
                &created.genesis_mac,
            )?;
        }
        let genesis = LogItem {
            entry: created.genesis.clone(),
            mac: created.genesis_mac,
            body: Body::empty().encode(),
        };
        let mut members = Vec::new();
        for p in platforms {
            let (core, state) = Core::start_member(
                p.clone(),
                &master,
                config.clone(),
                MemberStore {
                    sealed_setup: &created.created.sealed_setup,
                    leaves: vec![],
                    genesis: (genesis.entry.clone(), genesis.mac),
                    log: vec![(genesis.entry.clone(), genesis.mac)],
                },
            )?;
            if state != StartState::Ready {
                return Err(CoreError::Refusing(format!("{state:?}")));
            }
            members.push(MemMember {
                core,
                platform: p,
                store: MemStore::default(),
                log: vec![genesis.clone()],
                applied: 1,
                up: true,
            });
        }
        Ok(Self {
            members,
            leader: None,
            master,
            config,
            sealed_setup: created.created.sealed_setup,
            public_key: created.created.public_key,
            cert: None,
        })
    }

    /// The descriptor a client pins (the smallest Argon2id a client accepts).
    pub fn descriptor(&self) -> coffer_vault_proto::RealmDescriptor {
        coffer_vault_proto::RealmDescriptor {
            format: coffer_vault_proto::realm::REALM_FORMAT.into(),
            realm_id: self.config.realm_id,
            public_key: self.public_key,
            ksf: coffer_vault_proto::KsfParams {
                memory_kib: coffer_vault_proto::realm::MIN_KSF_MEMORY_KIB,
                iterations: 1,
                ..Default::default()
            },
            max_attempts_limit: self.config.max_attempts_limit,
            address: "mem:".into(),
        }
    }

    /// Restarts member `i` over its store and log (volatile state lost).
    pub fn restart(&mut self, i: usize) -> Result<StartState, CoreError> {
        let m = &mut self.members[i];
        let leaves = m.store.leaves.iter().map(|(b, h)| (*b, *h)).collect();
        let from = (m.applied - 1) as usize;
        let (core, state) = Core::start_member(
            m.platform.clone(),
            &self.master,
            self.config.clone(),
            MemberStore {
                sealed_setup: &self.sealed_setup,
                leaves,
                genesis: (m.log[0].entry.clone(), m.log[0].mac),
                log: pairs(&m.log[from..]),
            },
        )?;
        m.core = core;
        m.up = true;
        if self.leader == Some(i) {
            self.leader = None;
        }
        Ok(state)
    }

    /// Member `i` stands; every up member is asked for its vote; with a
    /// majority it leads and its `leader` entry is sent to the up members.
    pub fn elect(&mut self, i: usize) -> Result<(), String> {
        self.members[i]
            .core
            .start_election()
            .map_err(|e| e.to_string())?;
        let request = self.members[i]
            .core
            .current_ack()
            .map_err(|e| e.to_string())?;
        let mut votes = Vec::new();
        for j in 0..self.members.len() {
            if j != i && self.members[j].up {
                if let Ok(v) = self.members[j].core.vote(&request) {
                    votes.push(v);
                }
            }
        }
        let p = self.members[i]
            .core
            .become_leader(&votes)
            .map_err(|e| e.to_string())?;
        if let Some(old) = self.leader {
            if old != i {
                self.members[old].core.step_down();
            }
        }
        self.leader = Some(i);
        let m = &mut self.members[i];
        let keep = p.entry.index - 1;
        m.log.truncate(keep as usize);
        m.log.push(LogItem {
            entry: p.entry,
            mac: p.mac,
            body: p.body,
        });
        let own = m.core.persisted().map_err(|e| e.to_string())?;
        m.core.on_ack(&own);
        self.replicate()?;
        Ok(())
    }

    /// The leader sends its log to every up member (from where each one
    /// parts from it) and counts the acks; then everybody applies what
    /// committed.
    pub fn replicate(&mut self) -> Result<(), String> {
        let l = self.leader.ok_or("no leader")?;
        let mut acks: Vec<Ack> = Vec::new();
        for j in 0..self.members.len() {
            if j == l || !self.members[j].up {
                continue;
            }
            if let Some(a) = self.send_log(l, j) {
                acks.push(a);
            }
        }
        for a in &acks {
            if self.members[l].core.on_ack(a) == AckEffect::SteppedDown {
                self.leader = None;
                return Err("the leader stepped down".into());
            }
        }
        // A certificate from the acks at the leader's last index.
        let st = self.members[l]
            .core
            .replica_status()
            .ok_or("not replicated")?;
        let mut at: Vec<Ack> = acks
            .into_iter()
            .filter(|a| a.index == st.index && a.entry_mac == st.mac)
            .collect();
        if let Ok(own) = self.members[l].core.current_ack() {
            at.push(own);
        }
        let c = Certificate::new(at);
        if self.members[l].core.check_certificate(&c).is_ok() {
            self.cert = Some(c);
        }
        for j in 0..self.members.len() {
            if self.members[j].up {
                self.apply(j);
            }
        }
        Ok(())
    }

    /// What the daemon's follower does with a leader's log: find where they
    /// part, take the rest as a chain step or a segment, persist, ack.
    fn send_log(&mut self, l: usize, j: usize) -> Option<Ack> {
        let leader_log = self.members[l].log.clone();
        let m = &mut self.members[j];
        let st = m.core.replica_status()?;
        if !st.ready {
            let a = st.applied;
            let from: Vec<LogItem> = leader_log.iter().skip(a as usize).cloned().collect();
            let keep = m.core.resync(&pairs(&from), self.cert.as_ref()).ok()?;
            m.log.truncate(a as usize);
            m.log
                .extend(from.into_iter().filter(|i| i.entry.index <= keep));
        }
        let st = m.core.replica_status()?;
        let d = m
            .log
            .iter()
            .zip(leader_log.iter())
            .take_while(|(a, b)| a.mac == b.mac)
            .count() as u64;
        let seg: Vec<LogItem> = leader_log.iter().skip(d as usize).cloned().collect();
        if seg.is_empty() {
            return m.core.current_ack().ok();
        }
        let keep = if d == st.index && seg.len() == 1 {
            m.core.accept(&seg[0].entry, &seg[0].mac).ok()?;
            d
        } else {
            let own: Vec<LogItem> = m.log[d as usize..st.index as usize].to_vec();
            m.core.accept_segment(&pairs(&own), &pairs(&seg)).ok()?
        };
        m.log.truncate(keep as usize);
        m.log
            .extend(seg.into_iter().filter(|i| i.entry.index > keep));
        m.core.persisted().ok()
    }

    /// Member `j` applies what it can (by the leader's tracker or the best
    /// certificate).
    pub fn apply(&mut self, j: usize) {
        let cert = self.cert.clone();
        let m = &mut self.members[j];
        loop {
            let Some(st) = m.core.replica_status() else {
                return;
            };
            if st.in_flight || st.applied >= st.index {
                return;
            }
            let next = st.applied + 1;
            let Some(item) = m.log.get((next - 1) as usize).cloned() else {
                return;
            };
            let buckets = match Body::decode(&item.body) {
                Ok(b) => b.buckets().into_iter().map(|b| m.store.bucket(b)).collect(),
                Err(_) => return,
            };
            let Ok(t) = m
                .core
                .apply(&item.entry, &item.mac, &item.body, buckets, cert.as_ref())
            else {
                return;
            };
            m.store.apply(t.writes());
            if m.core.applied(t).is_err() {
                return;
            }
            m.applied = next;
        }
    }

    /// The leader runs a batch and replicates it; the replies come back if
    /// it committed.
    pub fn batch(&mut self, inputs: Vec<Input>) -> Result<Vec<Result<Vec<u8>, CoreError>>, String> {
        let l = self.leader.ok_or("no leader")?;
        self.apply(l);
        let (index, writes) = self.propose(inputs)?;
        self.replicate()?;
        let m = &mut self.members[l];
        if m.core.inflight_committed() != Some(index) {
            return Err("not committed: no majority acked".into());
        }
        m.store.apply(&writes);
        let replies = m.core.commit_inflight().map_err(|e| e.to_string())?;
        m.applied = index;
        Ok(replies)
    }

    /// The leader proposes a batch and keeps it to itself (its messages to
    /// the others are lost): an uncommitted entry in its log.
    pub fn propose_unsent(&mut self, inputs: Vec<Input>) -> Result<u64, String> {
        Ok(self.propose(inputs)?.0)
    }

    /// The leader proposes, writes the entry to its log, persists, counts
    /// its own ack; returns the index and the records to write on commit.
    fn propose(&mut self, inputs: Vec<Input>) -> Result<(u64, StoreWrites), String> {
        let l = self.leader.ok_or("no leader")?;
        let m = &mut self.members[l];
        let buckets = m
            .core
            .buckets_for(&inputs)
            .into_iter()
            .map(|b| m.store.bucket(b))
            .collect();
        let p = m.core.propose(inputs, buckets).map_err(|e| e.to_string())?;
        let index = p.entry.index;
        m.log.truncate((index - 1) as usize);
        m.log.push(LogItem {
            entry: p.entry,
            mac: p.mac,
            body: p.body,
        });
        let own = m.core.persisted().map_err(|e| e.to_string())?;
        m.core.on_ack(&own);
        Ok((index, p.writes))
    }
}

impl Vault for MemGroup {
    fn now_ms(&self) -> u64 {
        self.members[0].platform.now_ms()
    }
    fn one(&mut self, input: Input) -> Result<Vec<u8>, CoreError> {
        self.batch(vec![input])
            .map_err(CoreError::Refusing)?
            .pop()
            .unwrap_or(Err(CoreError::Batch("no reply")))
    }
}
