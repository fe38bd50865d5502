//! RFC 9180 DHKEM(X25519, HKDF-SHA256) for the channel's receiving end, with
//! the recipient's public key kept next to its private key.
//!
//! hpke 0.13's stock [`hpke::kem::X25519HkdfSha256`] recomputes `pk(skR)` (a
//! fixed-base scalar multiplication) in every `Decap` only to build the KEM
//! context `enc || pkRm`. The realm's channel key never changes, so
//! [`X25519HkdfSha256Cached`] derives the public key once, when the private
//! key is made, and `Decap` is the rest of RFC 9180 §4.1 unchanged:
//!
//! ```text
//! Decap(enc, skR):
//!   dh = DH(skR, enc)                         -- x25519-dalek; all-zero → error
//!   kem_context = enc || pkRm                 -- pkRm cached in the private key
//!   shared_secret = ExtractAndExpand(dh, kem_context)
//!                                             -- hpke's own LabeledExtract("eae_prk") /
//!                                                LabeledExpand("shared_secret"),
//!                                                suite_id = "KEM" || I2OSP(0x0020, 2)
//! ```
//!
//! Same `KEM_ID` (0x0020), same bytes as the stock KEM: the key schedule,
//! frames and keys on the wire are unchanged (tested against RFC 9180
//! Appendix A.2 and against the stock KEM). `Encap` and `DeriveKeyPair`
//! delegate to the stock KEM. Only the modes without a sender key (Base, PSK)
//! are supported: Auth modes fail with `EncapError`/`DecapError`.
//!
//! Nothing here is a new primitive: X25519 is x25519-dalek (the crate and
//! version hpke uses), HKDF is hpke's `extract_and_expand`.

use hpke::generic_array::typenum::U32;
use hpke::kdf::{extract_and_expand, HkdfSha256};
use hpke::kem::{SharedSecret, X25519HkdfSha256};
use hpke::{Deserializable, HpkeError, Kem, Serializable};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// X25519 public keys, encapsulated keys and private keys are 32 bytes
/// (RFC 9180 §7.1, Npk = Nenc = Nsk = 32).
const LEN: usize = 32;

/// `suite_id = concat("KEM", I2OSP(kem_id, 2))` (RFC 9180 §4.1).
const KEM_SUITE_ID: [u8; 5] = {
    let id = X25519HkdfSha256Cached::KEM_ID.to_be_bytes();
    [b'K', b'E', b'M', id[0], id[1]]
};

fn check_len(encoded: &[u8]) -> Result<[u8; LEN], HpkeError> {
    <[u8; LEN]>::try_from(encoded).map_err(|_| HpkeError::IncorrectInputLength(LEN, encoded.len()))
}

/// DHKEM(X25519, HKDF-SHA256) whose private key carries its public key.
/// Interoperates byte for byte with [`X25519HkdfSha256`].
pub(crate) struct X25519HkdfSha256Cached;

/// An X25519 public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PublicKey(x25519_dalek::PublicKey);

impl PublicKey {
    /// `SerializePublicKey(pk)`.
    pub(crate) fn as_bytes(&self) -> &[u8; LEN] {
        self.0.as_bytes()
    }
}

impl Serializable for PublicKey {
    type OutputSize = U32;

    /// Panics if `buf` is not 32 bytes (the trait's contract).
    fn write_exact(&self, buf: &mut [u8]) {
        buf.copy_from_slice(self.0.as_bytes());
    }
}

impl Deserializable for PublicKey {
    fn from_bytes(encoded: &[u8]) -> Result<Self, HpkeError> {
        Ok(Self(x25519_dalek::PublicKey::from(check_len(encoded)?)))
    }
}

/// The encapsulated key: the sender's ephemeral public key.
#[derive(Clone)]
pub(crate) struct EncappedKey(x25519_dalek::PublicKey);

impl Serializable for EncappedKey {
    type OutputSize = U32;

