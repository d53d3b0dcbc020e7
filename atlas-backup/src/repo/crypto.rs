//! Key material, key files, authenticated encryption of blobs and files,
//! and keyed content ids. The byte formats are specified in
//! `atlas-backup/docs/backup-format.md`.

use std::fmt;
use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::error::BACKEND;
use super::format::{BlobId, BlobKind, from_hex, to_hex};
use super::pool::{Compressors, Decompressors};
use super::version::Document;
use atlas_core::error::{Error, Result};

/// Bytes of the nonce before every ciphertext.
pub(crate) const NONCE_LEN: usize = 24;
/// Bytes of the Poly1305 tag after every ciphertext.
pub(crate) const TAG_LEN: usize = 16;

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_ZSTD: u8 = 1;

/// Where the master key of a repository is unlocked from: a passphrase
/// (stretched with Argon2id) or a raw 32-byte key (for keys kept in a secret
/// manager). Debug output never shows the secret.
#[derive(Clone)]
pub enum KeySource {
    /// A passphrase; must not be empty.
    Passphrase(String),
    /// A raw 32-byte key, used as the wrapping key after domain separation.
    Raw([u8; 32]),
}

impl KeySource {
    /// A passphrase key source.
    pub fn passphrase(p: impl Into<String>) -> Self {
        KeySource::Passphrase(p.into())
    }

    /// A raw key source from 32 bytes.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (field `key`) when `bytes` is not 32 bytes long.
    pub fn raw(bytes: &[u8]) -> Result<Self> {
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::invalid(
                "key",
                format!("a raw key must be 32 bytes, got {}", bytes.len()),
            )
        })?;
        Ok(KeySource::Raw(key))
    }

    fn validate(&self) -> Result<()> {
        if let KeySource::Passphrase(p) = self
            && p.is_empty()
        {
            return Err(Error::invalid("passphrase", "must not be empty"));
        }
        Ok(())
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Passphrase(_) => f.write_str("KeySource::Passphrase(<redacted>)"),
            KeySource::Raw(_) => f.write_str("KeySource::Raw(<redacted>)"),
        }
    }
}

/// Argon2id cost parameters for new key files. The defaults are the
/// `argon2` crate's (OWASP's recommendation): 19 MiB, 2 passes, 1 lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB. Default 19456 (19 MiB); at least 8.
    pub m_cost: u32,
    /// Passes. Default 2; at least 1.
    pub t_cost: u32,
    /// Lanes. Default 1; at least 1.
    pub p_cost: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams {
            m_cost: Params::DEFAULT_M_COST,
            t_cost: Params::DEFAULT_T_COST,
            p_cost: Params::DEFAULT_P_COST,
        }
    }
}

impl KdfParams {
    /// Cheap parameters (64 KiB, 1 pass) for tests only: a passphrase
    /// protected with them is easy to brute-force.
    pub fn insecure_fast() -> Self {
        KdfParams {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }

    fn argon2(&self) -> Result<Argon2<'static>> {
        let params = Params::new(self.m_cost, self.t_cost, self.p_cost, Some(32)).map_err(|e| {
            Error::invalid(
                "kdf",
                format!("Argon2id parameters {self:?} are not valid: {e}"),
            )
        })?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// The secrets of a repository: the encryption key and the key of the
/// content ids. Never leaves memory unencrypted; Debug shows nothing.
#[derive(Clone)]
pub(crate) struct MasterKey {
    cipher: XChaCha20Poly1305,
    enc: [u8; 32],
    id_key: [u8; 32],
    /// Shared by every clone, so each thread decoding blobs with this key
    /// reuses an idle context instead of creating one per blob.
    zstd: Arc<Decompressors>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub(crate) fn generate() -> Self {
        let mut enc = [0u8; 32];
        let mut id_key = [0u8; 32];
        rand::rng().fill_bytes(&mut enc);
        rand::rng().fill_bytes(&mut id_key);
        Self::from_parts(enc, id_key)
    }

    fn from_parts(enc: [u8; 32], id_key: [u8; 32]) -> Self {
        MasterKey {
            cipher: XChaCha20Poly1305::new(&Key::from(enc)),
            enc,
            id_key,
            zstd: Arc::new(Decompressors::new()),
        }
    }

    /// A key that only seals and opens a key file's wrapped master key
    /// with `cipher`; it has no id key and decodes no blobs.
    fn wrapping(cipher: XChaCha20Poly1305) -> Self {
        MasterKey {
            cipher,
            enc: [0; 32],
            id_key: [0; 32],
            zstd: Arc::new(Decompressors::new()),
        }
    }

    fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.enc);
        out[32..].copy_from_slice(&self.id_key);
        out
    }

