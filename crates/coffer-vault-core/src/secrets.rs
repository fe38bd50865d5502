//! The realm's secrets, all derived inside the core from one 32-byte master
//! secret (kept by key custody: a PKCS#11 token or a development key file).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use opaque_ke::ServerSetup;
use ring::{hkdf, hmac};
use zeroize::Zeroizing;

use coffer_vault_proto::channel::ChannelKey;
use coffer_vault_proto::CofferSuite;

use crate::log::{AckKey, LogKey};
use crate::CoreError;

/// HKDF labels: one per purpose, versioned.
mod label {
    pub const CHANNEL: &[u8] = b"coffer/v1/vault/channel-key";
    pub const RECORD_ID: &[u8] = b"coffer/v1/vault/record-id";
    pub const RECORD_SEAL: &[u8] = b"coffer/v1/vault/record-seal";
    pub const SETUP_SEAL: &[u8] = b"coffer/v1/vault/setup-seal";
    pub const MARKER_MAC: &[u8] = b"coffer/v1/vault/marker-mac";
    pub const LOG_MAC: &[u8] = b"coffer/v1/vault/log-mac";
    pub const ACK_MAC: &[u8] = b"coffer/v1/vault/ack-mac";
}

/// Length of the sealed OPAQUE server setup.
pub const SEALED_SETUP_LEN: usize = 24 + 128 + 16;

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn derive(master: &[u8; 32], realm_id: &[u8; 16], label: &[u8]) -> Zeroizing<[u8; 32]> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, realm_id).extract(master);
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes from HKDF-SHA256 is always within its output limit.
    if let Ok(okm) = prk.expand(&[label], Len32) {
        let _ = okm.fill(&mut out[..]);
    }
    out
}

/// The derived keys the core works with. Never leaves the core; zeroized on drop.
pub struct RealmSecrets {
    pub(crate) channel: ChannelKey,
    record_id: hmac::Key,
    record_seal: XChaCha20Poly1305,
    setup_seal: XChaCha20Poly1305,
    marker_mac: hmac::Key,
    log_key: LogKey,
    ack_key: AckKey,
}

impl std::fmt::Debug for RealmSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RealmSecrets(REDACTED)")
    }
}

impl RealmSecrets {
    /// Derives every working key from the master secret.
    pub fn derive(master: &[u8; 32], realm_id: &[u8; 16]) -> Self {
        let channel_ikm = derive(master, realm_id, label::CHANNEL);
        let rid = derive(master, realm_id, label::RECORD_ID);
        let rseal = derive(master, realm_id, label::RECORD_SEAL);
        let sseal = derive(master, realm_id, label::SETUP_SEAL);
        let mmac = derive(master, realm_id, label::MARKER_MAC);
        let log_mac = derive(master, realm_id, label::LOG_MAC);
        let ack_mac = derive(master, realm_id, label::ACK_MAC);
        Self {
            channel: ChannelKey::derive(&channel_ikm[..]),
            record_id: hmac::Key::new(hmac::HMAC_SHA256, &rid[..]),
            record_seal: XChaCha20Poly1305::new((&rseal[..]).into()),
            setup_seal: XChaCha20Poly1305::new((&sseal[..]).into()),
            marker_mac: hmac::Key::new(hmac::HMAC_SHA256, &mmac[..]),
            log_key: LogKey::from_bytes(&log_mac),
            ack_key: AckKey::from_bytes(&ack_mac),
        }
    }

    /// The replicated log's entry MAC key (ADR 0011).
    pub fn log_key(&self) -> &LogKey {
        &self.log_key
    }

    /// The replicated log's ack MAC key (ADR 0011).
    pub fn ack_key(&self) -> &AckKey {
        &self.ack_key
    }

    /// The channel public key clients pin.
    pub fn channel_public_key(&self) -> [u8; 32] {
        self.channel.public_key()
    }

    /// `HMAC(record_id_key, "coffer/v1/record-id" || len || tenant || len || user)`.
    pub fn record_id(&self, tenant: &str, user: &str) -> [u8; 32] {
        record_id_with(&self.record_id, tenant, user)
    }

    pub(crate) fn record_id_key(&self) -> hmac::Key {
        self.record_id.clone()
    }
}

pub(crate) fn record_id_with(key: &hmac::Key, tenant: &str, user: &str) -> [u8; 32] {
    {
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(b"coffer/v1/record-id");
        for part in [tenant.as_bytes(), user.as_bytes()] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

impl RealmSecrets {
    pub(crate) fn seal_record(
        &self,
        nonce: [u8; 24],
        record_id: &[u8; 32],
        plain: &[u8],
    ) -> Vec<u8> {
        let aad = record_aad(record_id);
        let mut out = nonce.to_vec();
        // XChaCha20-Poly1305 encryption cannot fail for inputs this small.
        if let Ok(ct) = self.record_seal.encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: &aad,
            },
        ) {
            out.extend_from_slice(&ct);
        }
        out
    }

    pub(crate) fn open_record(
        &self,
        record_id: &[u8; 32],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CoreError> {
        if sealed.len() < 24 + 16 {
            return Err(CoreError::Integrity("sealed record truncated".into()));
        }
        let aad = record_aad(record_id);
        self.record_seal
            .decrypt(
                XNonce::from_slice(&sealed[..24]),
                Payload {
                    msg: &sealed[24..],
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CoreError::Integrity("a sealed record failed authentication".into()))
    }

    /// Seals the OPAQUE server setup for storage next to the realm.
    pub(crate) fn seal_setup(
        &self,
        nonce: [u8; 24],
        realm_id: &[u8; 16],
        setup: &ServerSetup<CofferSuite>,
    ) -> Vec<u8> {
        let plain = Zeroizing::new(setup.serialize().to_vec());
        let mut out = nonce.to_vec();
        if let Ok(ct) = self.setup_seal.encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: &setup_aad(realm_id),
            },
        ) {
            out.extend_from_slice(&ct);
        }
        out
    }

    /// Opens the sealed server setup.
    pub(crate) fn open_setup(
        &self,
        realm_id: &[u8; 16],
        sealed: &[u8],
    ) -> Result<ServerSetup<CofferSuite>, CoreError> {
        if sealed.len() != SEALED_SETUP_LEN {
            return Err(CoreError::Setup(
                "sealed server setup has the wrong length".into(),
            ));
        }
        let plain = self
            .setup_seal
            .decrypt(
                XNonce::from_slice(&sealed[..24]),
                Payload {
                    msg: &sealed[24..],
                    aad: &setup_aad(realm_id),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| {
                CoreError::Setup(
                    "the sealed server setup does not open under this master secret (wrong key custody, or the file was altered)".into(),
                )
            })?;
        ServerSetup::<CofferSuite>::deserialize(&plain)
            .map_err(|_| CoreError::Setup("server setup does not decode".into()))
    }

    pub(crate) fn marker_mac(&self, data: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.marker_mac, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    pub(crate) fn marker_mac_ok(&self, data: &[u8], mac: &[u8]) -> bool {
        hmac::verify(&self.marker_mac, data, mac).is_ok()
    }
}

fn record_aad(record_id: &[u8; 32]) -> Vec<u8> {
    let mut aad = b"coffer/v1/record".to_vec();
    aad.extend_from_slice(record_id);
    aad
}

fn setup_aad(realm_id: &[u8; 16]) -> Vec<u8> {
    let mut aad = b"coffer/v1/opaque-server-setup".to_vec();
    aad.extend_from_slice(realm_id);
    aad
}