    /// Panics if `buf` is not 32 bytes (the trait's contract).
    fn write_exact(&self, buf: &mut [u8]) {
        buf.copy_from_slice(self.0.as_bytes());
    }
}

impl Deserializable for EncappedKey {
    fn from_bytes(encoded: &[u8]) -> Result<Self, HpkeError> {
        Ok(Self(x25519_dalek::PublicKey::from(check_len(encoded)?)))
    }
}

/// An X25519 private key and its public key, computed once. Zeroized on
/// drop; deliberately not `Debug`.
#[derive(Clone)]
pub(crate) struct PrivateKey {
    sk: x25519_dalek::StaticSecret,
    pk: PublicKey,
}

impl PrivateKey {
    fn new(sk: x25519_dalek::StaticSecret) -> Self {
        let pk = PublicKey(x25519_dalek::PublicKey::from(&sk));
        Self { sk, pk }
    }

    /// The public key.
    pub(crate) fn public_key(&self) -> &PublicKey {
        &self.pk
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        // StaticSecret also zeroizes itself on drop (x25519-dalek's `zeroize`
        // feature, which this line needs to compile).
        self.sk.zeroize();
    }
}

impl ZeroizeOnDrop for PrivateKey {}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        self.sk.as_bytes().ct_eq(other.sk.as_bytes()).into()
    }
}

impl Eq for PrivateKey {}

impl Serializable for PrivateKey {
    type OutputSize = U32;

    /// `SerializePrivateKey(sk)`: the 32 bytes as derived (unclamped), like
    /// the stock KEM. Panics if `buf` is not 32 bytes (the trait's contract).
    fn write_exact(&self, buf: &mut [u8]) {
        buf.copy_from_slice(self.sk.as_bytes());
    }
}

impl Deserializable for PrivateKey {
    fn from_bytes(encoded: &[u8]) -> Result<Self, HpkeError> {
        let bytes = Zeroizing::new(check_len(encoded)?);
        Ok(Self::new(x25519_dalek::StaticSecret::from(*bytes)))
    }
}

impl Kem for X25519HkdfSha256Cached {
    type PublicKey = PublicKey;
    type PrivateKey = PrivateKey;
    type EncappedKey = EncappedKey;
    /// Nsecret = Nh of HKDF-SHA256.
    type NSecret = U32;

    const KEM_ID: u16 = <X25519HkdfSha256 as Kem>::KEM_ID;

    fn sk_to_pk(sk: &PrivateKey) -> PublicKey {
        sk.pk.clone()
    }

    /// RFC 9180 §7.1.3 DeriveKeyPair, by the stock KEM.
    fn derive_keypair(ikm: &[u8]) -> (PrivateKey, PublicKey) {
        let (stock_sk, _) = <X25519HkdfSha256 as Kem>::derive_keypair(ikm);
        let mut bytes = Zeroizing::new([0u8; LEN]);
        stock_sk.write_exact(&mut bytes[..]);
        let sk = PrivateKey::new(x25519_dalek::StaticSecret::from(*bytes));
        let pk = sk.pk.clone();
        (sk, pk)
    }

    /// RFC 9180 §4.1 Decap, with `pkRm` taken from the private key.
    fn decap(
        sk_recip: &PrivateKey,
        pk_sender_id: Option<&PublicKey>,
        encapped_key: &EncappedKey,
    ) -> Result<SharedSecret<Self>, HpkeError> {
        if pk_sender_id.is_some() {
            // AuthDecap is not implemented: the channel is base mode.
            return Err(HpkeError::DecapError);
        }
        let dh = sk_recip.sk.diffie_hellman(&encapped_key.0);
        // "Senders and recipients MUST check whether the shared secret is the
        // all-zero value and abort if so" (RFC 9180 §7.1.4), as hpke does.
        if bool::from(dh.as_bytes().ct_eq(&[0u8; LEN])) {
            return Err(HpkeError::DecapError);
        }
        let mut kem_context = [0u8; 2 * LEN];
        kem_context[..LEN].copy_from_slice(encapped_key.0.as_bytes());
        kem_context[LEN..].copy_from_slice(sk_recip.pk.as_bytes());
        let mut shared_secret = SharedSecret::<Self>::default();
        extract_and_expand::<HkdfSha256>(
            dh.as_bytes(),
            &KEM_SUITE_ID,
            &kem_context,
            &mut shared_secret.0,
        )
        .map_err(|_| HpkeError::DecapError)?;
        Ok(shared_secret)
    }