    /// A fingerprint that tells whether two repositories share a master key
    /// without revealing it.
    pub(crate) fn fingerprint(&self) -> String {
        let h = blake3::keyed_hash(&self.id_key, b"atlas-backup key fingerprint");
        to_hex(&h.as_bytes()[..16])
    }

    /// The keyed content id of `data`.
    pub(crate) fn blob_id(&self, data: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.id_key, data).as_bytes())
    }

    /// The seed of the chunker's gear table, so that chunk boundaries do not
    /// reveal content either.
    pub(crate) fn chunker_seed(&self) -> u64 {
        let k = blake3::derive_key("atlas-backup 2026 chunker seed", &self.id_key);
        u64::from_le_bytes(k[..8].try_into().unwrap_or([0; 8]))
    }

    /// Encrypts `plain` with a fresh random nonce: `nonce || ciphertext || tag`.
    pub(crate) fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .cipher
            .encrypt_inout_detached(&XNonce::from(nonce), aad, (&mut out[NONCE_LEN..]).into())
            // Only fails for messages over 256 GiB, which are never built.
            .unwrap_or_default();
        out.extend_from_slice(tag.as_slice());
        out
    }

    /// Decrypts what [`seal`](Self::seal) produced; `None` when it was
    /// tampered with, truncated or sealed with another key or `aad`.
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        let plain = self.open_into(aad, &[sealed], &mut buf)?;
        buf.truncate(plain.end);
        buf.drain(..plain.start);
        Some(buf)
    }

    /// [`open`](Self::open) of the sealed bytes given as `pieces` (in
    /// order), gathered into `buf` (its content replaced, its capacity
    /// reused) and decrypted there: the range of `buf` holding the
    /// plaintext. `None` when they do not open, and then `buf` holds
    /// nothing of them.
    fn open_into<B: AsRef<[u8]>>(
        &self,
        aad: &[u8],
        pieces: &[B],
        buf: &mut Vec<u8>,
    ) -> Option<std::ops::Range<usize>> {
        buf.clear();
        for piece in pieces {
            buf.extend_from_slice(piece.as_ref());
        }
        let opened = buf
            .len()
            .checked_sub(TAG_LEN)
            .filter(|&at| at >= NONCE_LEN)
            .and_then(|tag_at| {
                let (head, tag) = buf.split_at_mut(tag_at);
                let (nonce, body) = head.split_at_mut(NONCE_LEN);
                let nonce = <[u8; NONCE_LEN]>::try_from(&*nonce).ok()?;
                let tag = <[u8; TAG_LEN]>::try_from(&*tag).ok()?;
                self.cipher
                    .decrypt_inout_detached(&XNonce::from(nonce), aad, body.into(), &Tag::from(tag))
                    .ok()
                    .map(|()| NONCE_LEN..tag_at)
            });
        if opened.is_none() {
            buf.clear();
        }
        opened
    }

    /// [`encode_blob_into`](Self::encode_blob_into) into a new buffer.
    #[cfg(test)]
    pub(crate) fn encode_blob(
        &self,
        kind: BlobKind,
        id: &BlobId,
        plain: &[u8],
        level: i32,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(sealed_capacity(plain.len()));
        let zstd = Compressors::new(level);
        self.encode_blob_into(kind, id, plain, &zstd, &mut out);
        out
    }

    /// Compresses (with `zstd`, when it pays) and encrypts one blob, in
    /// one buffer: `nonce || E(flag || payload) || tag`, written to `out`
    /// (cleared first; the backup pipeline reuses its buffers), which does
    /// not grow when it has [`sealed_capacity`] bytes of capacity. The
    /// associated data binds the ciphertext to its kind and id, so a blob
    /// cannot be passed off as another.
    pub(crate) fn encode_blob_into(
        &self,
        kind: BlobKind,
        id: &BlobId,
        plain: &[u8],
        zstd: &Compressors,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        out.push(COMPRESSION_ZSTD);
        out.resize(NONCE_LEN + 1 + plain.len(), 0);
        // Compressed output must be strictly smaller to be kept; a full
        // buffer makes zstd give up early on incompressible data.
        let limit = NONCE_LEN + plain.len();
        match zstd.compress_into(plain, &mut out[NONCE_LEN + 1..limit]) {
            Some(n) => out.truncate(NONCE_LEN + 1 + n),
            None => {
                out[NONCE_LEN] = COMPRESSION_NONE;
                out[NONCE_LEN + 1..].copy_from_slice(plain);
            }
        }
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &XNonce::from(nonce),
                &blob_aad(kind, id),
                (&mut out[NONCE_LEN..]).into(),
            )
            .unwrap_or_default();
        out.extend_from_slice(tag.as_slice());
    }

    /// Decrypts, decompresses and verifies one blob against its id.
    pub(crate) fn decode_blob(
        &self,
        kind: BlobKind,
        id: &BlobId,
        raw_len: u32,
        sealed: &[u8],
    ) -> std::result::Result<Vec<u8>, BlobFault> {
        let mut buffers = DecodeBuffers::default();
        self.decode_blob_into(kind, id, raw_len, &[sealed], &mut buffers)?;
        Ok(buffers.take_plain())
    }

    /// [`decode_blob`](Self::decode_blob) into `buffers`, reused from blob
    /// to blob: the plaintext is borrowed from them. Decoding every blob
    /// into new buffers of up to 4 MiB cost a restore more CPU in page
    /// faults and zeroed pages than in decompression.
    /// The sealed blob may come in `pieces` (a download's chunks), which
    /// are gathered while decrypting.
    pub(crate) fn decode_blob_into<'b, B: AsRef<[u8]>>(
        &self,
        kind: BlobKind,
        id: &BlobId,
        raw_len: u32,
        pieces: &[B],
        buffers: &'b mut DecodeBuffers,
    ) -> std::result::Result<&'b [u8], BlobFault> {
        let DecodeBuffers {
            opened,
            decompressed,
            compressed,
            plain_at,
            plain_len,
        } = buffers;
        *compressed = false;
        let body = self
            .open_into(&blob_aad(kind, id), pieces, opened)
            .ok_or(BlobFault::Authentication)?;
        let (flag, payload) = opened[body.clone()]
            .split_first()
            .ok_or(BlobFault::Malformed("empty body"))?;
        *plain_at = body.start + 1;
        let plain: &[u8] = match *flag {
            COMPRESSION_NONE => payload,
            // The output may be at most raw_len, so a frame claiming more
            // than the index says fails here.
            COMPRESSION_ZSTD => {
                let raw = raw_len as usize;
                if decompressed.len() < raw {
                    decompressed.resize(raw, 0);
                }
                let n = self
                    .zstd
                    .decompress_to(payload, &mut decompressed[..raw])
                    .ok_or(BlobFault::Malformed("zstd data does not decompress"))?;
                *compressed = true;
                &decompressed[..n]
            }
            _ => return Err(BlobFault::Malformed("unknown compression flag")),
        };
        if plain.len() != raw_len as usize {
            return Err(BlobFault::Malformed("length differs from the index"));
        }
        if self.blob_id(plain) != *id {
            return Err(BlobFault::HashMismatch);
        }
        *plain_len = plain.len();
        Ok(plain)
    }

    /// What [`seal_file`](Self::seal_file) makes of the JSON of `value`,
    /// without holding that JSON: it is serialised straight into the
    /// compressor, and the compressed bytes encrypted in place. A backup's
    /// index file of 80,000 blobs is 12 MB of JSON but 4 MB compressed.
    ///
    /// # Errors
    /// [`Error::Backend`] when `value` does not serialise.
    pub(crate) fn seal_json(&self, kind: &str, value: &impl serde::Serialize) -> Result<Vec<u8>> {
        let fail = |e: String| Error::backend(BACKEND, format!("cannot encode the {kind}: {e}"));
        let mut out = vec![0u8; NONCE_LEN];
        let mut enc = zstd::stream::Encoder::new(&mut out, 3).map_err(|e| fail(e.to_string()))?;
        serde_json::to_writer(&mut enc, value).map_err(|e| fail(e.to_string()))?;
        enc.finish().map_err(|e| fail(e.to_string()))?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        out[..NONCE_LEN].copy_from_slice(&nonce);
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &XNonce::from(nonce),
                file_aad(kind).as_bytes(),
                (&mut out[NONCE_LEN..]).into(),
            )
            .unwrap_or_default();
        out.extend_from_slice(tag.as_slice());
        Ok(out)
    }

    /// Compresses and encrypts a repository file (index, snapshot, lock).
    pub(crate) fn seal_file(&self, kind: &str, plain: &[u8]) -> Vec<u8> {
        let compressed = zstd::bulk::compress(plain, 3).unwrap_or_else(|_| plain.to_vec());
        self.seal(file_aad(kind).as_bytes(), &compressed)
    }

    /// Opens what [`seal_file`](Self::seal_file) produced.
    pub(crate) fn open_file(&self, kind: &str, what: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        self.open_file_checked(kind, sealed)
            .map_err(|fault| Error::backend(BACKEND, format!("{what}: {fault}")))
    }

    /// Opens what [`seal_file`](Self::seal_file) produced, saying why it
    /// does not open.
    pub(crate) fn open_file_checked(
        &self,
        kind: &str,
        sealed: &[u8],
    ) -> std::result::Result<Vec<u8>, FileFault> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(FileFault::Truncated(sealed.len()));
        }
        let compressed = self
            .open(file_aad(kind).as_bytes(), sealed)
            .ok_or(FileFault::Authentication)?;
        let mut out = Vec::new();
        zstd::stream::copy_decode(compressed.as_slice(), &mut out)
            .map_err(|e| FileFault::Decompression(e.to_string()))?;
        Ok(out)
    }
}

