//! The OPAQUE cipher suite (RFC 9807): ristretto255 OPRF, 3DH over
//! ristretto255 with SHA-512, Argon2id as the key-stretching function with
//! parameters the realm fixes and the client pins (never taken from a server).

use opaque_ke::{Ristretto255, TripleDh};

/// The one suite Coffer speaks.
pub struct CofferSuite;

impl opaque_ke::CipherSuite for CofferSuite {
    type OprfCs = Ristretto255;
    type KeyExchange = TripleDh<Ristretto255, sha2::Sha512>;
    type Ksf = argon2::Argon2<'static>;
}

/// Sizes of the OPAQUE messages of [`CofferSuite`], fixed by RFC 9807.
pub mod sizes {
    /// RegistrationRequest (blinded element).
    pub const REGISTRATION_REQUEST: usize = 32;
    /// RegistrationResponse (evaluated element, server public key).
    pub const REGISTRATION_RESPONSE: usize = 64;
    /// RegistrationUpload (client public key, masking key, envelope).
    pub const REGISTRATION_UPLOAD: usize = 192;
    /// KE1.
    pub const KE1: usize = 96;
    /// KE2.
    pub const KE2: usize = 320;
    /// KE3.
    pub const KE3: usize = 64;
}

/// The OPAQUE context string: binds every login to one realm.
pub fn opaque_context(realm_id: &[u8; 16]) -> Vec<u8> {
    let mut c = b"coffer/v1/opaque/".to_vec();
    c.extend_from_slice(realm_id);
    c
}
