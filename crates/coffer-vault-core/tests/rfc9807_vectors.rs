#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Known-answer tests: opaque-ke (as this workspace pins and configures it)
//! against the RFC 9807 Appendix C test vectors for the OPAQUE-3DH
//! ristretto255-SHA512 suite (OPRF ristretto255-SHA512, 3DH over ristretto255,
//! SHA-512 / HKDF-SHA512 / HMAC-SHA512, KSF = Identity).
//!
//! Vectors: RFC 9807 ("The OPAQUE Augmented PAKE Protocol", July 2025),
//! Appendix C:
//! - C.1.1 "OPAQUE-3DH Real Test Vector 1" (no identities),
//! - C.1.2 "OPAQUE-3DH Real Test Vector 2" (client_identity "alice",
//!   server_identity "bob"),
//! - C.2.1 "OPAQUE-3DH Fake Test Vector 1" (KE2 for an unregistered user).
//!
//! (C.1.3/C.1.4/C.2.2 use curve25519 for the AKE group and C.1.5/C.1.6/C.2.3
//! use P-256; they are not the suite we configure and are not checked here.)
//!
//! The hex strings below are transcribed line by line from the RFC text (each
//! `concat!` piece is one line of the RFC's wrapped hex) so that they can be
//! compared with the RFC by eye.
//!
//! # How the library is driven deterministically
//!
//! opaque-ke 4.0.1 has no public `*_with_randomness` entry points; every
//! random value is drawn from the caller's `RngCore + CryptoRng`. Each
//! protocol step below gets its own [`ScriptedRng`], which hands out the
//! vector's fixed values in exactly the order (and with exactly the lengths)
//! in which opaque-ke 4.0.1 draws them, and panics on any deviation. The order
//! was read from the opaque-ke 4.0.1 and voprf 0.5.0 sources:
//!
//! - `ClientRegistration::start`: OPRF blind via
//!   `curve25519_dalek::Scalar::random` = one 64-byte draw reduced mod l. We
//!   feed `blind || 0^32`, whose wide reduction is `blind` itself (the RFC
//!   blinds are canonical scalars).
//! - `ClientRegistration::finish`: `envelope_nonce` (32).
//! - `ClientLogin::start`: blind (64, as above), then
//!   `client_keyshare_seed` (32, fed to DeriveDiffieHellmanKeyPair), then
//!   `client_nonce` (32).
//! - `ServerLogin::start`: the fake record's `masking_key` (64; drawn on *every*
//!   login, used only when no password file is given), then `masking_nonce`
//!   (32), `server_keyshare_seed` (32), `server_nonce` (32).
//! - `ClientLogin::finish` and `ServerLogin::finish` draw nothing.
//!
//! `ServerSetup` is rebuilt from the vector with `ServerSetup::deserialize`,
//! whose format is `oprf_seed (64) || server_private_key (32) ||
//! fake_client_public_key (32)` (the last field is the public key put in fake
//! records for unregistered users).

use std::collections::VecDeque;

use opaque_ke::keypair::PrivateKey;
use opaque_ke::rand::{CryptoRng, RngCore};
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialFinalization, CredentialRequest,
    CredentialResponse, Identifiers, Ristretto255, ServerLogin, ServerLoginParameters,
    ServerRegistration, ServerSetup,
};

/// The RFC 9807 ristretto255-SHA512 configuration with the Identity KSF.
struct RfcSuite;

impl opaque_ke::CipherSuite for RfcSuite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = opaque_ke::ksf::Identity;
}

/// An RNG that returns a fixed script of byte strings, one per `fill_bytes`
/// call, and panics if the library asks for a different length or for more
/// randomness than scripted.
struct ScriptedRng {
    step: &'static str,
    draws: VecDeque<(&'static str, Vec<u8>)>,
}

impl ScriptedRng {
    fn new(step: &'static str, draws: Vec<(&'static str, Vec<u8>)>) -> Self {
        Self {
            step,
            draws: draws.into(),
        }
    }