/// Why a sealed file (index, snapshot, lock) does not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileFault {
    /// Fewer bytes (this many) than a nonce and a tag: cut off.
    Truncated(usize),
    /// The tag did not verify: changed or cut-off bytes, or another key.
    Authentication,
    /// Decrypted, but not a zstd frame.
    Decompression(String),
}

impl fmt::Display for FileFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileFault::Truncated(n) => write!(
                f,
                "truncated: {n} bytes, fewer than any sealed file has ({})",
                NONCE_LEN + TAG_LEN
            ),
            FileFault::Authentication => f.write_str(
                "authentication failed (corrupted, or not written with this repository's key)",
            ),
            FileFault::Decompression(e) => write!(f, "does not decompress: {e}"),
        }
    }
}

/// The most bytes a blob of `plain_len` bytes takes sealed: nonce,
/// compression flag, the payload stored as is, tag.
pub(crate) const fn sealed_capacity(plain_len: usize) -> usize {
    NONCE_LEN + 1 + plain_len + TAG_LEN
}

fn blob_aad(kind: BlobKind, id: &BlobId) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[0] = kind.code();
    aad[1..].copy_from_slice(&id.0);
    aad
}

fn file_aad(kind: &str) -> String {
    format!("atlas-backup/{kind}")
}

