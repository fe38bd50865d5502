//! Content-defined chunking: FastCDC 2020 from the `fastcdc` crate, pinned to
//! exactly 5.0.0 (4.0.0 once changed cut points silently), normalization
//! level 1, gear table XORed with a per-repository seed.
//!
//! The seed tunes dedup per repository; it is not a secret worth much (keyed
//! gear hashes are breakable, eprint 2025/558). Chunk sizes are hidden from
//! storage by the encrypted pack trailer and by pack padding instead.

use std::borrow::Cow;
use std::io::Read;

use fastcdc::v2020::{cut_gear, get_gear_with_seed, select_masks, Normalization};

use crate::format::config::ChunkerParams;

/// Media and ordinary files: restic's sizes (512 KiB / 1 MiB / 8 MiB).
pub const FILE_PARAMS: ChunkerParams = ChunkerParams {
    min: 512 << 10,
    avg: 1 << 20,
    max: 8 << 20,
};
/// SQLite images: small chunks, since the database changes pages in place.
pub const DB_PARAMS: ChunkerParams = ChunkerParams {
    min: 16 << 10,
    avg: 64 << 10,
    max: 256 << 10,
};

/// A configured chunker.
pub struct Chunker {
    params: ChunkerParams,
    masks: (u64, u64),
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

impl Chunker {
    /// A chunker for `params`, seeded with the repository's chunker seed.
    pub fn new(params: ChunkerParams, seed: u64) -> Self {
        let masks = select_masks(params.avg as usize, Normalization::Level1);
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Self {
            params,
            masks,
            gear,
            gear_ls,
        }
    }

    /// The parameters.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the first chunk of `data`, where `data` is either at least
    /// `max` bytes long or the end of the stream.
    pub fn cut(&self, data: &[u8]) -> usize {
        let (m_s, m_l) = self.masks;
        let p = self.params;
        let (_, n) = cut_gear(
            data,
            p.min as usize,
            p.avg as usize,
            p.max as usize,
            m_s,
            m_l,
            m_s << 1,
            m_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        n
    }

    /// Reads `reader` to the end, calling `f` with each chunk in order.
    /// Memory: one buffer of `2 × max` bytes.
    pub fn chunk_stream<R: Read, E: From<std::io::Error>>(
        &self,
        reader: R,
        f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        self.chunk_stream_with(&mut Vec::new(), reader, f)
    }

    /// Like [`Chunker::chunk_stream`], reusing `buf` (grown to `2 × max`
    /// once): zeroing a fresh buffer per file costs more than chunking it.
    pub fn chunk_stream_with<R: Read, E: From<std::io::Error>>(
        &self,
        buf: &mut Vec<u8>,
        mut reader: R,
        mut f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let max = self.params.max as usize;
        if buf.len() < 2 * max {
            buf.resize(2 * max, 0);
        }
        let buf = &mut buf[..2 * max];
        let (mut start, mut end, mut eof, mut total) = (0usize, 0usize, false, 0u64);
        loop {
            if !eof && end - start < max {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                while end < buf.len() {
                    let n = match reader.read(&mut buf[end..]) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e.into()),
                    };
                    if n == 0 {
                        eof = true;
                        break;
                    }
                    end += n;
                }
            }
            if start == end {
                return Ok(total);
            }
            let n = self.cut(&buf[start..end]).max(1).min(end - start);
            f(&buf[start..start + n])?;
            total += n as u64;
            start += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a fixed, documented pseudo-random input for the vectors.
    pub(crate) fn test_data(len: usize, mut state: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn cuts(c: &Chunker, data: &[u8]) -> Vec<usize> {
        let mut v = Vec::new();
        let mut pos = 0;
        c.chunk_stream::<_, std::io::Error>(data, |chunk| {
            pos += chunk.len();
            v.push(pos);
            Ok(())
        })
        .unwrap();
        v
    }

    /// Golden cut points. If this test fails, the chunker's output changed and
    /// every existing repository would stop deduplicating: do not update the
    /// numbers, find out what changed.
    #[test]
    fn golden_cut_points_db_params() {
        let data = test_data(1 << 20, 0x00C0_FFEE);
        let c = Chunker::new(DB_PARAMS, 0x1234_5678_9abc_def0);
        assert_eq!(cuts(&c, &data), GOLDEN_DB);
    }

    #[test]
    fn golden_cut_points_file_params() {
        let data = test_data(12 << 20, 42);
        let c = Chunker::new(FILE_PARAMS, 7);
        assert_eq!(cuts(&c, &data), GOLDEN_FILE);
    }

    /// The streaming loop agrees with the crate's own whole-slice iterator.
    #[test]
    fn stream_matches_slice_iterator() {
        let data = test_data(3 << 20, 99);
        let c = Chunker::new(DB_PARAMS, 5);
        let reference: Vec<usize> = fastcdc::v2020::FastCDC::with_level_and_seed(
            &data,
            DB_PARAMS.min as usize,
            DB_PARAMS.avg as usize,
            DB_PARAMS.max as usize,
            Normalization::Level1,
            5,
        )
        .map(|ch| ch.offset + ch.length)
        .collect();
        assert_eq!(cuts(&c, &data), reference);
    }

    /// A one-byte-at-a-time reader yields the same chunks.
    #[test]
    fn short_reads_do_not_change_cuts() {
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(4093);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let data = test_data(700_000, 3);
        let c = Chunker::new(DB_PARAMS, 1);
        let mut a = Vec::new();
        c.chunk_stream::<_, std::io::Error>(Trickle(&data), |ch| {
            a.push(ch.len());
            Ok(())
        })
        .unwrap();
        let b: Vec<usize> = cuts(&c, &data).windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(a[1..], b[..]);
    }

    const GOLDEN_DB: &[usize] = &[
        63034, 232989, 334481, 407127, 431625, 498046, 600264, 665986, 744979, 791096, 967885,
        1048576,
    ];
    const GOLDEN_FILE: &[usize] = &[
        1846844, 2392209, 4460148, 5953812, 6518786, 7554115, 8150207, 9358056, 10407412, 11878999,
        12491310, 12582912,
    ];
}