    /// Every scripted value must have been consumed.
    fn assert_exhausted(&self) {
        let left: Vec<&str> = self.draws.iter().map(|(name, _)| *name).collect();
        assert!(
            left.is_empty(),
            "{}: scripted randomness not consumed: {left:?}",
            self.step
        );
    }
}

impl RngCore for ScriptedRng {
    fn next_u32(&mut self) -> u32 {
        panic!("{}: unexpected next_u32", self.step)
    }

    fn next_u64(&mut self) -> u64 {
        panic!("{}: unexpected next_u64", self.step)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let (name, bytes) = self
            .draws
            .pop_front()
            .unwrap_or_else(|| panic!("{}: unscripted draw of {} bytes", self.step, dest.len()));
        assert_eq!(
            bytes.len(),
            dest.len(),
            "{}: draw `{name}` has the wrong length",
            self.step
        );
        dest.copy_from_slice(&bytes);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), opaque_ke::rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for ScriptedRng {}

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("bad hex in vector ({e}): {s}"))
}

/// A 32-byte canonical scalar as the 64-byte draw that
/// `Scalar::from_bytes_mod_order_wide` maps back to the same scalar.
fn wide_scalar_draw(blind_hex: &str) -> Vec<u8> {
    let mut bytes = h(blind_hex);
    assert_eq!(bytes.len(), 32);
    bytes.resize(64, 0);
    bytes
}

fn server_setup(
    oprf_seed: &str,
    server_private_key: &str,
    fake_client_public_key: &[u8],
) -> ServerSetup<RfcSuite> {
    let mut bytes = h(oprf_seed);
    bytes.extend_from_slice(&h(server_private_key));
    bytes.extend_from_slice(fake_client_public_key);
    assert_eq!(bytes.len(), 128);
    ServerSetup::<RfcSuite>::deserialize(&bytes).expect("ServerSetup from vector")
}

/// Compare as lowercase hex so a failure shows both values readably.
#[track_caller]
fn assert_bytes(what: &str, actual: &[u8], expected_hex: &str) {
    assert_eq!(
        hex::encode(actual),
        expected_hex,
        "{what} does not match RFC 9807"
    );
}

fn opt_hex(s: Option<&str>) -> Option<Vec<u8>> {
    s.map(h)
}

struct RealVector {
    name: &'static str,
    context: &'static str,
    client_identity: Option<&'static str>,
    server_identity: Option<&'static str>,
    // Input values
    oprf_seed: &'static str,
    credential_identifier: &'static str,
    password: &'static str,
    envelope_nonce: &'static str,
    masking_nonce: &'static str,
    server_private_key: &'static str,
    server_public_key: &'static str,
    server_nonce: &'static str,
    client_nonce: &'static str,
    client_keyshare_seed: &'static str,
    server_keyshare_seed: &'static str,
    blind_registration: &'static str,
    blind_login: &'static str,
    // Intermediate value (also the first 32 bytes of registration_upload)
    client_public_key: &'static str,
    // Output values
    registration_request: &'static str,
    registration_response: &'static str,
    registration_upload: &'static str,
    ke1: &'static str,
    ke2: &'static str,
    ke3: &'static str,
    export_key: &'static str,
    session_key: &'static str,
}