    /// RFC 9180 §4.1 Encap, by the stock KEM.
    fn encap<R: hpke::rand_core::CryptoRng + hpke::rand_core::RngCore>(
        pk_recip: &PublicKey,
        sender_id_keypair: Option<(&PrivateKey, &PublicKey)>,
        csprng: &mut R,
    ) -> Result<(SharedSecret<Self>, EncappedKey), HpkeError> {
        if sender_id_keypair.is_some() {
            // AuthEncap is not implemented: the channel is base mode.
            return Err(HpkeError::EncapError);
        }
        let pk = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(pk_recip.as_bytes())?;
        let (stock_secret, stock_enc) = X25519HkdfSha256::encap(&pk, None, csprng)?;
        let enc = EncappedKey::from_bytes(&stock_enc.to_bytes())?;
        let mut shared_secret = SharedSecret::<Self>::default();
        shared_secret.0.copy_from_slice(&stock_secret.0);
        Ok((shared_secret, enc))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::channel::Compat;
    use hpke::aead::ChaCha20Poly1305;
    use hpke::{OpModeR, OpModeS, PskBundle};
    use rand_core::{OsRng, RngCore};

    type Stock = X25519HkdfSha256;
    type Ours = X25519HkdfSha256Cached;

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        let v = hex::decode(s).unwrap();
        <[u8; N]>::try_from(v.as_slice()).unwrap()
    }

    fn random<const N: usize>() -> [u8; N] {
        let mut b = [0u8; N];
        OsRng.fill_bytes(&mut b);
        b
    }

    /// RFC 9180 Appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
    /// ChaCha20Poly1305, mode Base. Values as in the RFC (and in hpke 0.13's
    /// `test-vectors-5f503c5.json`, the CFRG draft's vector file, entry
    /// mode 0 / kem_id 32 / kdf_id 1 / aead_id 3).
    mod a2 {
        pub const INFO: &str = "4f6465206f6e2061204772656369616e2055726e";
        pub const IKM_R: &str = "1ac01f181fdf9f352797655161c58b75c656a6cc2716dcb66372da835542e1df";
        pub const SK_RM: &str = "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb";
        pub const PK_RM: &str = "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a";
        pub const ENC: &str = "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a";
        pub const SHARED_SECRET: &str =
            "0bbe78490412b4bbea4812666f7916932b828bba79942424abb65244930d69a7";
        /// "Beauty is truth, truth beauty"
        pub const PT: &str = "4265617574792069732074727574682c20747275746820626561757479";
        /// (sequence number, aad, ct)
        pub const ENCRYPTIONS: [(u64, &str, &str); 3] = [
            (
                0,
                "436f756e742d30",
                "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28",
            ),
            (
                1,
                "436f756e742d31",
                "6b53c051e4199c518de79594e1c4ab18b96f081549d45ce015be002090bb119e85285337cc95ba5f59992dc98c",
            ),
            (
                2,
                "436f756e742d32",
                "71146bd6795ccc9c49ce25dda112a48f202ad220559502cef1f34271e0cb4b02b4f10ecac6f48c32f878fae86b",
            ),
        ];
        /// (exporter_context, L = 32, exported_value)
        pub const EXPORTS: [(&str, &str); 3] = [
            (
                "",
                "4bbd6243b8bb54cec311fac9df81841b6fd61f56538a775e7c80a9f40160606e",
            ),
            (
                "00",
                "8c1df14732580e5501b00f82b10a1647b40713191b7c1240ac80e2b68808ba69",
            ),
            (
                "54657374436f6e74657874",
                "5acb09211139c43b3090489a9da433e8a30ee7188ba8b0a9a1ccf0c229283e53",
            ),
        ];
    }