/// The buffers one thread decodes blobs into
/// ([`MasterKey::decode_blob_into`]), kept from blob to blob; they grow to
/// the largest blob decoded (a chunk is at most 4 MiB).
#[derive(Default)]
pub(crate) struct DecodeBuffers {
    /// The sealed blob gathered and decrypted in place: nonce, a flag
    /// byte and the payload, tag.
    opened: Vec<u8>,
    /// A compressed payload's plaintext; longer than the last one when an
    /// earlier blob was larger.
    decompressed: Vec<u8>,
    /// Whether the last blob decoded was compressed (its plaintext is the
    /// start of `decompressed`, else `opened` after the flag), and its
    /// length.
    compressed: bool,
    /// Where the plaintext of a blob stored uncompressed starts in
    /// `opened`.
    plain_at: usize,
    plain_len: usize,
}

impl DecodeBuffers {
    /// The plaintext of the last blob decoded, as a vector of its own.
    fn take_plain(mut self) -> Vec<u8> {
        if self.compressed {
            self.decompressed.truncate(self.plain_len);
            self.decompressed
        } else {
            self.opened.truncate(self.plain_at + self.plain_len);
            self.opened.drain(..self.plain_at.min(self.opened.len()));
            self.opened
        }
    }
}

/// Why one blob did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlobFault {
    /// The AEAD tag did not verify: bytes were changed.
    Authentication,
    /// Decrypted, but the content is not what a blob should be.
    Malformed(&'static str),
    /// Decrypted, but the content does not hash to the blob's id.
    HashMismatch,
}

impl fmt::Display for BlobFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobFault::Authentication => {
                f.write_str("authentication failed (the stored bytes were changed)")
            }
            BlobFault::Malformed(why) => write!(f, "malformed blob: {why}"),
            BlobFault::HashMismatch => f.write_str("content does not match its id"),
        }
    }
}

