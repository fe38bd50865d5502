//! The client's side of the messages: OPAQUE registration and login as a
//! sans-io state machine, and the wrapping of `K` under the export key.
//!
//! `wrapped = nonce[12] || AES-256-GCM(HKDF-SHA256(export_key, salt = realm_id,
//! info = "coffer/v1/vault-wrap"), nonce, K, aad = "coffer/v1/vault-wrap" || realm_id)`.

use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, Identifiers, RegistrationResponse,
};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;
use zeroize::{Zeroize, Zeroizing};

use crate::messages::{Request, Response};
use crate::realm::RealmDescriptor;
use crate::suite::opaque_context;
use crate::{CofferSuite, ErrorCode};

/// Length of a wrapped 32-byte key.
pub const WRAPPED_LEN: usize = 12 + 32 + 16;

/// What went wrong on the client side of a flow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// The vault answered with a refusal.
    #[error("{}", .code.describe())]
    Refused {
        /// Why.
        code: ErrorCode,
        /// For a wrong password: attempts left (0: the key is erased).
        attempts_remaining: Option<u8>,
        /// The vault's clock.
        server_time_ms: u64,
    },
    /// The password is wrong (OPAQUE's KE2 did not verify on the client);
    /// the final answer comes from the vault.
    #[error("wrong password")]
    WrongPasswordLocal,
    /// The vault answered something the flow did not expect.
    #[error("unexpected answer from the vault: {0}")]
    Unexpected(String),
    /// The released key does not unwrap.
    #[error("the key released by the vault does not unwrap (corrupted registration)")]
    Unwrap,
    /// Bad realm parameters.
    #[error(transparent)]
    Realm(#[from] crate::RealmError),
}

fn unexpected(resp: &Response) -> FlowError {
    match resp {
        Response::Error {
            code,
            attempts_remaining,
            server_time_ms,
        } => FlowError::Refused {
            code: *code,
            attempts_remaining: *attempts_remaining,
            server_time_ms: *server_time_ms,
        },
        other => FlowError::Unexpected(format!("{other:?}")),
    }
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn wrap_key(export_key: &[u8], realm_id: &[u8; 16]) -> Result<LessSafeKey, FlowError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, realm_id).extract(export_key);
    let mut k = Zeroizing::new([0u8; 32]);
    prk.expand(&[b"coffer/v1/vault-wrap"], Len32)
        .and_then(|okm| okm.fill(&mut k[..]))
        .map_err(|_| FlowError::Unwrap)?;
    let key = UnboundKey::new(&AES_256_GCM, &k[..]).map_err(|_| FlowError::Unwrap)?;
    Ok(LessSafeKey::new(key))
}

fn aad(realm_id: &[u8; 16]) -> Vec<u8> {
    let mut a = b"coffer/v1/vault-wrap".to_vec();
    a.extend_from_slice(realm_id);
    a
}

/// Wraps `K` under the export key.
pub fn wrap(
    export_key: &[u8],
    realm_id: &[u8; 16],
    k: &[u8; 32],
    nonce: [u8; 12],
) -> Result<Vec<u8>, FlowError> {
    let key = wrap_key(export_key, realm_id)?;
    let mut buf = k.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad(realm_id)),
        &mut buf,
    )
    .map_err(|_| FlowError::Unwrap)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Unwraps `K`.
pub fn unwrap(
    export_key: &[u8],
    realm_id: &[u8; 16],
    wrapped: &[u8],
) -> Result<Zeroizing<[u8; 32]>, FlowError> {
    if wrapped.len() != WRAPPED_LEN {
        return Err(FlowError::Unwrap);
    }
    let key = wrap_key(export_key, realm_id)?;
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&wrapped[..12]);
    let mut buf = Zeroizing::new(wrapped[12..].to_vec());
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(realm_id)),
            &mut buf,
        )
        .map_err(|_| FlowError::Unwrap)?;
    let mut k = Zeroizing::new([0u8; 32]);
    if plain.len() != 32 {
        return Err(FlowError::Unwrap);
    }
    k.copy_from_slice(plain);
    Ok(k)
}

/// A registration in progress.
pub struct Registration {
    state: ClientRegistration<CofferSuite>,
}

impl Registration {
    /// First message.
    pub fn start<R: rand_core::RngCore + rand_core::CryptoRng>(
        rng: &mut R,
        password: &[u8],
        max_attempts: u8,
        replace: bool,
    ) -> Result<(Self, Request), FlowError> {
        let start = ClientRegistration::<CofferSuite>::start(rng, password)
            .map_err(|e| FlowError::Unexpected(format!("OPAQUE registration start: {e:?}")))?;
        let mut request = [0u8; 32];
        request.copy_from_slice(&start.message.serialize());
        Ok((
            Self { state: start.state },
            Request::RegisterStart {
                replace,
                max_attempts,
                request,
            },
        ))
    }