/// RFC 9807, Appendix C.1.1: OPAQUE-3DH Real Test Vector 1.
const REAL_VECTOR_1: RealVector = RealVector {
    name: "RFC 9807 C.1.1 (Real Test Vector 1)",
    context: "4f50415155452d504f43",
    client_identity: None,
    server_identity: None,
    oprf_seed: concat!(
        "f433d0227b0b9dd54f7c4422b600e764e47fb503f1f9a0f0a47c6606b0",
        "54a7fdc65347f1a08f277e22358bbabe26f823fca82c7848e9a75661f4ec5d5c1989e",
        "f",
    ),
    credential_identifier: "31323334",
    password: "436f7272656374486f72736542617474657279537461706c65",
    envelope_nonce: concat!(
        "ac13171b2f17bc2c74997f0fce1e1f35bec6b91fe2e12dbd323d2",
        "3ba7a38dfec",
    ),
    masking_nonce: concat!(
        "38fe59af0df2c79f57b8780278f5ae47355fe1f817119041951c80",
        "f612fdfc6d",
    ),
    server_private_key: concat!(
        "47451a85372f8b3537e249d7b54188091fb18edde78094b43",
        "e2ba42b5eb89f0d",
    ),
    server_public_key: concat!(
        "b2fe7af9f48cc502d016729d2fe25cdd433f2c4bc904660b2a",
        "382c9b79df1a78",
    ),
    server_nonce: concat!(
        "71cd9960ecef2fe0d0f7494986fa3d8b2bb01963537e60efb13981e",
        "138e3d4a1",
    ),
    client_nonce: concat!(
        "da7e07376d6d6f034cfa9bb537d11b8c6b4238c334333d1f0aebb38",
        "0cae6a6cc",
    ),
    client_keyshare_seed: concat!(
        "82850a697b42a505f5b68fcdafce8c31f0af2b581f063cf",
        "1091933541936304b",
    ),
    server_keyshare_seed: concat!(
        "05a4f54206eef1ba2f615bc0aa285cb22f26d1153b5b40a",
        "1e85ff80da12f982f",
    ),
    blind_registration: concat!(
        "76cfbfe758db884bebb33582331ba9f159720ca8784a2a070",
        "a265d9c2d6abe01",
    ),
    blind_login: concat!(
        "6ecc102d2e7a7cf49617aad7bbe188556792d4acd60a1a8a8d2b65d4",
        "b0790308",
    ),
    client_public_key: concat!(
        "76a845464c68a5d2f7e442436bb1424953b17d3e2e289ccbac",
        "cafb57ac5c3675",
    ),
    registration_request: concat!(
        "5059ff249eb1551b7ce4991f3336205bde44a105a032e74",
        "7d21bf382e75f7a71",
    ),
    registration_response: concat!(
        "7408a268083e03abc7097fc05b587834539065e86fb0c7",
        "b6342fcf5e01e5b019b2fe7af9f48cc502d016729d2fe25cdd433f2c4bc904660b2a3",
        "82c9b79df1a78",
    ),
    registration_upload: concat!(
        "76a845464c68a5d2f7e442436bb1424953b17d3e2e289ccb",
        "accafb57ac5c36751ac5844383c7708077dea41cbefe2fa15724f449e535dd7dd562e",
        "66f5ecfb95864eadddec9db5874959905117dad40a4524111849799281fefe3c51fa8",
        "2785c5ac13171b2f17bc2c74997f0fce1e1f35bec6b91fe2e12dbd323d23ba7a38dfe",
        "c634b0f5b96109c198a8027da51854c35bee90d1e1c781806d07d49b76de6a28b8d9e",
        "9b6c93b9f8b64d16dddd9c5bfb5fea48ee8fd2f75012a8b308605cdd8ba5",
    ),
    ke1: concat!(
        "c4dedb0ba6ed5d965d6f250fbe554cd45cba5dfcce3ce836e4aee778aa3cd44d",
        "da7e07376d6d6f034cfa9bb537d11b8c6b4238c334333d1f0aebb380cae6a6cc6e29b",
        "ee50701498605b2c085d7b241ca15ba5c32027dd21ba420b94ce60da326",
    ),
    ke2: concat!(
        "7e308140890bcde30cbcea28b01ea1ecfbd077cff62c4def8efa075aabcbb471",
        "38fe59af0df2c79f57b8780278f5ae47355fe1f817119041951c80f612fdfc6dd6ec6",
        "0bcdb26dc455ddf3e718f1020490c192d70dfc7e403981179d8073d1146a4f9aa1ced",
        "4e4cd984c657eb3b54ced3848326f70331953d91b02535af44d9fedc80188ca46743c",
        "52786e0382f95ad85c08f6afcd1ccfbff95e2bdeb015b166c6b20b92f832cc6df01e0",
        "b86a7efd92c1c804ff865781fa93f2f20b446c8371b671cd9960ecef2fe0d0f749498",
        "6fa3d8b2bb01963537e60efb13981e138e3d4a1c4f62198a9d6fa9170c42c3c71f197",
        "1b29eb1d5d0bd733e40816c91f7912cc4a660c48dae03e57aaa38f3d0cffcfc21852e",
        "bc8b405d15bd6744945ba1a93438a162b6111699d98a16bb55b7bdddfe0fc5608b23d",
        "a246e7bd73b47369169c5c90",
    ),
    ke3: concat!(
        "4455df4f810ac31a6748835888564b536e6da5d9944dfea9e34defb9575fe5e2",
        "661ef61d2ae3929bcf57e53d464113d364365eb7d1a57b629707ca48da18e442",
    ),
    export_key: concat!(
        "1ef15b4fa99e8a852412450ab78713aad30d21fa6966c9b8c9fb3262a",
        "970dc62950d4dd4ed62598229b1b72794fc0335199d9f7fcc6eaedde92cc04870e63f",
        "16",
    ),
    session_key: concat!(
        "42afde6f5aca0cfa5c163763fbad55e73a41db6b41bc87b8e7b62214",
        "a8eedc6731fa3cb857d657ab9b3764b89a84e91ebcb4785166fbb02cedfcbdfda215b",
        "96f",
    ),
};

