//! Throughput and peak memory of Atlas's backup targets, streaming objects
//! of several sizes in and out.
//!
//! For each target and size it streams a generated object in 1 MiB chunks
//! through `put`, reads it back through `get` (verifying size and CRC32C),
//! and reports MiB/s and the growth of the process's peak resident memory
//! (`VmHWM` in `/proc/self/status`, reset through `/proc/self/clear_refs`
//! before each transfer) over its resident size before the transfer. A
//! streaming target's peak stays flat as the object grows; the memory
//! target keeps objects in memory by design, so its peak is the object.
//!
//! Baselines in the same run: writing and reading the same chunks with a
//! plain `tokio::fs::File` (plus an fsync, as the filesystem target does),
//! and collecting them into one buffer in memory.
//!
//! Targets: `fs` (a temporary directory under `/var/tmp`) and `memory`
//! always; with `--features storage-cloud`, also S3 (moto and s3s-fs), Azure
//! (Azurite) and GCS (fake-gcs-server) when they answer on the addresses of
//! `ATLAS_TEST_S3_MOTO_URL`, `ATLAS_TEST_S3S_URL`, `ATLAS_TEST_AZURITE_URL`
//! and `STORAGE_EMULATOR_HOST` (defaults: 127.0.0.1 ports 9000, 9001,
//! 10000, 4443; `cargo xtask test` starts them).
//!
//! Run: `cargo run --release --example storage_throughput [--features storage-cloud] -- [SIZE_MIB ...]`
//! (default sizes: 100 and 1024 MiB).

use std::time::{Duration, Instant};

use atlas_core::backup::{BackupTarget, BackupTargetExt, ByteStream, Crc32cHasher, ObjectKey};
use atlas_storage::{FsTarget, MemoryTarget};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;
const CHUNK: usize = 1024 * 1024;

/// One measured transfer.
struct Row {
    target: String,
    size_mib: u64,
    put_mib_s: f64,
    get_mib_s: f64,
    put_peak_mib: f64,
    get_peak_mib: f64,
}

/// The body: `size` bytes in 1 MiB chunks, each a fresh buffer (as a real
/// producer makes), generated lazily.
fn body(size: u64) -> ByteStream {
    let pattern: Vec<u8> = (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect();
    let chunks = size.div_ceil(CHUNK as u64);
    stream::iter(0..chunks)
        .map(move |i| {
            let len = (size - i * CHUNK as u64).min(CHUNK as u64) as usize;
            let mut b = BytesMut::from(&pattern[..len]);
            let stamp = i.to_le_bytes();
            let n = stamp.len().min(len);
            b[..n].copy_from_slice(&stamp[..n]);
            Ok(b.freeze())
        })
        .boxed()
}

fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Resets the peak and returns the resident size now, in KiB.
fn reset_peak() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_kib("VmRSS:").unwrap_or(0)
}

fn peak_growth_mib(base_kib: u64) -> f64 {
    status_kib("VmHWM:").unwrap_or(0).saturating_sub(base_kib) as f64 / 1024.0
}

fn rate(size: u64, took: Duration) -> f64 {
    size as f64 / MIB as f64 / took.as_secs_f64()
}