    /// Second message: the upload with `K` wrapped under the export key.
    /// Runs Argon2id with the realm's pinned parameters.
    pub fn finish<R: rand_core::RngCore + rand_core::CryptoRng>(
        self,
        rng: &mut R,
        realm: &RealmDescriptor,
        password: &[u8],
        response: &Response,
        k: &[u8; 32],
    ) -> Result<Request, FlowError> {
        let Response::RegisterStarted { response: bytes } = response else {
            return Err(unexpected(response));
        };
        let msg = RegistrationResponse::<CofferSuite>::deserialize(bytes)
            .map_err(|_| FlowError::Unexpected("RegistrationResponse does not decode".into()))?;
        let ksf = realm.ksf.argon2()?;
        let mut finish = self
            .state
            .finish(
                rng,
                password,
                msg,
                ClientRegistrationFinishParameters::new(Identifiers::default(), Some(&ksf)),
            )
            .map_err(|e| FlowError::Unexpected(format!("OPAQUE registration finish: {e:?}")))?;
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let wrapped_key = wrap(&finish.export_key, &realm.realm_id, k, nonce);
        // opaque-ke 4.0.1's result does not zeroize on drop, and the export
        // key unwraps K: wipe it now, whether wrapping worked or not.
        finish.export_key.as_mut_slice().zeroize();
        let wrapped_key = wrapped_key?;
        let mut upload = Box::new([0u8; 192]);
        upload.copy_from_slice(&finish.message.serialize());
        Ok(Request::RegisterFinish {
            upload,
            wrapped_key,
        })
    }
}

/// A login in progress.
pub struct Login {
    state: Option<ClientLogin<CofferSuite>>,
    export_key: Option<Zeroizing<Vec<u8>>>,
}

impl Login {
    /// KE1.
    pub fn start<R: rand_core::RngCore + rand_core::CryptoRng>(
        rng: &mut R,
        password: &[u8],
    ) -> Result<(Self, Request), FlowError> {
        let start = ClientLogin::<CofferSuite>::start(rng, password)
            .map_err(|e| FlowError::Unexpected(format!("OPAQUE login start: {e:?}")))?;
        let mut ke1 = Box::new([0u8; 96]);
        ke1.copy_from_slice(&start.message.serialize());
        Ok((
            Self {
                state: Some(start.state),
                export_key: None,
            },
            Request::LoginStart { ke1 },
        ))
    }

    /// KE3 from KE2 (runs Argon2id). With a wrong password the client cannot
    /// build a valid KE3; it sends a random one so the vault records the
    /// failure and answers with the attempts left (returned as `Ok` with
    /// `wrong_password = true`).
    pub fn finish<R: rand_core::RngCore + rand_core::CryptoRng>(
        &mut self,
        rng: &mut R,
        realm: &RealmDescriptor,
        password: &[u8],
        response: &Response,
    ) -> Result<(Request, bool), FlowError> {
        let Response::LoginStarted { ke2, .. } = response else {
            return Err(unexpected(response));
        };
        let msg = CredentialResponse::<CofferSuite>::deserialize(&ke2[..])
            .map_err(|_| FlowError::Unexpected("KE2 does not decode".into()))?;
        let ksf = realm.ksf.argon2()?;
        let context = opaque_context(&realm.realm_id);
        let state = self
            .state
            .take()
            .ok_or_else(|| FlowError::Unexpected("login finished twice".into()))?;
        match state.finish(
            rng,
            password,
            msg,
            ClientLoginFinishParameters::new(Some(&context), Identifiers::default(), Some(&ksf)),
        ) {
            Ok(mut fin) => {
                self.export_key = Some(Zeroizing::new(fin.export_key.to_vec()));
                // opaque-ke 4.0.1's result does not zeroize on drop: wipe the
                // export key (kept above, in a Zeroizing copy) and the session
                // key (unused: the channel has its own keys) right away.
                fin.export_key.as_mut_slice().zeroize();
                fin.session_key.as_mut_slice().zeroize();
                let mut ke3 = Box::new([0u8; 64]);
                ke3.copy_from_slice(&fin.message.serialize());
                Ok((Request::LoginFinish { ke3 }, false))
            }
            Err(_) => {
                let mut ke3 = Box::new([0u8; 64]);
                rng.fill_bytes(&mut ke3[..]);
                Ok((Request::LoginFinish { ke3 }, true))
            }
        }
    }

    /// `K` from the vault's final answer.
    pub fn key(
        &self,
        realm: &RealmDescriptor,
        response: &Response,
    ) -> Result<Zeroizing<[u8; 32]>, FlowError> {
        match (response, &self.export_key) {
            (Response::LoginOk { wrapped_key, .. }, Some(export)) => {
                unwrap(export, &realm.realm_id, wrapped_key)
            }
            (Response::LoginOk { .. }, None) => Err(FlowError::Unexpected(
                "the vault released a key although the password did not verify".into(),
            )),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// The export key after a successful `finish` (for password changes).
    pub fn export_key(&self) -> Option<&[u8]> {
        self.export_key.as_deref().map(|v| v.as_slice())
    }
}

/// Turns a response into a refusal error if it is one.
pub fn refusal(resp: &Response) -> Option<FlowError> {
    matches!(resp, Response::Error { .. }).then(|| unexpected(resp))
}