/// RFC 9807, Appendix C.1.2: OPAQUE-3DH Real Test Vector 2.
const REAL_VECTOR_2: RealVector = RealVector {
    name: "RFC 9807 C.1.2 (Real Test Vector 2)",
    context: "4f50415155452d504f43",
    client_identity: Some("616c696365"),
    server_identity: Some("626f62"),
    oprf_seed: concat!(
        "f433d0227b0b9dd54f7c4422b600e764e47fb503f1f9a0f0a47c6606b0",
        "54a7fdc65347f1a08f277e22358bbabe26f823fca82c7848e9a75661f4ec5d5c1989e",
        "f",
    ),
    credential_identifier: "31323334",
    password: "436f7272656374486f72736542617474657279537461706c65",
    envelope_nonce: concat!(
        "ac13171b2f17bc2c74997f0fce1e1f35bec6b91fe2e12dbd323d2",
        "3ba7a38dfec",
    ),
    masking_nonce: concat!(
        "38fe59af0df2c79f57b8780278f5ae47355fe1f817119041951c80",
        "f612fdfc6d",
    ),
    server_private_key: concat!(
        "47451a85372f8b3537e249d7b54188091fb18edde78094b43",
        "e2ba42b5eb89f0d",
    ),
    server_public_key: concat!(
        "b2fe7af9f48cc502d016729d2fe25cdd433f2c4bc904660b2a",
        "382c9b79df1a78",
    ),
    server_nonce: concat!(
        "71cd9960ecef2fe0d0f7494986fa3d8b2bb01963537e60efb13981e",
        "138e3d4a1",
    ),
    client_nonce: concat!(
        "da7e07376d6d6f034cfa9bb537d11b8c6b4238c334333d1f0aebb38",
        "0cae6a6cc",
    ),
    client_keyshare_seed: concat!(
        "82850a697b42a505f5b68fcdafce8c31f0af2b581f063cf",
        "1091933541936304b",
    ),
    server_keyshare_seed: concat!(
        "05a4f54206eef1ba2f615bc0aa285cb22f26d1153b5b40a",
        "1e85ff80da12f982f",
    ),
    blind_registration: concat!(
        "76cfbfe758db884bebb33582331ba9f159720ca8784a2a070",
        "a265d9c2d6abe01",
    ),
    blind_login: concat!(
        "6ecc102d2e7a7cf49617aad7bbe188556792d4acd60a1a8a8d2b65d4",
        "b0790308",
    ),
    client_public_key: concat!(
        "76a845464c68a5d2f7e442436bb1424953b17d3e2e289ccbac",
        "cafb57ac5c3675",
    ),
    registration_request: concat!(
        "5059ff249eb1551b7ce4991f3336205bde44a105a032e74",
        "7d21bf382e75f7a71",
    ),
    registration_response: concat!(
        "7408a268083e03abc7097fc05b587834539065e86fb0c7",
        "b6342fcf5e01e5b019b2fe7af9f48cc502d016729d2fe25cdd433f2c4bc904660b2a3",
        "82c9b79df1a78",
    ),
    registration_upload: concat!(
        "76a845464c68a5d2f7e442436bb1424953b17d3e2e289ccb",
        "accafb57ac5c36751ac5844383c7708077dea41cbefe2fa15724f449e535dd7dd562e",
        "66f5ecfb95864eadddec9db5874959905117dad40a4524111849799281fefe3c51fa8",
        "2785c5ac13171b2f17bc2c74997f0fce1e1f35bec6b91fe2e12dbd323d23ba7a38dfe",
        "c1ac902dc5589e9a5f0de56ad685ea8486210ef41449cd4d8712828913c5d2b680b2b",
        "3af4a26c765cff329bfb66d38ecf1d6cfa9e7a73c222c6efe0d9520f7d7c",
    ),
    ke1: concat!(
        "c4dedb0ba6ed5d965d6f250fbe554cd45cba5dfcce3ce836e4aee778aa3cd44d",
        "da7e07376d6d6f034cfa9bb537d11b8c6b4238c334333d1f0aebb380cae6a6cc6e29b",
        "ee50701498605b2c085d7b241ca15ba5c32027dd21ba420b94ce60da326",
    ),
    ke2: concat!(
        "7e308140890bcde30cbcea28b01ea1ecfbd077cff62c4def8efa075aabcbb471",
        "38fe59af0df2c79f57b8780278f5ae47355fe1f817119041951c80f612fdfc6dd6ec6",
        "0bcdb26dc455ddf3e718f1020490c192d70dfc7e403981179d8073d1146a4f9aa1ced",
        "4e4cd984c657eb3b54ced3848326f70331953d91b02535af44d9fea502150b67fe367",
        "95dd8914f164e49f81c7688a38928372134b7dccd50e09f8fed9518b7b2f94835b3c4",
        "fe4c8475e7513f20eb97ff0568a39caee3fd6251876f71cd9960ecef2fe0d0f749498",
        "6fa3d8b2bb01963537e60efb13981e138e3d4a1c4f62198a9d6fa9170c42c3c71f197",
        "1b29eb1d5d0bd733e40816c91f7912cc4a292371e7809a9031743e943fb3b56f51de9",
        "03552fc91fba4e7419029951c3970b2e2f0a9dea218d22e9e4e0000855bb6421aa361",
        "0d6fc0f4033a6517030d4341",
    ),
    ke3: concat!(
        "7a026de1d6126905736c3f6d92463a08d209833eb793e46d0f7f15b3e0f62c76",
        "43763c02bbc6b8d3d15b63250cae98171e9260f1ffa789750f534ac11a0176d5",
    ),
    export_key: concat!(
        "1ef15b4fa99e8a852412450ab78713aad30d21fa6966c9b8c9fb3262a",
        "970dc62950d4dd4ed62598229b1b72794fc0335199d9f7fcc6eaedde92cc04870e63f",
        "16",
    ),
    session_key: concat!(
        "ae7951123ab5befc27e62e63f52cf472d6236cb386c968cc47b7e34f",
        "866aa4bc7638356a73cfce92becf39d6a7d32a1861f12130e824241fe6cab34fbd471",
        "a57",
    ),
};

