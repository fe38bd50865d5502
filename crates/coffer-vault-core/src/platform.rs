//! What the trusted core gets from the machine it runs on. In an HSM these are
//! the firmware's clock, DRBG and NVRAM; here the host process provides them
//! (`coffer-vault`'s file-backed platform) or a test does (`testkit`).

/// A platform failure (NVRAM unreadable or unwritable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("platform: {0}")]
pub struct PlatformError(pub String);

/// Clock, randomness and NVRAM.
pub trait Platform {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Fills `buf` from a CSPRNG.
    fn fill_random(&mut self, buf: &mut [u8]);
    /// The NVRAM contents, or `None` if never written.
    fn nvram_read(&self) -> Result<Option<Vec<u8>>, PlatformError>;
    /// Replaces the NVRAM contents durably, atomically.
    fn nvram_write(&mut self, data: &[u8]) -> Result<(), PlatformError>;
}

/// Adapts a platform to the `rand_core` 0.6 traits opaque-ke wants.
pub(crate) struct PlatformRng<'a, P: ?Sized>(pub(crate) &'a mut P);

impl<P: Platform + ?Sized> rand_core::RngCore for PlatformRng<'_, P> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.0.fill_random(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.0.fill_random(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_random(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.fill_random(dest);
        Ok(())
    }
}

impl<P: Platform + ?Sized> rand_core::CryptoRng for PlatformRng<'_, P> {}
