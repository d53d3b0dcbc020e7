//! Content-defined chunking of a byte source with FastCDC 2020.

use std::io::{self, Read};

use bytes::Bytes;
use fastcdc::v2020::{FastCDC, Normalization};

use super::format::ChunkerParams;

/// Cuts everything `reader` yields into chunks and hands each to `on_chunk`
/// in order. Holds at most twice the maximum chunk size in memory. Returns
/// the bytes read.
pub(crate) fn chunk_reader<E: From<io::Error>>(
    reader: &mut dyn Read,
    size_hint: Option<u64>,
    params: ChunkerParams,
    seed: u64,
    mut on_chunk: impl FnMut(Bytes) -> Result<(), E>,
) -> Result<u64, E> {
    let max = params.max_size as usize;
    // Small files get a small buffer (grown on demand): a backup of many
    // small files must not allocate 2 × max_size per file.
    let initial = size_hint.map_or(2 * max, |h| (h as usize).saturating_add(4096).min(2 * max));
    let mut buf = vec![0u8; initial.max(4096)];
    let (mut start, mut end) = (0usize, 0usize);
    let mut eof = false;
    let mut total = 0u64;
    loop {
        // Fill until a whole maximum-size chunk is buffered (or the input
        // ends): only then is FastCDC's cut point final.
        while !eof && end - start < max {
            if end == buf.len() {
                if start > 0 {
                    buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                } else {
                    buf.resize((buf.len() * 2).min(2 * max).max(max + 1), 0);
                }
            }
            match reader.read(&mut buf[end..]) {
                Ok(0) => eof = true,
                Ok(n) => {
                    end += n;
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if start == end {
            return Ok(total);
        }
        let window = &buf[start..end];
        let cdc = FastCDC::with_level_and_seed(
            window,
            params.min_size,
            params.avg_size,
            params.max_size,
            Normalization::Level1,
            seed,
        );
        let (_, cut) = cdc.cut(0, window.len());
        let cut = cut.clamp(1, window.len());
        on_chunk(Bytes::copy_from_slice(&window[..cut]))?;
        start += cut;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn chunks(d: &[u8], p: ChunkerParams) -> Vec<Bytes> {
        let mut out = Vec::new();
        // A reader that returns odd-sized reads, to exercise refills.
        struct Odd<'a>(&'a [u8]);
        impl Read for Odd<'_> {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                let n = b.len().min(self.0.len()).min(7919);
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        chunk_reader::<io::Error>(&mut Odd(d), Some(100), p, 42, |c| {
            out.push(c);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn chunks_concatenate_to_the_input_and_resync_after_an_edit() {
        let p = ChunkerParams {
            min_size: 2048,
            avg_size: 8192,
            max_size: 32768,
        };
        let d = data(1 << 20, 7);
        let a = chunks(&d, p);
        assert_eq!(a.concat(), d);
        assert!(a.iter().all(|c| c.len() <= 32768));
        assert!(
            a.len() > 60 && a.len() < 400,
            "about 128 chunks, got {}",
            a.len()
        );
        let mut e = d.clone();
        e[500_000] ^= 0xff;
        let b = chunks(&e, p);
        let same = b.iter().filter(|c| a.contains(c)).count();
        assert!(
            same + 3 >= b.len(),
            "only the chunks around the edit change"
        );
        assert!(chunks(&[], p).is_empty());
    }
}
