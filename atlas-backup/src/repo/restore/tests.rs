//! Restore never writes outside its destination: symlinks already there
//! are not followed, a snapshot's own symlinks are not written through,
//! and an entry of another kind in the way is refused with a
//! [`RestoreConflict`] naming it.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use super::dest::Dest;
use super::{EntryKind, RestoreConflict, RestoreOptions, restore_conflict};
use crate::repo::backup::tests::Streaming;
use crate::repo::crypto::{KdfParams, KeySource};
use crate::repo::error::integrity_error;
use crate::repo::format::{
    BlobKind, IndexPack, Node, NodeKind, PACK_MAGIC, PackId, PackedBlob, SnapshotId, Tree,
    encode_pack_header, to_hex,
};
use crate::repo::index::write_index;
use crate::repo::repository::{InitOptions, Repository};
use crate::repo::version::Document;
use crate::repo::{BackupOptions, DirectorySource};
use atlas_core::backup::{BackupTargetExt, ObjectPrefix};
use atlas_core::error::Error;

async fn repository() -> Repository {
    Repository::init(
        Arc::new(Streaming::default()),
        ObjectPrefix::new("repo/").unwrap(),
        &KeySource::passphrase("restore tests"),
        InitOptions::default().with_kdf(KdfParams::insecure_fast()),
    )
    .await
    .unwrap()
}

/// Backs `src` up and returns the snapshot id.
async fn backup(repo: &Repository, src: &Path) -> String {
    repo.backup(DirectorySource::new(src), BackupOptions::default())
        .await
        .unwrap()
        .snapshot
        .id
        .to_hex()
}

/// Everything under `dir`, as sorted relative paths.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

fn conflict_of(err: &Error) -> RestoreConflict {
    restore_conflict(err)
        .unwrap_or_else(|| panic!("not a restore conflict: {err}"))
        .clone()
}

fn conflict(path: &Path, wanted: EntryKind, found: EntryKind) -> RestoreConflict {
    RestoreConflict {
        path: path.to_path_buf(),
        wanted,
        found,
    }
}