/// RFC 9807, Appendix C.2.1: OPAQUE-3DH Fake Test Vector 1 (ristretto255).
mod fake_vector_1 {
    pub const CONTEXT: &str = "4f50415155452d504f43";
    pub const CLIENT_IDENTITY: &str = "616c696365";
    pub const SERVER_IDENTITY: &str = "626f62";
    pub const OPRF_SEED: &str = concat!(
        "743fc168d1f826ad43738933e5adb23da6fb95f95a1b069f0daa0522d0",
        "a78b617f701fc6aa46d3e7981e70de7765dfcd6b1e13e3369a582eb8dc456b10aa53b",
        "0",
    );
    pub const CREDENTIAL_IDENTIFIER: &str = "31323334";
    pub const MASKING_NONCE: &str = concat!(
        "9c035896a043e70f897d87180c543e7a063b83c1bb728fbd189c61",
        "9e27b6e5a6",
    );
    pub const CLIENT_PRIVATE_KEY: &str = concat!(
        "2b98980aa95ab53a0f39f0291903d2fdf04b00c167f081416",
        "9922df873002409",
    );
    pub const CLIENT_PUBLIC_KEY: &str = concat!(
        "84f43f9492e19c22d8bdaa4447cc3d4db1cdb5427a9f852c47",
        "07921212c36251",
    );
    pub const SERVER_PRIVATE_KEY: &str = concat!(
        "c788585ae8b5ba2942b693b849be0c0426384e41977c18d2e",
        "81fbe30fd7c9f06",
    );
    pub const SERVER_PUBLIC_KEY: &str = concat!(
        "825f832667480f08b0c9069da5083ac4d0e9ee31b49c4e0310",
        "031fea04d52966",
    );
    pub const SERVER_NONCE: &str = concat!(
        "1e10f6eeab2a7a420bf09da9b27a4639645622c46358de9cf7ae813",
        "055ae2d12",
    );
    // client_keyshare_seed (a270dc71...) is only needed to build KE1, which
    // the vector gives directly; it is not used here.
    pub const SERVER_KEYSHARE_SEED: &str = concat!(
        "360b0937f47d45f6123a4d8f0d0c0814b6120d840ebb8bc",
        "5b4f6b62df07f78c2",
    );
    pub const MASKING_KEY: &str = concat!(
        "39ebd51f0e39a07a1c2d2431995b0399bca9996c5d10014d6ebab445",
        "3dc10ce5cef38ed3df6e56bfff40c2d8dd4671c2b4cf63c3d54860f31fe40220d690b",
        "b71",
    );
    pub const KE1: &str = concat!(
        "b0a26dcaca2230b8f5e4b1bcab9c84b586140221bb8b2848486874b0be448905",
        "42d4e61ed3f8d64cdd3b9d153343eca15b9b0d5e388232793c6376bd2d9cfd0ab641d",
        "7f20a245a09f1d4dbb6e301661af7f352beb0791d055e48d3645232f77f",
    );
    // Output value
    pub const KE2: &str = concat!(
        "928f79ad8df21963e91411b9f55165ba833dea918f441db967cdc09521d22925",
        "9c035896a043e70f897d87180c543e7a063b83c1bb728fbd189c619e27b6e5a632b5a",
        "b1bff96636144faa4f9f9afaac75dd88ea99cf5175902ae3f3b2195693f165f11929b",
        "a510a5978e64dcdabecbd7ee1e4380ce270e58fea58e6462d92964a1aaef72698bca1",
        "c673baeb04cc2bf7de5f3c2f5553464552d3a0f7698a9ca7f9c5e70c6cb1f706b2f17",
        "5ab9d04bbd13926e816b6811a50b4aafa9799d5ed7971e10f6eeab2a7a420bf09da9b",
        "27a4639645622c46358de9cf7ae813055ae2d1298251c5ba55f6b0b2d58d9ff0c88fe",
        "4176484be62a96db6e2a8c4d431bd1bf27fe6c1d0537603835217d42ebf7b25819827",
        "32e74892fd28211b31ed33863f0beaf75ba6f59474c0aaf9d78a60a9b2f4cd24d7ab5",
        "4131b3c8efa192df6b72db4c",
    );
}