    #[test]
    fn rfc9180_a2_x25519_chacha20poly1305_base() {
        // DeriveKeyPair(ikmR) → skRm, pkRm.
        let (sk, pk) = Ours::derive_keypair(&hex::decode(a2::IKM_R).unwrap());
        assert_eq!(sk.to_bytes().as_slice(), unhex::<32>(a2::SK_RM));
        assert_eq!(pk.to_bytes().as_slice(), unhex::<32>(a2::PK_RM));
        assert_eq!(Ours::sk_to_pk(&sk), pk);
        // The same key, deserialized from skRm.
        let sk2 = PrivateKey::from_bytes(&unhex::<32>(a2::SK_RM)).unwrap();
        assert!(sk2 == sk);
        assert_eq!(sk2.public_key(), &pk);

        // Decap(enc, skR) → shared_secret.
        let enc = EncappedKey::from_bytes(&unhex::<32>(a2::ENC)).unwrap();
        let ss = Ours::decap(&sk, None, &enc).unwrap();
        assert_eq!(ss.0.as_slice(), unhex::<32>(a2::SHARED_SECRET));

        // The key schedule and the AEAD: key, base_nonce and exporter_secret
        // are private to hpke's context, so they are checked through what they
        // produce: the first ciphertexts (sequence 0, 1, 2) and the exports.
        let info = hex::decode(a2::INFO).unwrap();
        let mut ctx = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, Ours>(
            &OpModeR::Base,
            &sk,
            &enc,
            &info,
        )
        .unwrap();
        for (seq, aad, ct) in a2::ENCRYPTIONS {
            let pt = ctx
                .open(&hex::decode(ct).unwrap(), &hex::decode(aad).unwrap())
                .unwrap_or_else(|e| panic!("sequence {seq}: {e}"));
            assert_eq!(pt, hex::decode(a2::PT).unwrap(), "sequence {seq}");
        }
        for (context, value) in a2::EXPORTS {
            let mut out = [0u8; 32];
            ctx.export(&hex::decode(context).unwrap(), &mut out)
                .unwrap();
            assert_eq!(out, unhex::<32>(value), "exporter_context {context:?}");
        }
    }

    #[test]
    fn rfc9180_a2_stock_kem_agrees() {
        // The oracle itself passes the same vector.
        let (sk, pk) = Stock::derive_keypair(&hex::decode(a2::IKM_R).unwrap());
        assert_eq!(pk.to_bytes().as_slice(), unhex::<32>(a2::PK_RM));
        let enc = <Stock as Kem>::EncappedKey::from_bytes(&unhex::<32>(a2::ENC)).unwrap();
        let ss = Stock::decap(&sk, None, &enc).unwrap();
        assert_eq!(ss.0.as_slice(), unhex::<32>(a2::SHARED_SECRET));
    }

    #[test]
    fn suite_id_and_kem_id() {
        assert_eq!(Ours::KEM_ID, 0x0020);
        assert_eq!(&KEM_SUITE_ID, b"KEM\x00\x20");
    }