/// Restores snapshot `id` to `target`, which must fail with the conflict
/// of `found` at `path` where the snapshot has `wanted`, saying so.
async fn assert_refused(
    repo: &Repository,
    id: &str,
    target: &Path,
    options: RestoreOptions,
    (path, wanted, found): (&Path, EntryKind, EntryKind),
) {
    let err = repo.restore(id, target, options).await.unwrap_err();
    assert_eq!(conflict_of(&err), conflict(path, wanted, found));
    let says = format!("the destination has a {found} where the snapshot has a {wanted}");
    assert!(err.to_string().contains(&says), "{err}");
    assert!(integrity_error(&err).is_none(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_where_a_directory_goes_is_refused_not_followed() {
    let src = tempfile::tempdir().unwrap();
    fs::create_dir(src.path().join("sub")).unwrap();
    fs::write(src.path().join("sub/b.txt"), b"b").unwrap();
    fs::write(src.path().join("top.txt"), b"top").unwrap();
    let repo = repository().await;
    let id = backup(&repo, src.path()).await;

    let outside = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    symlink(outside.path(), target.path().join("sub")).unwrap();
    let link = target.path().join("sub");
    let symlink_in_the_way = (link.as_path(), EntryKind::Directory, EntryKind::Symlink);
    let options = RestoreOptions::default();
    assert_refused(&repo, &id, target.path(), options, symlink_in_the_way).await;
    let err = repo
        .restore(&id, target.path(), RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("restore does not write through a symlink it did not create"),
        "{err}"
    );
    assert_eq!(
        listing(outside.path()),
        Vec::<String>::new(),
        "written outside"
    );
    // The link is left as it was, and nothing else was written.
    assert_eq!(
        fs::read_link(target.path().join("sub")).unwrap(),
        outside.path()
    );
    assert_eq!(listing(target.path()), ["sub"]);

    // Restoring only a path below the link is refused the same way.
    let options = RestoreOptions::default().with_path("sub/b.txt");
    assert_refused(&repo, &id, target.path(), options, symlink_in_the_way).await;
    assert_eq!(
        listing(outside.path()),
        Vec::<String>::new(),
        "written outside"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_where_a_file_goes_is_replaced_not_written_through() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("kept.txt"), b"from the snapshot").unwrap();
    fs::write(src.path().join("new.txt"), b"new").unwrap();
    let repo = repository().await;
    let id = backup(&repo, src.path()).await;

    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("kept.txt"), b"outside").unwrap();
    let target = tempfile::tempdir().unwrap();
    symlink(
        outside.path().join("kept.txt"),
        target.path().join("kept.txt"),
    )
    .unwrap();
    // A dangling link to a file that does not exist yet.
    symlink(
        outside.path().join("new.txt"),
        target.path().join("new.txt"),
    )
    .unwrap();
    let report = repo
        .restore(&id, target.path(), RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(report.files, 2);
    for (name, content) in [("kept.txt", &b"from the snapshot"[..]), ("new.txt", b"new")] {
        let path = target.path().join(name);
        assert!(fs::symlink_metadata(&path).unwrap().is_file(), "{name}");
        assert_eq!(fs::read(&path).unwrap(), content);
    }
    assert_eq!(
        fs::read(outside.path().join("kept.txt")).unwrap(),
        b"outside"
    );
    assert_eq!(listing(outside.path()), ["kept.txt"], "written outside");
}

/// Stores `root` as a tree blob in a pack of its own and commits a copy of
/// snapshot `base` whose root it is; returns the new snapshot's id.
async fn plant_snapshot(repo: &Repository, base: &str, root: &Tree) -> String {
    let inner = &repo.inner;
    let json = serde_json::to_vec(root).unwrap();
    let id = inner.master.blob_id(&json);
    let mut pack = inner.master.encode_blob(BlobKind::Tree, &id, &json, 1);
    let blobs = [PackedBlob {
        kind: BlobKind::Tree,
        id,
        offset: 0,
        length: pack.len() as u32,
        raw_length: json.len() as u32,
    }];
    let header = inner
        .master
        .seal(b"atlas-backup/pack-header", &encode_pack_header(&blobs));
    pack.extend_from_slice(&header);
    pack.extend_from_slice(&(header.len() as u32).to_le_bytes());
    pack.extend_from_slice(PACK_MAGIC);
    let pack_id = PackId::random();
    let size = pack.len() as u64;
    inner
        .target
        .put_bytes_if_absent(&inner.layout.pack(&pack_id).unwrap(), pack.into())
        .await
        .unwrap();
    write_index(repo, &[IndexPack::of(pack_id, size, &blobs)], &[])
        .await
        .unwrap();
    let mut snapshot = repo.snapshot(base).await.unwrap();
    snapshot.id = SnapshotId::random();
    snapshot.tree = id;
    repo.write_file(
        &inner.layout.snapshot(&snapshot.id).unwrap(),
        Document::Snapshot,
        &snapshot,
        true,
    )
    .await
    .unwrap();
    snapshot.id.to_hex()
}

/// The root tree of snapshot `id`.
async fn root_tree(repo: &Repository, id: &str) -> Tree {
    let snapshot = repo.snapshot(id).await.unwrap();
    repo.list_dir(&snapshot, "").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_a_symlink_and_a_directory_of_one_name_writes_nothing_outside() {
    let outside = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    fs::create_dir(src.path().join("d")).unwrap();
    fs::write(src.path().join("d/b.txt"), b"b").unwrap();
    symlink(outside.path(), src.path().join("link")).unwrap();
    let repo = repository().await;
    let id = backup(&repo, src.path()).await;
    let honest = root_tree(&repo, &id).await;
    let node = |kind: NodeKind| -> Node {
        honest
            .nodes
            .iter()
            .find(|n| n.kind == kind)
            .cloned()
            .unwrap()
    };

    // `a -> outside` and a directory `a` holding `b.txt`; and the same
    // with the directory's name spelled as raw bytes, which is the name
    // restore writes.
    let (mut link, mut dir) = (node(NodeKind::Symlink), node(NodeKind::Dir));
    link.name = "a".into();
    dir.name = "a".into();
    let same_name = Tree {
        nodes: vec![link.clone(), dir.clone()],
    };
    dir.name = "x".into();
    dir.name_bytes = Some(to_hex(b"a"));
    let same_bytes = Tree {
        nodes: vec![link, dir],
    };
    for (what, tree) in [("same name", same_name), ("same bytes", same_bytes)] {
        let planted = plant_snapshot(&repo, &id, &tree).await;
        let target = tempfile::tempdir().unwrap();
        let err = repo
            .restore(&planted, target.path(), RestoreOptions::default())
            .await
            .unwrap_err();
        let ie = integrity_error(&err).unwrap_or_else(|| panic!("{what}: {err}"));
        assert!(
            ie.problem.contains("two entries named \"a\""),
            "{what}: {ie}"
        );
        assert_eq!(listing(outside.path()), Vec::<String>::new(), "{what}");
        assert_eq!(listing(target.path()), Vec::<String>::new(), "{what}");
    }

    // The honest snapshot restores its symlink as a symlink, with its own
    // mtime, and nothing through it.
    let target = tempfile::tempdir().unwrap();
    repo.restore(&id, target.path(), RestoreOptions::default())
        .await
        .unwrap();
    let restored = target.path().join("link");
    assert_eq!(fs::read_link(&restored).unwrap(), outside.path());
    assert_eq!(
        fs::symlink_metadata(&restored).unwrap().modified().unwrap(),
        fs::symlink_metadata(src.path().join("link"))
            .unwrap()
            .modified()
            .unwrap()
    );
    assert_eq!(listing(outside.path()), Vec::<String>::new());
}

#[test]
fn nothing_is_written_through_a_symlink_the_restore_created() {
    let outside = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let dest = Dest::open(target.path()).unwrap();
    dest.symlink(Path::new("a"), outside.path().to_str().unwrap(), 0, 0)
        .unwrap();
    let through = conflict(
        &target.path().join("a"),
        EntryKind::Directory,
        EntryKind::Symlink,
    );
    let err = dest.create_dir(Path::new("a/b")).unwrap_err();
    assert_eq!(conflict_of(&err), through);
    let err = dest.create_file(Path::new("a/b.txt"), 3).unwrap_err();
    assert_eq!(conflict_of(&err), through);
    let err = dest.open_file(Path::new("a/b.txt")).unwrap_err();
    assert_eq!(conflict_of(&err), through);
    let err = dest
        .set_dir_metadata(Path::new("a"), Some(0o700), SystemTime::UNIX_EPOCH)
        .unwrap_err();
    assert_eq!(conflict_of(&err), through);
    // A directory where the link is wanted is not replaced.
    let err = dest.create_dir(Path::new("a")).unwrap_err();
    assert_eq!(conflict_of(&err), through);
    assert_eq!(listing(outside.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_where_a_directory_goes_is_a_conflict_naming_the_path() {
    let src = tempfile::tempdir().unwrap();
    fs::create_dir(src.path().join("sub")).unwrap();
    fs::write(src.path().join("sub/b.txt"), b"b").unwrap();
    let repo = repository().await;
    let id = backup(&repo, src.path()).await;

    let target = tempfile::tempdir().unwrap();
    fs::write(target.path().join("sub"), b"a file").unwrap();
    let file = target.path().join("sub");
    let options = RestoreOptions::default();
    let in_the_way = (file.as_path(), EntryKind::Directory, EntryKind::File);
    assert_refused(&repo, &id, target.path(), options, in_the_way).await;
    assert_eq!(fs::read(target.path().join("sub")).unwrap(), b"a file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_where_a_file_or_symlink_goes_is_a_conflict_and_the_rest_is_restored() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("clash.txt"), b"clash").unwrap();
    fs::write(src.path().join("empty"), b"").unwrap();
    fs::write(src.path().join("fine.txt"), b"fine").unwrap();
    symlink("fine.txt", src.path().join("link")).unwrap();
    let repo = repository().await;
    let id = backup(&repo, src.path()).await;

    for (name, wanted) in [
        ("clash.txt", EntryKind::File),
        ("empty", EntryKind::File),
        ("link", EntryKind::Symlink),
    ] {
        let target = tempfile::tempdir().unwrap();
        fs::create_dir(target.path().join(name)).unwrap();
        fs::write(target.path().join(name).join("inside"), b"mine").unwrap();
        let dir = target.path().join(name);
        let options = RestoreOptions::default();
        let in_the_way = (dir.as_path(), wanted, EntryKind::Directory);
        assert_refused(&repo, &id, target.path(), options, in_the_way).await;
        // The directory is untouched, the other entries are restored, and
        // no temporary file is left.
        assert_eq!(
            fs::read(target.path().join(name).join("inside")).unwrap(),
            b"mine"
        );
        let mut expected: Vec<String> = ["clash.txt", "empty", "fine.txt", "link"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        expected.push(format!("{name}/inside"));
        expected.sort();
        assert_eq!(listing(target.path()), expected, "{name}");
        assert_eq!(fs::read(target.path().join("fine.txt")).unwrap(), b"fine");
    }
}

/// A file's content as written through `dest`: created, written at its
/// offset, renamed to `rel`.
fn write_through(dest: &Dest, rel: &Path, content: &[u8]) {
    let tmp = rel.with_extension("tmp");
    dest.create_file(&tmp, content.len() as u64).unwrap();
    let file = dest.open_file(&tmp).unwrap();
    crate::repo::platform::write_all_at(&file, content, 0).unwrap();
    drop(file);
    dest.rename_into(&tmp, rel).unwrap();
}

#[test]
fn more_directories_than_handles_kept_are_all_restored() {
    let target = tempfile::tempdir().unwrap();
    let bound = 4;
    let dest = Dest::with_dir_handles(target.path(), bound).unwrap();
    // A chain deeper than the bound, and a row of siblings wider than it,
    // each with children, so walks start from evicted ancestors.
    let mut dirs = Vec::new();
    let mut deep = std::path::PathBuf::new();
    for level in 0..12 {
        deep.push(format!("d{level}"));
        dirs.push(deep.clone());
    }
    for i in 0..10 {
        let side = Path::new("d0/d1").join(format!("s{i}"));
        dirs.push(side.clone());
        dirs.push(side.join("leaf"));
    }
    for dir in &dirs {
        dest.create_dir(dir).unwrap();
        assert!(dest.dir_handles_kept() <= bound);
    }
    // Written in an order that jumps between the directories.
    let files: Vec<_> = dirs.iter().map(|d| d.join("f.txt")).collect();
    for (i, file) in files.iter().enumerate().rev().step_by(2) {
        write_through(&dest, file, format!("file {i}").as_bytes());
        assert!(dest.dir_handles_kept() <= bound);
    }
    for (i, file) in files.iter().enumerate().rev().skip(1).step_by(2) {
        write_through(&dest, file, format!("file {i}").as_bytes());
        assert!(dest.dir_handles_kept() <= bound);
    }
    for dir in dirs.iter().rev() {
        dest.set_dir_metadata(dir, Some(0o750), SystemTime::UNIX_EPOCH)
            .unwrap();
    }
    for (i, file) in files.iter().enumerate() {
        let content = fs::read(target.path().join(file)).unwrap();
        assert_eq!(
            content,
            format!("file {i}").as_bytes(),
            "{}",
            file.display()
        );
    }
    for dir in &dirs {
        let meta = fs::metadata(target.path().join(dir)).unwrap();
        assert_eq!(meta.modified().unwrap(), SystemTime::UNIX_EPOCH);
    }
    assert_eq!(listing(target.path()).len(), dirs.len() + files.len());
}

#[test]
fn a_directory_swapped_for_a_symlink_after_it_was_opened_is_not_followed() {
    for bound in [0, 8] {
        let outside = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let dest = Dest::with_dir_handles(target.path(), bound).unwrap();
        dest.create_dir(Path::new("a")).unwrap();
        write_through(&dest, Path::new("a/one"), b"one");
        fs::rename(target.path().join("a"), target.path().join("moved")).unwrap();
        symlink(outside.path(), target.path().join("a")).unwrap();
        let second = dest.create_file(Path::new("a/two"), 3);
        if bound == 0 {
            // Walked afresh: the symlink is found and refused.
            let link = target.path().join("a");
            let through = conflict(&link, EntryKind::Directory, EntryKind::Symlink);
            assert_eq!(conflict_of(&second.unwrap_err()), through);
        } else {
            // The kept handle names the directory it was opened as, which
            // is now "moved": the file goes there, not through the link.
            second.unwrap();
            assert!(target.path().join("moved/two").is_file());
        }
        assert_eq!(listing(outside.path()), Vec::<String>::new());
    }
}

/// Random bytes, so that a file of several chunks stays several blobs.
fn noise(len: usize) -> Vec<u8> {
    use rand::RngCore as _;
    let mut bytes = vec![0; len];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// Files of no blob, one blob and several blobs, and directories, come
/// back with every permission bit and their mtimes whether creating them
/// gave the mode (the umask's share) or a chmod had to (set-id, sticky,
/// no write permission), into a fresh destination and into one holding a
/// directory and a stale file of the snapshot's names already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_permission_bit_and_mtime_comes_back_whatever_creation_gave() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let src = tempfile::tempdir().unwrap();
    let dirs = [
        ("d-default", 0o755),
        ("d-private", 0o700),
        ("d-sticky", 0o1777),
        ("d-setgid", 0o2755),
        ("d-read-only", 0o555),
    ];
    let files = [
        ("empty-read-only", 0, 0o444),
        ("empty-no-access", 0, 0o000),
        ("one-read-only", 100, 0o444),
        ("one-no-access", 100, 0o000),
        ("one-default", 100, 0o644),
        ("one-exec", 100, 0o755),
        ("one-setuid", 100, 0o4755),
    ];
    let many = [
        ("many-read-only", 0o444),
        ("many-setuid", 0o4711),
        ("many-default", 0o644),
    ];
    let mut expected = Vec::new();
    let mut put = |rel: String, content: Vec<u8>, mode: u32, sec: u64| {
        let path = src.path().join(&rel);
        fs::write(&path, &content).unwrap();
        let mtime = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(sec);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        expected.push((rel, content, mode, mtime));
    };
    for (i, (dir, _)) in dirs.iter().enumerate() {
        fs::create_dir(src.path().join(dir)).unwrap();
        for (j, (name, len, mode)) in files.iter().enumerate() {
            let seed = (i * 100 + j) as u64;
            put(
                format!("{dir}/{name}"),
                noise(*len),
                *mode,
                1_600_000_000 + seed,
            );
        }
    }
    for (j, (name, mode)) in many.iter().enumerate() {
        put(
            name.to_string(),
            noise(3 << 20),
            *mode,
            1_650_000_000 + j as u64,
        );
    }
    let dir_mtime = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000);
    for (dir, mode) in dirs {
        let path = src.path().join(dir);
        fs::File::open(&path)
            .unwrap()
            .set_modified(dir_mtime)
            .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
    let repo = repository().await;
    let id = backup(&repo, src.path()).await;

    let out = tempfile::tempdir().unwrap();
    let fresh = out.path().join("fresh");
    let used = out.path().join("used");
    fs::create_dir_all(used.join("d-default")).unwrap();
    fs::write(
        used.join("d-default/one-default"),
        b"stale and longer than the file",
    )
    .unwrap();
    fs::write(used.join("unrelated"), b"left alone").unwrap();
    for target in [&fresh, &used] {
        repo.restore(&id, target, RestoreOptions::default())
            .await
            .unwrap();
        for (rel, content, mode, mtime) in &expected {
            let path = target.join(rel);
            let meta = fs::symlink_metadata(&path).unwrap();
            assert_eq!(meta.mode() & 0o7777, *mode, "mode of {}", path.display());
            assert_eq!(
                meta.modified().unwrap(),
                *mtime,
                "mtime of {}",
                path.display()
            );
            assert_eq!(&fs::read(&path).unwrap(), content, "{}", path.display());
        }
        for (dir, mode) in dirs {
            let meta = fs::symlink_metadata(target.join(dir)).unwrap();
            assert_eq!(
                meta.mode() & 0o7777,
                mode,
                "mode of {dir} in {}",
                target.display()
            );
            assert_eq!(meta.modified().unwrap(), dir_mtime, "mtime of {dir}");
        }
        let names = listing(target);
        assert!(
            names.iter().all(|n| !n.contains(".atlas-restore-")),
            "no temporary file left: {names:?}"
        );
    }
    assert_eq!(fs::read(used.join("unrelated")).unwrap(), b"left alone");
    // Let the temporary directories be removed.
    for target in [&fresh, &used] {
        for (dir, _) in dirs {
            fs::set_permissions(target.join(dir), fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    for (dir, _) in dirs {
        fs::set_permissions(src.path().join(dir), fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Blobs taken from a download's chunks: across chunk edges, after gaps,
/// and no more than what arrived.
#[test]
fn a_window_hands_out_exactly_the_bytes_of_each_blob() {
    use bytes::Bytes;
    let pack: Vec<u8> = (0..200u8).collect();
    let mut window = super::Window::at(10);
    for (a, b) in [(10, 17), (17, 18), (18, 60), (60, 130)] {
        window.push(Bytes::copy_from_slice(&pack[a..b]));
    }
    assert_eq!(window.end(), 130);
    let mut take = |at: u64, len: u64| {
        window.skip_to(at);
        window.take(len).concat()
    };
    assert_eq!(take(10, 5), &pack[10..15], "inside the first chunk");
    assert_eq!(take(15, 10), &pack[15..25], "over two chunk edges");
    assert_eq!(take(40, 30), &pack[40..70], "after a gap, across chunks");
    assert_eq!(take(70, 0), Vec::<u8>::new());
    assert_eq!(take(100, 50), &pack[100..130], "only what arrived");
    assert_eq!(window.end(), 130);
    window.push(Bytes::copy_from_slice(&pack[130..140]));
    window.skip_to(135);
    assert_eq!(window.take(5).concat(), &pack[135..140]);
}