/// Runs registration and login for one real vector, each side fed the RFC's
/// bytes for the message it receives, and checks every output byte-exactly.
fn check_real_vector(v: &RealVector) {
    let password = h(v.password);
    let credential_identifier = h(v.credential_identifier);
    let context = h(v.context);
    let client_identity = opt_hex(v.client_identity);
    let server_identity = opt_hex(v.server_identity);
    let identifiers = Identifiers {
        client: client_identity.as_deref(),
        server: server_identity.as_deref(),
    };

    // The fake-record public key is irrelevant for a registered user; any
    // valid point will do, so reuse the server public key.
    let setup = server_setup(v.oprf_seed, v.server_private_key, &h(v.server_public_key));
    assert_bytes(
        &format!("{}: server_public_key", v.name),
        &setup.keypair().public().serialize(),
        v.server_public_key,
    );

    // --- Registration -----------------------------------------------------
    let mut rng = ScriptedRng::new(
        "ClientRegistration::start",
        vec![("blind_registration", wide_scalar_draw(v.blind_registration))],
    );
    let client_reg_start = ClientRegistration::<RfcSuite>::start(&mut rng, &password)
        .expect("ClientRegistration::start");
    rng.assert_exhausted();
    assert_bytes(
        &format!("{}: registration_request", v.name),
        &client_reg_start.message.serialize(),
        v.registration_request,
    );

    let registration_request =
        opaque_ke::RegistrationRequest::<RfcSuite>::deserialize(&h(v.registration_request))
            .expect("RegistrationRequest from vector");
    let server_reg_start =
        ServerRegistration::<RfcSuite>::start(&setup, registration_request, &credential_identifier)
            .expect("ServerRegistration::start");
    assert_bytes(
        &format!("{}: registration_response", v.name),
        &server_reg_start.message.serialize(),
        v.registration_response,
    );

    let registration_response =
        opaque_ke::RegistrationResponse::<RfcSuite>::deserialize(&h(v.registration_response))
            .expect("RegistrationResponse from vector");
    let mut rng = ScriptedRng::new(
        "ClientRegistration::finish",
        vec![("envelope_nonce", h(v.envelope_nonce))],
    );
    let client_reg_finish = client_reg_start
        .state
        .finish(
            &mut rng,
            &password,
            registration_response,
            ClientRegistrationFinishParameters::new(identifiers, None),
        )
        .expect("ClientRegistration::finish");
    rng.assert_exhausted();
    let upload = client_reg_finish.message.serialize();
    assert_bytes(
        &format!("{}: registration_upload", v.name),
        &upload,
        v.registration_upload,
    );
    assert_bytes(
        &format!("{}: client_public_key (registration_upload prefix)", v.name),
        &upload[..32],
        v.client_public_key,
    );
    assert_bytes(
        &format!("{}: export_key (registration)", v.name),
        &client_reg_finish.export_key,
        v.export_key,
    );

    let password_file = ServerRegistration::<RfcSuite>::finish(
        opaque_ke::RegistrationUpload::deserialize(&h(v.registration_upload))
            .expect("RegistrationUpload from vector"),
    );
    assert_bytes(
        &format!("{}: stored record", v.name),
        &password_file.serialize(),
        v.registration_upload,
    );

    // --- Login --------------------------------------------------------------
    let mut rng = ScriptedRng::new(
        "ClientLogin::start",
        vec![
            ("blind_login", wide_scalar_draw(v.blind_login)),
            ("client_keyshare_seed", h(v.client_keyshare_seed)),
            ("client_nonce", h(v.client_nonce)),
        ],
    );
    let client_login_start =
        ClientLogin::<RfcSuite>::start(&mut rng, &password).expect("ClientLogin::start");
    rng.assert_exhausted();
    assert_bytes(
        &format!("{}: KE1", v.name),
        &client_login_start.message.serialize(),
        v.ke1,
    );

    let ke1 = CredentialRequest::<RfcSuite>::deserialize(&h(v.ke1)).expect("KE1 from vector");
    let mut rng = ScriptedRng::new(
        "ServerLogin::start",
        vec![
            // Drawn unconditionally for the fake record; unused here.
            ("unused fake-record masking_key", vec![0xa5; 64]),
            ("masking_nonce", h(v.masking_nonce)),
            ("server_keyshare_seed", h(v.server_keyshare_seed)),
            ("server_nonce", h(v.server_nonce)),
        ],
    );
    let server_login_start = ServerLogin::start(
        &mut rng,
        &setup,
        Some(password_file),
        ke1,
        &credential_identifier,
        ServerLoginParameters {
            context: Some(&context),
            identifiers,
        },
    )
    .expect("ServerLogin::start");
    rng.assert_exhausted();
    assert_bytes(
        &format!("{}: KE2", v.name),
        &server_login_start.message.serialize(),
        v.ke2,
    );

    let ke2 = CredentialResponse::<RfcSuite>::deserialize(&h(v.ke2)).expect("KE2 from vector");
    let mut rng = ScriptedRng::new("ClientLogin::finish", vec![]);
    let client_login_finish = client_login_start
        .state
        .finish(
            &mut rng,
            &password,
            ke2,
            ClientLoginFinishParameters::new(Some(&context), identifiers, None),
        )
        .expect("ClientLogin::finish");
    rng.assert_exhausted();
    assert_bytes(
        &format!("{}: KE3", v.name),
        &client_login_finish.message.serialize(),
        v.ke3,
    );
    assert_bytes(
        &format!("{}: export_key (login)", v.name),
        &client_login_finish.export_key,
        v.export_key,
    );
    assert_bytes(
        &format!("{}: session_key (client)", v.name),
        &client_login_finish.session_key,
        v.session_key,
    );
    assert_bytes(
        &format!("{}: server_public_key (unmasked by client)", v.name),
        &client_login_finish.server_s_pk.serialize(),
        v.server_public_key,
    );

    let ke3 = CredentialFinalization::<RfcSuite>::deserialize(&h(v.ke3)).expect("KE3 from vector");
    let server_login_finish = server_login_start
        .state
        .finish(
            ke3,
            ServerLoginParameters {
                context: Some(&context),
                identifiers,
            },
        )
        .expect("ServerLogin::finish");
    assert_bytes(
        &format!("{}: session_key (server)", v.name),
        &server_login_finish.session_key,
        v.session_key,
    );
}

