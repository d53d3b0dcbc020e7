//! The backup engine over every target at once: one backup mirrored to the
//! filesystem, S3 (s3s-fs, the strict server), GCS (fake-gcs-server) and
//! Azure Blob (Azurite), then restored from each and compared with the
//! source byte for byte, and verified with `check --read-data` on each.
//! `cargo xtask test` starts the servers.
#![cfg(feature = "cloud")]

use std::path::Path;
use std::sync::Arc;

use atlas_backup::repo::{
    BackupKind, BackupOptions, CheckOptions, DirectorySource, InitOptions, KdfParams, KeySource,
    MirrorPolicy, MirrorSet, ReadDataSubset, Repository, RestoreOptions,
};
use atlas_core::backup::{BackupTarget, ObjectPrefix};
use atlas_storage::FsTarget;
use atlas_storage::url::TargetUrl;
use rand::{Rng, SeedableRng};

const MIB: usize = 1024 * 1024;

/// Opens `url` as a command-line user would, with the settings a user would
/// export pointing at the local servers `cargo xtask test` starts.
async fn open(url: &str) -> Arc<dyn BackupTarget> {
    let env: std::collections::BTreeMap<String, String> =
        atlas_tests::cloud_test_env().into_iter().collect();
    TargetUrl::parse(url)
        .unwrap()
        .open_with_env(true, &env)
        .await
        .unwrap()
}

async fn s3() -> Arc<dyn BackupTarget> {
    open("s3://atlas-mirror").await
}

async fn gcs() -> Arc<dyn BackupTarget> {
    open("gs://atlas-mirror").await
}

async fn azure() -> Arc<dyn BackupTarget> {
    open("az://atlas-mirror").await
}

/// A small tree: random and text files (one spanning several chunks), a
/// nested empty directory and a symlink.
fn make_tree(root: &Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::create_dir_all(root.join("empty/inner")).unwrap();
    let mut big = vec![0u8; 6 * MIB + 123];
    rng.fill(&mut big[..]);
    std::fs::write(root.join("a/big.bin"), &big).unwrap();
    let text: String = (0..20_000)
        .map(|i| format!("line {i} of the mirrored backup\n"))
        .collect();
    std::fs::write(root.join("a/b/log.txt"), text).unwrap();
    std::fs::write(root.join("zero.bin"), b"").unwrap();
    std::os::unix::fs::symlink("a/b/log.txt", root.join("link")).unwrap();
}

/// Every file, symlink and directory under `root`, with contents.
fn listing(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let ty = e.file_type().unwrap();
            let what = if ty.is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if ty.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else {
                let data = std::fs::read(&path).unwrap();
                format!("file {} {}", data.len(), blake3::hash(&data).to_hex())
            };
            out.push((rel, what));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs s3s-fs, fake-gcs-server and azurite; run: cargo xtask test"]
async fn one_backup_mirrored_to_fs_s3_gcs_and_azure_restores_from_each() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    make_tree(&source);
    let want = listing(&source);

    // A fresh prefix per run, so reruns against the same servers start clean.
    let run = format!("run-{:x}/", rand::rng().random::<u64>());
    let prefix = ObjectPrefix::new(&run).unwrap();
    let key = KeySource::passphrase("mirror test passphrase");
    let fs: Arc<dyn BackupTarget> = Arc::new(FsTarget::new(work.path().join("fs")).unwrap());
    let first = Repository::init(
        fs,
        prefix.clone(),
        &key,
        InitOptions::default().with_kdf(KdfParams::insecure_fast()),
    )
    .await
    .unwrap();
    let mut repos = vec![first.clone()];
    let names = [
        "fs",
        "s3 (s3s-fs)",
        "gcs (fake-gcs-server)",
        "azure (azurite)",
    ];
    for target in [s3().await, gcs().await, azure().await] {
        repos.push(
            Repository::init_mirror(&first, target, prefix.clone())
                .await
                .unwrap(),
        );
    }

    let set = MirrorSet::new(repos, MirrorPolicy::All).unwrap();
    let report = set
        .backup(
            DirectorySource::new(&source),
            BackupOptions::default()
                .with_kind(BackupKind::Full)
                .with_tag("mirror"),
        )
        .await
        .unwrap();
    assert_eq!(report.targets.len(), 4);
    assert!(
        report.targets.iter().all(|t| t.error.is_none()),
        "{:?}",
        report.targets
    );
    let id = report.snapshot.id.to_hex();

    for (name, repo) in names.iter().zip(set.repositories()) {
        // Each copy opens on its own with the passphrase, lists the same
        // snapshot, restores identically and verifies every blob.
        let reopened = Repository::open(repo.target().clone(), prefix.clone(), &key)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let snaps = reopened.snapshots().await.unwrap();
        assert_eq!(snaps.len(), 1, "{name}");
        assert_eq!(snaps[0].id.to_hex(), id, "{name}");
        let out = work
            .path()
            .join(format!("restore-{}", name.split(' ').next().unwrap()));
        reopened
            .restore(&id, &out, RestoreOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(listing(&out), want, "{name}: restored tree differs");
        let check = reopened
            .check(CheckOptions::read_data(ReadDataSubset::All))
            .await
            .unwrap();
        assert!(check.is_ok(), "{name}: {:?}", check.problems);
        assert!(check.packs_read > 0, "{name}: read-data read no pack");
    }
}