async fn measure(name: &str, target: &dyn BackupTarget, size: u64) -> atlas_core::Result<Row> {
    let key = ObjectKey::new(format!("bench/{name}-{size}-{:08x}", rand_suffix()))?;
    let base = reset_peak();
    let started = Instant::now();
    let put = target.put(&key, body(size)).await?;
    let put_took = started.elapsed();
    let put_peak = peak_growth_mib(base);

    let base = reset_peak();
    let started = Instant::now();
    let mut got = target.get(&key).await?.body;
    let mut hasher = Crc32cHasher::new();
    while let Some(chunk) = got.next().await {
        hasher.update(&chunk?);
    }
    let get_took = started.elapsed();
    let get_peak = peak_growth_mib(base);
    if hasher.len() != size || hasher.checksum() != put.checksum {
        return Err(atlas_core::Error::backend(
            name,
            format!(
                "read back {} bytes, {}; wrote {size}, {}",
                hasher.len(),
                hasher.checksum(),
                put.checksum
            ),
        ));
    }
    target.delete(&key).await?;
    Ok(Row {
        target: name.to_owned(),
        size_mib: size / MIB,
        put_mib_s: rate(size, put_took),
        get_mib_s: rate(size, get_took),
        put_peak_mib: put_peak,
        get_peak_mib: get_peak,
    })
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// Baseline: the same chunks written with a plain `tokio::fs::File`, fsynced,
/// then read back in 1 MiB reads.
async fn baseline_tokio_fs(dir: &std::path::Path, size: u64) -> std::io::Result<Row> {
    let path = dir.join(format!("baseline-{size}"));
    let base = reset_peak();
    let started = Instant::now();
    let mut file = tokio::fs::File::create(&path).await?;
    let mut chunks = body(size);
    while let Some(chunk) = chunks.next().await {
        let chunk: Bytes = chunk.map_err(std::io::Error::other)?;
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    drop(file);
    let put_took = started.elapsed();
    let put_peak = peak_growth_mib(base);

    let base = reset_peak();
    let started = Instant::now();
    let mut file = tokio::fs::File::open(&path).await?;
    let mut buf = vec![0u8; CHUNK];
    let mut hasher = Crc32cHasher::new();
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let get_took = started.elapsed();
    let get_peak = peak_growth_mib(base);
    tokio::fs::remove_file(&path).await?;
    Ok(Row {
        target: "baseline: tokio::fs".into(),
        size_mib: size / MIB,
        put_mib_s: rate(size, put_took),
        get_mib_s: rate(size, get_took),
        put_peak_mib: put_peak,
        get_peak_mib: get_peak,
    })
}

/// Baseline: the chunks collected into one buffer, then hashed.
async fn baseline_memory(size: u64) -> std::io::Result<Row> {
    let base = reset_peak();
    let started = Instant::now();
    let mut all = BytesMut::new();
    let mut chunks = body(size);
    while let Some(chunk) = chunks.next().await {
        all.extend_from_slice(&chunk.map_err(std::io::Error::other)?);
    }
    let put_took = started.elapsed();
    let put_peak = peak_growth_mib(base);
    let base = reset_peak();
    let started = Instant::now();
    let mut hasher = Crc32cHasher::new();
    for c in all.chunks(CHUNK) {
        hasher.update(c);
    }
    let get_took = started.elapsed();
    let get_peak = peak_growth_mib(base);
    drop(all);
    Ok(Row {
        target: "baseline: Vec in memory".into(),
        size_mib: size / MIB,
        put_mib_s: rate(size, put_took),
        get_mib_s: rate(size, get_took),
        put_peak_mib: put_peak,
        get_peak_mib: get_peak,
    })
}

#[cfg(feature = "storage-cloud")]
mod cloud {
    use std::time::Duration;

    use atlas_core::backup::BackupTarget;
    use atlas_storage::{AzureBlobTarget, GcsTarget, S3Target};

    fn env_or(var: &str, default: &str) -> String {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_owned())
    }

    /// Whether something listens at the host:port of `url`.
    async fn reachable(url: &str) -> bool {
        let host = url
            .split("://")
            .nth(1)
            .unwrap_or(url)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        matches!(
            tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(host)
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// The cloud target `name` (`s3-moto`, `s3-s3s`, `azure`, `gcs`) with
    /// its bucket ready, or `None` (with a note) when its server does not
    /// answer.
    pub(crate) async fn target(name: &str) -> Option<(String, Box<dyn BackupTarget>)> {
        let (label, url) = match name {
            "s3-moto" => (
                "s3 (moto)",
                env_or("ATLAS_TEST_S3_MOTO_URL", "http://127.0.0.1:9000"),
            ),
            "s3-s3s" => (
                "s3 (s3s-fs)",
                env_or("ATLAS_TEST_S3S_URL", "http://127.0.0.1:9001"),
            ),
            "azure" => (
                "azure (azurite)",
                env_or("ATLAS_TEST_AZURITE_URL", AzureBlobTarget::EMULATOR_URL),
            ),
            "gcs" => (
                "gcs (fake-gcs-server)",
                env_or("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443"),
            ),
            _ => {
                println!("unknown target {name}");
                return None;
            }
        };
        if !reachable(&url).await {
            println!("skipping {label}: nothing answers at {url}");
            return None;
        }
        let target: Option<Box<dyn BackupTarget>> = match name {
            "azure" => match AzureBlobTarget::builder()
                .emulator(&url)
                .with_container("atlas-bench")
                .build()
            {
                Ok(t) if t.ensure_container().await.is_ok() => Some(Box::new(t)),
                _ => None,
            },
            "gcs" => match GcsTarget::builder()
                .with_bucket("atlas-bench")
                .with_endpoint(&url)
                .with_anonymous_credentials()
                .build()
            {
                Ok(t) if t.ensure_bucket("atlas-bench").await.is_ok() => Some(Box::new(t)),
                _ => None,
            },
            _ => match S3Target::builder()
                .with_bucket("atlas-bench")
                .with_endpoint(&url)
                .with_path_style(true)
                .with_credentials("testing", "testing")
                .build()
            {
                Ok(t) if t.ensure_bucket().await.is_ok() => Some(Box::new(t)),
                _ => None,
            },
        };
        if target.is_none() {
            println!("skipping {label}: cannot prepare its bucket");
        }
        target.map(|t| (label.to_owned(), t))
    }
}

/// The names this program measures, baselines first.
fn names() -> Vec<String> {
    let mut v: Vec<String> = ["baseline-tokio-fs", "baseline-memory", "fs", "memory"]
        .into_iter()
        .map(String::from)
        .collect();
    if cfg!(feature = "storage-cloud") {
        v.extend(["s3-moto", "s3-s3s", "azure", "gcs"].map(String::from));
    }
    v
}

/// Measures `name` at `size_mib` in this process and prints one `ROW` line.
async fn run_one(name: &str, size_mib: u64) -> Result<(), Box<dyn std::error::Error>> {
    let size = size_mib * MIB;
    let dir = tempfile::Builder::new()
        .prefix("atlas-bench-")
        .tempdir_in("/var/tmp")
        .or_else(|_| tempfile::tempdir())?;
    let row = match name {
        "baseline-tokio-fs" => baseline_tokio_fs(dir.path(), size).await?,
        "baseline-memory" => baseline_memory(size).await?,
        "fs" => measure("fs", &FsTarget::new(dir.path().join("fs"))?, size).await?,
        "memory" => measure("memory", &MemoryTarget::new(), size).await?,
        #[cfg(feature = "storage-cloud")]
        other => match cloud::target(other).await {
            Some((label, target)) => measure(&label, target.as_ref(), size).await?,
            None => return Ok(()),
        },
        #[cfg(not(feature = "storage-cloud"))]
        other => return Err(format!("unknown target {other}").into()),
    };
    println!(
        "ROW\t{}\t{}\t{:.0}\t{:.0}\t{:.1}\t{:.1}",
        row.target, row.size_mib, row.put_mib_s, row.get_mib_s, row.put_peak_mib, row.get_peak_mib
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "storage-cloud")]
    {
        // The cloud SDKs bring more than one rustls provider; pick one.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Child mode: one target, one size, in a fresh process so that the peak
    // memory of one measurement never includes another's.
    if args.first().map(String::as_str) == Some("--one") {
        let name = args.get(1).ok_or("--one NAME SIZE_MIB")?;
        let size: u64 = args.get(2).ok_or("--one NAME SIZE_MIB")?.parse()?;
        return run_one(name, size).await;
    }
    let sizes: Vec<u64> = {
        let parsed: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
        if parsed.is_empty() {
            vec![100, 1024]
        } else {
            parsed
        }
    };
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for &size in &sizes {
        for name in names() {
            eprintln!("{name}: {size} MiB ...");
            let out = tokio::process::Command::new(&exe)
                .args(["--one", &name, &size.to_string()])
                .stderr(std::process::Stdio::inherit())
                .output()
                .await?;
            let text = String::from_utf8_lossy(&out.stdout);
            for line in text.lines() {
                match line.strip_prefix("ROW\t") {
                    Some(row) => rows.push(row.split('\t').map(String::from).collect::<Vec<_>>()),
                    None => println!("{line}"),
                }
            }
            if !out.status.success() {
                println!("{name} at {size} MiB failed ({})", out.status);
            }
        }
    }
    println!();
    println!(
        "| target | object | put MiB/s | get MiB/s | peak RSS growth, put | peak RSS growth, get |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        if let [target, size, put, get, put_peak, get_peak] = r.as_slice() {
            println!("| {target} | {size} MiB | {put} | {get} | {put_peak} MiB | {get_peak} MiB |");
        }
    }
    Ok(())
}