#[test]
fn rfc9807_c_1_1_real_vector_1_ristretto255() {
    check_real_vector(&REAL_VECTOR_1);
}

#[test]
fn rfc9807_c_1_2_real_vector_2_ristretto255_with_identities() {
    check_real_vector(&REAL_VECTOR_2);
}

/// The server's KE2 for an unregistered credential identifier. opaque-ke
/// builds the fake record from `ServerSetup`'s fake client public key, an
/// all-zero envelope and a `masking_key` drawn from the RNG, which is exactly
/// what RFC 9807 feeds into its fake vectors, so KE2 is reproducible.
#[test]
fn rfc9807_c_2_1_fake_vector_1_ristretto255() {
    use fake_vector_1 as v;

    // Consistency of the vector's own key pairs.
    let client_sk =
        PrivateKey::<Ristretto255>::deserialize(&h(v::CLIENT_PRIVATE_KEY)).expect("client sk");
    assert_bytes(
        "C.2.1: client_public_key",
        &client_sk.public_key().serialize(),
        v::CLIENT_PUBLIC_KEY,
    );

    let setup = server_setup(
        v::OPRF_SEED,
        v::SERVER_PRIVATE_KEY,
        &h(v::CLIENT_PUBLIC_KEY),
    );
    assert_bytes(
        "C.2.1: server_public_key",
        &setup.keypair().public().serialize(),
        v::SERVER_PUBLIC_KEY,
    );

    let context = h(v::CONTEXT);
    let client_identity = h(v::CLIENT_IDENTITY);
    let server_identity = h(v::SERVER_IDENTITY);
    let identifiers = Identifiers {
        client: Some(&client_identity),
        server: Some(&server_identity),
    };

    let ke1 = CredentialRequest::<RfcSuite>::deserialize(&h(v::KE1)).expect("KE1 from vector");
    assert_bytes("C.2.1: KE1 round trip", &ke1.serialize(), v::KE1);

    let mut rng = ScriptedRng::new(
        "ServerLogin::start (unregistered)",
        vec![
            ("masking_key", h(v::MASKING_KEY)),
            ("masking_nonce", h(v::MASKING_NONCE)),
            ("server_keyshare_seed", h(v::SERVER_KEYSHARE_SEED)),
            ("server_nonce", h(v::SERVER_NONCE)),
        ],
    );
    let server_login_start = ServerLogin::start(
        &mut rng,
        &setup,
        None,
        ke1,
        &h(v::CREDENTIAL_IDENTIFIER),
        ServerLoginParameters {
            context: Some(&context),
            identifiers,
        },
    )
    .expect("ServerLogin::start for an unregistered user");
    rng.assert_exhausted();
    assert_bytes(
        "C.2.1: KE2",
        &server_login_start.message.serialize(),
        v::KE2,
    );
}
