//! The build context's stat cache across builds: a file whose device, inode, size, mtime and
//! ctime are unchanged is not read again by a later build; any change among them, a file
//! changed within the racy window of the cache write, or a damaged cache file makes kiln read
//! (and hash) the file again. Each "build" here is a fresh `Context` over the same directory
//! with the same cache directory, as two `kiln build` runs are.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use kiln_builder::context::Context;
use kiln_cache::digest::Digest;

/// A context with `count` files under `src/`, and an empty cache directory.
fn setup(count: usize) -> (tempfile::TempDir, tempfile::TempDir) {
    let context = tempfile::tempdir().unwrap();
    fs::create_dir(context.path().join("src")).unwrap();
    for index in 0..count {
        fs::write(
            context.path().join(format!("src/f{index}")),
            format!("file {index}\n"),
        )
        .unwrap();
    }
    (context, tempfile::tempdir().unwrap())
}

/// One build's view: the digest of `src` and how many files it read to get it.
fn build(root: &Path, cache: &Path, save_delay: Duration) -> (Digest, usize) {
    let context = Context::new(root, None);
    let hashes = context.remember_hashes(cache);
    let source = context.sources("src").unwrap().remove(0);
    let digest = context.digest(&source, None, &mut BTreeMap::new()).unwrap();
    // As if the build finished `save_delay` later: past the racy window, the digests are kept.
    hashes.save_at(SystemTime::now() + save_delay).unwrap();
    (digest, context.files_hashed())
}

const LATER: Duration = Duration::from_secs(10);

/// Sets a file's mtime (which also moves its ctime to now).
fn set_mtime(path: &Path, mtime: SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

/// Waits for the file system's timestamp clock (coarse, a few milliseconds) to move on, so a
/// change now gets a ctime different from the last one.
fn next_tick() {
    std::thread::sleep(Duration::from_millis(30));
}

#[test]
fn unchanged_files_are_not_read_by_a_later_build() {
    let (context, cache) = setup(50);
    let (first, read) = build(context.path(), cache.path(), LATER);
    assert_eq!(read, 50, "a first build reads every file");
    let (second, read) = build(context.path(), cache.path(), LATER);
    assert_eq!(second, first);
    assert_eq!(read, 0, "a second build reads no unchanged file");
}

#[test]
fn same_size_and_mtime_but_a_new_ctime_is_read_again() {
    let (context, cache) = setup(3);
    let file = context.path().join("src/f1");
    let mtime = fs::metadata(&file).unwrap().modified().unwrap();
    let (first, _) = build(context.path(), cache.path(), LATER);
    next_tick();
    // Same length, same mtime: only the ctime (and the content) tell the change.
    fs::write(&file, "FILE 1\n").unwrap();
    set_mtime(&file, mtime);
    let metadata = fs::metadata(&file).unwrap();
    assert_eq!(metadata.modified().unwrap(), mtime);
    assert_eq!(metadata.len(), "file 1\n".len() as u64);
    let (second, read) = build(context.path(), cache.path(), LATER);
    assert_eq!(read, 1, "only the changed file is read");
    assert_ne!(second, first, "the new content changes the digest");
}

#[test]
fn a_replaced_file_with_a_new_inode_is_read_again() {
    let (context, cache) = setup(3);
    let file = context.path().join("src/f2");
    let old = fs::metadata(&file).unwrap();
    let (first, _) = build(context.path(), cache.path(), LATER);
    let temp = context.path().join("new");
    fs::write(&temp, "FILE 2\n").unwrap();
    set_mtime(&temp, old.modified().unwrap());
    fs::rename(&temp, &file).unwrap();
    let (second, read) = build(context.path(), cache.path(), LATER);
    assert_eq!(read, 1);
    assert_ne!(second, first);
}

#[test]
fn a_size_or_mtime_change_is_read_again() {
    let (context, cache) = setup(3);
    build(context.path(), cache.path(), LATER);
    fs::write(context.path().join("src/f0"), "longer content\n").unwrap();
    set_mtime(
        &context.path().join("src/f1"),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
    );
    let (_, read) = build(context.path(), cache.path(), LATER);
    assert_eq!(read, 2);
}

#[test]
fn files_changed_within_the_racy_window_are_not_trusted() {
    let (context, cache) = setup(5);
    // The cache is written right away: every file changed less than two seconds before.
    let (first, read) = build(context.path(), cache.path(), Duration::ZERO);
    assert_eq!(read, 5);
    let (second, read) = build(context.path(), cache.path(), LATER);
    assert_eq!(second, first);
    assert_eq!(read, 5, "no racy digest was kept");
    let (_, read) = build(context.path(), cache.path(), LATER);
    assert_eq!(read, 0);
}

#[test]
fn a_damaged_cache_is_ignored() {
    let (context, cache) = setup(20);
    let (first, _) = build(context.path(), cache.path(), LATER);
    let files: Vec<_> = fs::read_dir(cache.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one cache file per context: {files:?}");
    let mut bytes = fs::read(&files[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&files[0], &bytes).unwrap();
    let (second, read) = build(context.path(), cache.path(), LATER);
    assert_eq!(second, first);
    assert_eq!(read, 20, "every file is read again");
    // The next build rewrote it whole.
    let (_, read) = build(context.path(), cache.path(), LATER);
    assert_eq!(read, 0);
    fs::write(&files[0], b"garbage").unwrap();
    let (third, read) = build(context.path(), cache.path(), LATER);
    assert_eq!((third, read), (first, 20));
}

#[test]
fn a_cache_is_written_when_the_handle_is_dropped() {
    let (context, cache) = setup(4);
    {
        let context = Context::new(context.path(), None);
        let _hashes = context.remember_hashes(cache.path());
        let source = context.sources("src").unwrap().remove(0);
        context.digest(&source, None, &mut BTreeMap::new()).unwrap();
    }
    assert_eq!(fs::read_dir(cache.path()).unwrap().count(), 1);
}

#[test]
fn parallel_hashing_gives_the_sequential_digest() {
    // The directory digest is one ordered record of every entry, whatever order the rayon
    // workers finish in: a fresh build and a fully cached one agree, and a renamed file moves it.
    let (context, cache) = setup(400);
    let (first, _) = build(context.path(), cache.path(), LATER);
    let (cached, _) = build(context.path(), cache.path(), LATER);
    assert_eq!(first, cached);
    let fresh = tempfile::tempdir().unwrap();
    let (uncached, read) = build(context.path(), fresh.path(), LATER);
    assert_eq!((uncached, read), (first, 400));
    fs::rename(context.path().join("src/f7"), context.path().join("src/g7")).unwrap();
    let (renamed, _) = build(context.path(), cache.path(), LATER);
    assert_ne!(renamed, first, "names are part of the digest");
}

#[test]
fn concurrent_builds_leave_a_whole_cache() {
    let (context, cache) = setup(200);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| build(context.path(), cache.path(), LATER));
        }
    });
    let names: Vec<_> = fs::read_dir(cache.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");
    let (_, read) = build(context.path(), cache.path(), LATER);
    assert_eq!(read, 0, "the last writer's cache is whole");
}