/// A key file: the master key wrapped with a key derived from a passphrase
/// (or a raw key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeyFile {
    pub(crate) version: u32,
    /// `argon2id` or `raw`.
    pub(crate) kdf: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) params: Option<KdfParams>,
    /// Hex salt of the KDF (16 bytes), empty for raw keys.
    pub(crate) salt: String,
    /// Hex of `nonce || XChaCha20-Poly1305(master key) || tag`.
    pub(crate) wrapped: String,
    pub(crate) created: String,
    pub(crate) label: String,
}

const KEY_AAD: &[u8] = b"atlas-backup/key";

fn wrapping_key(
    source: &KeySource,
    kdf: &str,
    params: Option<&KdfParams>,
    salt: &[u8],
) -> Result<XChaCha20Poly1305> {
    let mut out = [0u8; 32];
    match (source, kdf) {
        (KeySource::Passphrase(p), "argon2id") => {
            let params = params
                .ok_or_else(|| Error::backend(BACKEND, "key file: argon2id without params"))?;
            params
                .argon2()?
                .hash_password_into(p.as_bytes(), salt, &mut out)
                .map_err(|e| Error::backend(BACKEND, format!("key file: argon2id failed: {e}")))?;
        }
        (KeySource::Raw(k), "raw") => {
            out = blake3::derive_key("atlas-backup 2026 raw key wrapping", k);
        }
        _ => return Err(Error::invalid("key", "does not match the key file's kind")),
    }
    Ok(XChaCha20Poly1305::new(&Key::from(out)))
}

impl KeyFile {
    pub(crate) fn wrap(
        master: &MasterKey,
        source: &KeySource,
        params: KdfParams,
        label: &str,
    ) -> Result<Self> {
        source.validate()?;
        let (kdf, params, salt) = match source {
            KeySource::Passphrase(_) => {
                let mut salt = [0u8; 16];
                rand::rng().fill_bytes(&mut salt);
                ("argon2id", Some(params), salt.to_vec())
            }
            KeySource::Raw(_) => ("raw", None, Vec::new()),
        };
        let wrap = wrapping_key(source, kdf, params.as_ref(), &salt)?;
        let wrapper = MasterKey::wrapping(wrap);
        let sealed = wrapper.seal(KEY_AAD, &master.to_bytes());
        Ok(KeyFile {
            version: Document::KeyFile.newest(),
            kdf: kdf.to_owned(),
            params,
            salt: to_hex(&salt),
            wrapped: to_hex(&sealed),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            label: label.to_owned(),
        })
    }

