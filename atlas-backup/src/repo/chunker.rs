//! Content-defined chunking of a byte source with FastCDC 2020.

use std::io::{self, Read};

use fastcdc::v2020::{FastCDC, Normalization};

use super::format::ChunkerParams;

/// Cuts everything `reader` yields into chunks and hands each to `on_chunk`
/// in order, as a slice of `window` valid only for the call (a caller that
/// keeps a chunk copies it). `window` is scratch space, reused across calls
/// so that reading many files does not allocate a window each: it grows to
/// at most twice the maximum chunk size, and its previous contents are
/// never read. Returns the bytes read.
pub(crate) fn chunk_reader<E: From<io::Error>>(
    reader: &mut dyn Read,
    window: &mut Vec<u8>,
    size_hint: Option<u64>,
    params: ChunkerParams,
    seed: u64,
    mut on_chunk: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let max = params.max_size as usize;
    // Small files use (and zero) a small part of the window, grown on
    // demand: a backup of many small files must not touch 2 × max_size
    // per file.
    let initial = size_hint.map_or(2 * max, |h| (h as usize).saturating_add(4096).min(2 * max));
    let buf = window;
    // Exact growth: doubling could take the capacity past 2 × max_size,
    // and the pool does not keep a window that large.
    let grow = |buf: &mut Vec<u8>, len: usize| {
        buf.reserve_exact(len.saturating_sub(buf.len()));
        buf.resize(len, 0);
    };
    if buf.len() < initial.max(4096) {
        grow(buf, initial.max(4096));
    }
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
                    let len = (buf.len() * 2).min(2 * max).max(max + 1);
                    grow(buf, len);
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
        // What is left of the input fits in one chunk: FastCDC would cut
        // it whole, and setting it up (two seeded gear tables, allocated)
        // is most of the cost of chunking a small file.
        let cut = if eof && window.len() <= params.min_size as usize {
            window.len()
        } else {
            let cdc = FastCDC::with_level_and_seed(
                window,
                params.min_size,
                params.avg_size,
                params.max_size,
                Normalization::Level1,
                seed,
            );
            cdc.cut(0, window.len()).1
        };
        let cut = cut.clamp(1, window.len());
        on_chunk(&window[..cut])?;
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

    fn chunks(d: &[u8], p: ChunkerParams, window: &mut Vec<u8>) -> Vec<Vec<u8>> {
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
        chunk_reader::<io::Error>(&mut Odd(d), window, Some(100), p, 42, |c| {
            out.push(c.to_vec());
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
        let a = chunks(&d, p, &mut Vec::new());
        assert_eq!(a.concat(), d);
        assert!(a.iter().all(|c| c.len() <= 32768));
        assert!(
            a.len() > 60 && a.len() < 400,
            "about 128 chunks, got {}",
            a.len()
        );
        let mut e = d.clone();
        e[500_000] ^= 0xff;
        let b = chunks(&e, p, &mut Vec::new());
        let same = b.iter().filter(|c| a.contains(c)).count();
        assert!(
            same + 3 >= b.len(),
            "only the chunks around the edit change"
        );
        assert!(chunks(&[], p, &mut Vec::new()).is_empty());
    }

    #[test]
    fn a_reused_window_yields_the_same_chunks_and_none_of_its_old_bytes() {
        let p = ChunkerParams {
            min_size: 2048,
            avg_size: 8192,
            max_size: 32768,
        };
        let d = data(300_000, 11);
        let mut grown = Vec::new();
        let fresh = chunks(&d, p, &mut grown);
        // Grown from a small size hint (the file grew): never past 2 × max.
        assert!(
            (32768..=2 * 32768).contains(&grown.capacity()),
            "{}",
            grown.capacity()
        );
        // A window left full of another file's bytes, larger than needed.
        let mut window = vec![0xa5u8; 3 * 32768];
        let reused = chunks(&d, p, &mut window);
        assert_eq!(reused, fresh);
        let short = data(5000, 12);
        let mut window = vec![0xa5u8; 3 * 32768];
        assert_eq!(chunks(&short, p, &mut window).concat(), short);
        assert!(chunks(&[], p, &mut window).is_empty());
    }
}