    #[test]
    fn random_keys_and_encs_decap_like_the_stock_kem() {
        for _ in 0..200 {
            let ikm = random::<32>();
            let (sk, pk) = Ours::derive_keypair(&ikm);
            let (stock_sk, stock_pk) = Stock::derive_keypair(&ikm);
            assert_eq!(pk.to_bytes(), stock_pk.to_bytes());
            assert_eq!(sk.to_bytes(), stock_sk.to_bytes());
            // Any 32 bytes are an encapsulated key (a u-coordinate).
            let enc_bytes = random::<32>();
            let ours = Ours::decap(&sk, None, &EncappedKey::from_bytes(&enc_bytes).unwrap());
            let stock = Stock::decap(
                &stock_sk,
                None,
                &<Stock as Kem>::EncappedKey::from_bytes(&enc_bytes).unwrap(),
            );
            match (ours, stock) {
                (Ok(a), Ok(b)) => assert_eq!(a.0, b.0),
                (Err(a), Err(b)) => assert_eq!(a, b),
                _ => panic!("decap results differ for enc {}", hex::encode(enc_bytes)),
            }
        }
    }

    #[test]
    fn stock_sender_to_our_receiver() {
        for i in 0..100usize {
            let (sk, pk) = Ours::derive_keypair(&random::<32>());
            let stock_pk = <Stock as Kem>::PublicKey::from_bytes(pk.as_bytes()).unwrap();
            let info = random::<24>();
            let (enc, mut sender) = hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, Stock, _>(
                &OpModeS::Base,
                &stock_pk,
                &info,
                &mut Compat(&mut OsRng),
            )
            .unwrap();
            let enc = EncappedKey::from_bytes(&enc.to_bytes()).unwrap();
            let mut receiver = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, Ours>(
                &OpModeR::Base,
                &sk,
                &enc,
                &info,
            )
            .unwrap();
            for n in 0..3 {
                let mut msg = vec![0u8; (i * 7 + n) % 500];
                OsRng.fill_bytes(&mut msg);
                let aad = random::<18>();
                let ct = sender.seal(&msg, &aad).unwrap();
                assert_eq!(receiver.open(&ct, &aad).unwrap(), msg);
            }
            let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
            sender.export(b"coffer/v1/channel/s2c", &mut a).unwrap();
            receiver.export(b"coffer/v1/channel/s2c", &mut b).unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn psk_mode_also_matches() {
        let (sk, pk) = Ours::derive_keypair(&random::<32>());
        let stock_pk = <Stock as Kem>::PublicKey::from_bytes(pk.as_bytes()).unwrap();
        let (psk, psk_id) = (random::<32>(), random::<8>());
        let bundle = PskBundle::new(&psk, &psk_id).unwrap();
        let (enc, mut sender) = hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, Stock, _>(
            &OpModeS::Psk(bundle),
            &stock_pk,
            b"info",
            &mut Compat(&mut OsRng),
        )
        .unwrap();
        let enc = EncappedKey::from_bytes(&enc.to_bytes()).unwrap();
        let mut receiver = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, Ours>(
            &OpModeR::Psk(bundle),
            &sk,
            &enc,
            b"info",
        )
        .unwrap();
        let ct = sender.seal(b"psk", b"").unwrap();
        assert_eq!(receiver.open(&ct, b"").unwrap(), b"psk");
    }

    #[test]
    fn our_sender_to_stock_receiver() {
        for _ in 0..50 {
            let ikm = random::<32>();
            let (_, pk) = Ours::derive_keypair(&ikm);
            let (stock_sk, _) = Stock::derive_keypair(&ikm);
            let (ss, enc) = Ours::encap(&pk, None, &mut Compat(&mut OsRng)).unwrap();
            let stock_enc = <Stock as Kem>::EncappedKey::from_bytes(&enc.to_bytes()).unwrap();
            let stock_ss = Stock::decap(&stock_sk, None, &stock_enc).unwrap();
            assert_eq!(ss.0, stock_ss.0);
        }
    }

    #[test]
    fn wrong_key_or_tampered_enc_fails_cleanly() {
        let info = b"coffer/v1/channel";
        let (sk, pk) = Ours::derive_keypair(&random::<32>());
        let (other_sk, _) = Ours::derive_keypair(&random::<32>());
        let stock_pk = <Stock as Kem>::PublicKey::from_bytes(pk.as_bytes()).unwrap();
        let (enc, mut sender) = hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, Stock, _>(
            &OpModeS::Base,
            &stock_pk,
            info,
            &mut Compat(&mut OsRng),
        )
        .unwrap();
        let ct = sender.seal(b"hello", b"aad").unwrap();
        let enc = enc.to_bytes();

        let open = |sk: &PrivateKey, enc: &[u8]| -> Result<Vec<u8>, HpkeError> {
            let enc = EncappedKey::from_bytes(enc)?;
            hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, Ours>(
                &OpModeR::Base,
                sk,
                &enc,
                info,
            )?
            .open(&ct, b"aad")
        };
        assert_eq!(open(&sk, &enc).unwrap(), b"hello");
        assert_eq!(open(&other_sk, &enc), Err(HpkeError::OpenError));
        for i in 0..32 {
            let mut bad = [0u8; 32];
            bad.copy_from_slice(&enc);
            bad[i] ^= 1 << (i % 8);
            // Byte 31 gets its top bit flipped, which X25519 ignores (RFC 7748
            // §5): same DH, but `enc` is part of the KEM context, so it fails too.
            assert!(
                open(&sk, &bad).is_err(),
                "flipped bit in enc byte {i} still opens"
            );
        }
        // Wrong lengths are refused before any DH.
        assert_eq!(
            open(&sk, &enc[..31]).err(),
            Some(HpkeError::IncorrectInputLength(32, 31))
        );
        assert!(PrivateKey::from_bytes(&[0u8; 33]).is_err());
        assert!(PublicKey::from_bytes(&[]).is_err());
    }

    #[test]
    fn low_order_encs_are_refused_like_the_stock_kem() {
        // Points of small order on the curve and its twist, and non-canonical
        // encodings of them: DH with a clamped scalar gives all zeros.
        let low_order = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            // 0 with the top bit set (ignored by X25519).
            "0000000000000000000000000000000000000000000000000000000000000080",
        ];
        let ikm = random::<32>();
        let (sk, _) = Ours::derive_keypair(&ikm);
        let (stock_sk, _) = Stock::derive_keypair(&ikm);
        for u in low_order {
            let b = unhex::<32>(u);
            let ours = Ours::decap(&sk, None, &EncappedKey::from_bytes(&b).unwrap()).map(|s| s.0);
            let stock = Stock::decap(
                &stock_sk,
                None,
                &<Stock as Kem>::EncappedKey::from_bytes(&b).unwrap(),
            )
            .map(|s| s.0);
            assert_eq!(ours, Err(HpkeError::DecapError), "enc {u}");
            assert_eq!(stock, Err(HpkeError::DecapError), "enc {u}");
        }
    }

    #[test]
    fn auth_modes_are_refused() {
        let (sk, pk) = Ours::derive_keypair(&random::<32>());
        let enc = EncappedKey::from_bytes(&random::<32>()).unwrap();
        assert_eq!(
            Ours::decap(&sk, Some(&pk), &enc).err(),
            Some(HpkeError::DecapError)
        );
        assert_eq!(
            Ours::encap(&pk, Some((&sk, &pk)), &mut Compat(&mut OsRng)).err(),
            Some(HpkeError::EncapError)
        );
    }

    #[test]
    fn private_key_round_trips_and_zeroizes_on_drop() {
        fn zeroize_on_drop<T: ZeroizeOnDrop>() {}
        zeroize_on_drop::<PrivateKey>();
        let (sk, pk) = Ours::derive_keypair(&random::<32>());
        let back = PrivateKey::from_bytes(&sk.to_bytes()).unwrap();
        assert!(back == sk);
        assert_eq!(back.public_key(), &pk);
        let (other, _) = Ours::derive_keypair(&random::<32>());
        assert!(other != sk);
    }
}