    /// The master key, if `source` unlocks this key file. `Ok(None)` when it
    /// does not (wrong passphrase or key of the other kind).
    pub(crate) fn unwrap_with(&self, source: &KeySource) -> Result<Option<MasterKey>> {
        let matches = matches!(
            (source, self.kdf.as_str()),
            (KeySource::Passphrase(_), "argon2id") | (KeySource::Raw(_), "raw")
        );
        if !matches {
            return Ok(None);
        }
        let salt = from_hex(&self.salt)
            .ok_or_else(|| Error::backend(BACKEND, "key file: salt is not hex"))?;
        let sealed = from_hex(&self.wrapped)
            .ok_or_else(|| Error::backend(BACKEND, "key file: wrapped key is not hex"))?;
        let wrapper = MasterKey::wrapping(wrapping_key(
            source,
            &self.kdf,
            self.params.as_ref(),
            &salt,
        )?);
        let Some(plain) = wrapper.open(KEY_AAD, &sealed) else {
            return Ok(None);
        };
        if plain.len() != 64 {
            return Err(Error::backend(
                BACKEND,
                "key file: wrapped key has the wrong length",
            ));
        }
        let mut enc = [0u8; 32];
        let mut id_key = [0u8; 32];
        enc.copy_from_slice(&plain[..32]);
        id_key.copy_from_slice(&plain[32..]);
        Ok(Some(MasterKey::from_parts(enc, id_key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_detect_tampering() {
        let k = MasterKey::generate();
        let data = b"hello hello hello hello hello hello hello".repeat(10);
        let id = k.blob_id(&data);
        let sealed = k.encode_blob(BlobKind::Data, &id, &data, 1);
        assert!(sealed.len() < data.len(), "compressible data is compressed");
        assert_eq!(
            k.decode_blob(BlobKind::Data, &id, data.len() as u32, &sealed)
                .unwrap(),
            data
        );
        assert_eq!(
            k.decode_blob(BlobKind::Tree, &id, data.len() as u32, &sealed),
            Err(BlobFault::Authentication),
            "the kind is authenticated"
        );
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert_eq!(
            k.decode_blob(BlobKind::Data, &id, data.len() as u32, &bad),
            Err(BlobFault::Authentication)
        );
        let other = MasterKey::generate();
        assert_ne!(other.blob_id(&data), id, "ids are keyed");
    }

    #[test]
    fn a_blob_decoded_with_the_wrong_length_is_malformed_however_often() {
        let k = MasterKey::generate();
        let data = b"restore restore restore restore restore ".repeat(50);
        let id = k.blob_id(&data);
        let sealed = k.encode_blob(BlobKind::Data, &id, &data, 3);
        let n = data.len() as u32;
        // Repeated, so the contexts reused after a failure are exercised.
        for _ in 0..3 {
            assert_eq!(
                k.decode_blob(BlobKind::Data, &id, n - 1, &sealed),
                Err(BlobFault::Malformed("zstd data does not decompress")),
                "more output than the index allows is not written"
            );
            assert_eq!(
                k.decode_blob(BlobKind::Data, &id, n + 1, &sealed),
                Err(BlobFault::Malformed("length differs from the index"))
            );
            assert_eq!(
                k.decode_blob(BlobKind::Data, &id, n, &sealed),
                Ok(data.clone())
            );
        }
        // A clone (as handed to blocking tasks) decodes with the same key.
        let clone = k.clone();
        assert_eq!(clone.decode_blob(BlobKind::Data, &id, n, &sealed), Ok(data));
    }

    #[test]
    fn reused_decode_buffers_give_each_blob_its_own_bytes() {
        let k = MasterKey::generate();
        let big = b"a large compressible blob ".repeat(40_000);
        let noise: Vec<u8> = (0..5000).map(|_| rand::random::<u8>()).collect();
        let small = b"small small small small small small small".repeat(3);
        let mut buffers = DecodeBuffers::default();
        let mut stored = false;
        // Large then smaller, compressed and stored, with failures between:
        // every blob comes out exactly, never with bytes of an earlier one.
        for (data, level) in [(&big, 1), (&noise, 1), (&small, 3), (&big, 3), (&small, 1)] {
            let id = k.blob_id(data);
            let sealed = k.encode_blob(BlobKind::Data, &id, data, level);
            let n = data.len() as u32;
            let mut bad = sealed.clone();
            bad[NONCE_LEN + 2] ^= 1;
            assert_eq!(
                k.decode_blob_into(BlobKind::Data, &id, n, &[&bad], &mut buffers),
                Err(BlobFault::Authentication)
            );
            assert_eq!(
                k.decode_blob_into(BlobKind::Data, &id, n + 1, &[&sealed], &mut buffers),
                Err(BlobFault::Malformed("length differs from the index"))
            );
            let plain = k
                .decode_blob_into(BlobKind::Data, &id, n, &[&sealed], &mut buffers)
                .unwrap();
            assert_eq!(plain, &data[..]);
            // In pieces cut anywhere, the nonce and the tag included.
            for cut in [1, NONCE_LEN + 1, sealed.len() / 2, sealed.len() - 3] {
                let (a, b) = sealed.split_at(cut);
                let pieces = [a, &b[..1], &b[1..]];
                let plain = k
                    .decode_blob_into(BlobKind::Data, &id, n, &pieces, &mut buffers)
                    .unwrap();
                assert_eq!(plain, &data[..], "cut at {cut}");
            }
            stored |= !buffers.compressed;
        }
        assert!(stored, "the noise is stored uncompressed");
        assert!(
            buffers.decompressed.capacity() >= big.len(),
            "the buffers grew to the largest blob and were kept"
        );
    }

    #[test]
    fn key_files_unlock_only_with_their_secret() {
        let k = MasterKey::generate();
        let kf = KeyFile::wrap(
            &k,
            &KeySource::passphrase("right"),
            KdfParams::insecure_fast(),
            "t",
        )
        .unwrap();
        let got = kf
            .unwrap_with(&KeySource::passphrase("right"))
            .unwrap()
            .unwrap();
        assert_eq!(got.fingerprint(), k.fingerprint());
        assert!(
            kf.unwrap_with(&KeySource::passphrase("wrong"))
                .unwrap()
                .is_none()
        );
        assert!(kf.unwrap_with(&KeySource::Raw([7; 32])).unwrap().is_none());
        assert!(!format!("{:?}", KeySource::passphrase("right")).contains("right"));
        assert!(!format!("{k:?}").contains(&to_hex(&k.enc)));
    }
}
