//! Snapshot files: written atomically, checksummed, verified before use.
//!
//! Layout of a snapshot file (all integers little-endian):
//!
//! ```text
//! "NACOSD-SNAP\0" | version u32 = 1 | meta_len u32 | meta (bincode SnapshotMeta)
//!                 | data_len u64 | data (the state machine's bytes) | crc32 u32
//! ```
//!
//! The CRC32 covers every byte before it. A snapshot is built under a `.tmp` name,
//! fsync'd, renamed to `snapshot-<index>-<term>.snap` and the directory fsync'd, so a
//! crash leaves either the old snapshot or the complete new one, never a half file
//! that fails to load (Nacos issue #11959). A file that fails verification is renamed
//! to `*.corrupt`, reported, and the next older valid snapshot is used.
//!
//! The same file is what travels to a lagging follower: it arrives under an
//! `incoming-*.tmp` name, is verified, renamed into place (so the newest snapshot on
//! disk is never older than what the state machine holds) and then restored into the
//! state machine.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::raft::types::SnapshotMeta;

const MAGIC: &[u8; 12] = b"NACOSD-SNAP\0";
const VERSION: u32 = 1;
/// Snapshots kept per group besides the newest (older ones are deleted).
const KEEP_OLDER: usize = 1;

/// openraft's `SnapshotData` for every group: a verified snapshot file on disk.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

impl SnapshotFile {
    /// Size of the file in bytes.
    pub fn size(&self) -> io::Result<u64> {
        Ok(fs::metadata(&self.path)?.len())
    }
}

/// The snapshot directory of one group.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn corrupt(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot file {} is corrupt: {what}", path.display()),
    )
}

impl SnapshotDir {
    /// Open the directory, removing temporary files a crash left behind.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(SnapshotDir { dir })
    }

    /// A fresh temporary path in this directory (for building or receiving).
    pub fn temp_path(&self, kind: &str) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{kind}-{}-{n}.tmp", std::process::id()))
    }

    fn final_path(&self, meta: &SnapshotMeta) -> PathBuf {
        let (index, term) = meta
            .last_log_id
            .as_ref()
            .map(|l| (l.index, l.leader_id.term))
            .unwrap_or((0, 0));
        self.dir
            .join(format!("snapshot-{index:020}-{term:020}.snap"))
    }

    /// Write a snapshot file: header, then the data written by `write_data`, then the
    /// checksum; fsync, rename into place, fsync the directory, prune old snapshots.
    pub fn write(
        &self,
        meta: &SnapshotMeta,
        write_data: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<SnapshotFile> {
        let tmp = self.temp_path("build");
        let result = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            let mut w = CountingWriter::new(BufWriter::with_capacity(1 << 20, file));
            let meta_bytes = bincode::serialize(meta).map_err(io::Error::other)?;
            w.write_all(MAGIC)?;
            w.write_all(&VERSION.to_le_bytes())?;
            w.write_all(&(meta_bytes.len() as u32).to_le_bytes())?;
            w.write_all(&meta_bytes)?;
            let len_pos = (MAGIC.len() + 8 + meta_bytes.len()) as u64;
            w.write_all(&0u64.to_le_bytes())?; // data length, patched below
            let before = w.count;
            write_data(&mut w)?;
            let data_len = w.count - before;
            // The data length is only known now: patch it in, then checksum the
            // finished bytes in one sequential pass over the file.
            let mut inner = w.into_inner()?;
            inner.flush()?;
            let mut file = inner.into_inner().map_err(|e| e.into_error())?;
            file.seek(SeekFrom::Start(len_pos))?;
            file.write_all(&data_len.to_le_bytes())?;
            file.seek(SeekFrom::Start(0))?;
            let crc = crc_of_reader(&mut BufReader::new(&mut file), None)?;
            file.seek(SeekFrom::End(0))?;
            file.write_all(&crc.to_le_bytes())?;
            file.sync_all()?;
            Ok::<_, io::Error>(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.adopt(&tmp, meta)
    }

    /// Make `file` (already verified) this group's newest snapshot: a temporary file
    /// in this directory is renamed into place; a file elsewhere is copied in first; a
    /// snapshot already in place is kept as it is.
    pub fn keep(&self, file: &Path, meta: &SnapshotMeta) -> io::Result<SnapshotFile> {
        let in_dir = file.parent() == Some(self.dir.as_path());
        if in_dir && file.extension().is_some_and(|e| e == "snap") {
            return Ok(SnapshotFile {
                path: file.to_path_buf(),
            });
        }
        if in_dir {
            return self.adopt(file, meta);
        }
        let tmp = self.temp_path("copy");
        fs::copy(file, &tmp)?;
        File::open(&tmp)?.sync_all()?;
        self.adopt(&tmp, meta)
    }

    /// Move a complete, verified file (built or received) into place as the newest
    /// snapshot.
    pub fn adopt(&self, tmp: &Path, meta: &SnapshotMeta) -> io::Result<SnapshotFile> {
        let path = self.final_path(meta);
        fs::rename(tmp, &path)?;
        sync_dir(&self.dir)?;
        self.prune(&path)?;
        Ok(SnapshotFile { path })
    }

    fn prune(&self, newest: &Path) -> io::Result<()> {
        let mut snaps = self.list()?;
        snaps.retain(|p| p != newest);
        snaps.sort();
        let excess = snaps.len().saturating_sub(KEEP_OLDER);
        for old in snaps.into_iter().take(excess) {
            let _ = fs::remove_file(old);
        }
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "snap") {
                out.push(path);
            }
        }
        Ok(out)
    }

    /// The newest snapshot that verifies. A file that fails its checks is renamed to
    /// `*.corrupt` and skipped, with an error logged. Any other I/O error (too many open
    /// files, permissions, a failing disk) is returned as it is: it says nothing about
    /// the file, which must not be set aside for it.
    pub fn latest(&self) -> io::Result<Option<(SnapshotMeta, SnapshotFile)>> {
        let mut snaps = self.list()?;
        snaps.sort();
        while let Some(path) = snaps.pop() {
            match verify(&path) {
                Ok(meta) => return Ok(Some((meta, SnapshotFile { path }))),
                Err(e) if is_corruption(&e) => {
                    tracing::error!(error = %e, "ignoring corrupt snapshot");
                    let _ = fs::rename(&path, path.with_extension("corrupt"));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

/// True for errors that mean the file's content is bad (as opposed to an error of the
/// file system or the process while reading it).
fn is_corruption(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
    )
}

/// Check magic, version and checksum; return the meta stored in the file.
pub fn verify(path: &Path) -> io::Result<SnapshotMeta> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len < (MAGIC.len() + 4 + 4 + 8 + 4) as u64 {
        return Err(corrupt(path, format!("only {len} bytes")));
    }
    let body = len - 4;
    let crc = crc_of_reader(&mut BufReader::new(&mut file).take(body), None)?;
    let mut trailer = [0u8; 4];
    file.seek(SeekFrom::Start(body))?;
    file.read_exact(&mut trailer)?;
    let stored = u32::from_le_bytes(trailer);
    if crc != stored {
        return Err(corrupt(
            path,
            format!("checksum mismatch (stored {stored:08x}, computed {crc:08x})"),
        ));
    }
    let (meta, data_len) = read_header(path, &mut BufReader::new(File::open(path)?))?;
    let header_len = (MAGIC.len() + 8) as u64 + bincode::serialized_size(&meta).unwrap_or(0) + 8;
    if header_len + data_len + 4 != len {
        return Err(corrupt(path, "data length does not match the file size"));
    }
    Ok(meta)
}

fn read_header(path: &Path, r: &mut impl Read) -> io::Result<(SnapshotMeta, u64)> {
    let mut magic = [0u8; 12];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(corrupt(path, "not a nacosd snapshot (bad magic)"));
    }
    let mut u32buf = [0u8; 4];
    r.read_exact(&mut u32buf)?;
    let version = u32::from_le_bytes(u32buf);
    if version != VERSION {
        return Err(corrupt(path, format!("unsupported version {version}")));
    }
    r.read_exact(&mut u32buf)?;
    let meta_len = u32::from_le_bytes(u32buf) as usize;
    if meta_len > 64 << 20 {
        return Err(corrupt(path, "implausible meta length"));
    }
    let mut meta_bytes = vec![0u8; meta_len];
    r.read_exact(&mut meta_bytes)?;
    let meta: SnapshotMeta =
        bincode::deserialize(&meta_bytes).map_err(|e| corrupt(path, format!("meta: {e}")))?;
    let mut u64buf = [0u8; 8];
    r.read_exact(&mut u64buf)?;
    Ok((meta, u64::from_le_bytes(u64buf)))
}

/// Open a verified snapshot file and return its meta and a reader over exactly its
/// data section.
pub fn open_data(path: &Path) -> io::Result<(SnapshotMeta, impl Read)> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let (meta, data_len) = read_header(path, &mut r)?;
    Ok((meta, r.take(data_len)))
}

fn crc_of_reader(r: &mut impl Read, limit: Option<u64>) -> io::Result<u32> {
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut left = limit.unwrap_or(u64::MAX);
    while left > 0 {
        let want = buf.len().min(left.min(usize::MAX as u64) as usize);
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher.finalize())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    OpenOptions::new().read(true).open(dir)?.sync_all()
}

/// A writer that counts the bytes passing through.
struct CountingWriter<W: Write> {
    inner: W,
    count: u64,
}

impl<W: Write> CountingWriter<W> {
    fn new(inner: W) -> Self {
        CountingWriter { inner, count: 0 }
    }
    fn into_inner(self) -> io::Result<W> {
        Ok(self.inner)
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::TypeConfig;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id::<TypeConfig>(3, 1, index)),
            last_membership: Default::default(),
        }
    }

    #[test]
    fn written_snapshot_verifies_and_reads_back() {
        let td = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(td.path().join("g")).unwrap();
        let f = dir
            .write(&meta(42), |w| w.write_all(b"hello state"))
            .unwrap();
        assert_eq!(verify(&f.path).unwrap(), meta(42));
        let (m, mut data) = open_data(&f.path).unwrap();
        assert_eq!(m, meta(42));
        let mut s = String::new();
        data.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello state");
        let (latest_meta, latest) = dir.latest().unwrap().unwrap();
        assert_eq!(latest_meta, meta(42));
        assert_eq!(latest.path, f.path);
    }

    #[test]
    fn a_flipped_byte_is_detected_and_the_older_snapshot_used() {
        let td = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(td.path().join("g")).unwrap();
        dir.write(&meta(9), |w| w.write_all(b"older")).unwrap();
        let newer = dir.write(&meta(10), |w| w.write_all(b"newer")).unwrap();
        let mut bytes = fs::read(&newer.path).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 0x40;
        fs::write(&newer.path, bytes).unwrap();

        let err = verify(&newer.path).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        let (m, _) = dir.latest().unwrap().unwrap();
        assert_eq!(m, meta(9), "falls back to the older valid snapshot");
        assert!(newer.path.with_extension("corrupt").exists());
    }

    #[test]
    fn a_read_error_is_returned_and_the_file_not_set_aside() {
        let td = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(td.path().join("g")).unwrap();
        dir.write(&meta(3), |w| w.write_all(b"state")).unwrap();
        // Something that cannot be read as a file (the same holds for EMFILE or
        // EACCES): reading it fails with an error of the file system, not of the data.
        let odd = td
            .path()
            .join("g")
            .join(format!("snapshot-{:020}-{:020}.snap", 9, 1));
        fs::create_dir(&odd).unwrap();
        let err = dir.latest().unwrap_err();
        assert!(!is_corruption(&err), "{err}");
        assert!(odd.exists(), "left where it was");
        assert!(!odd.with_extension("corrupt").exists());
    }

    #[test]
    fn truncated_and_foreign_files_are_rejected() {
        let td = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(td.path().join("g")).unwrap();
        let f = dir.write(&meta(5), |w| w.write_all(&[7u8; 5000])).unwrap();
        let bytes = fs::read(&f.path).unwrap();
        fs::write(&f.path, &bytes[..bytes.len() - 100]).unwrap();
        assert!(verify(&f.path).is_err());
        fs::write(&f.path, b"definitely not a snapshot file at all").unwrap();
        assert!(verify(&f.path).is_err());
    }

    #[test]
    fn leftover_temp_files_are_removed_and_old_snapshots_pruned() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("g");
        let dir = SnapshotDir::open(path.clone()).unwrap();
        fs::write(dir.temp_path("build"), b"half").unwrap();
        for i in 1..=4 {
            dir.write(&meta(i), |w| w.write_all(b"x")).unwrap();
        }
        let dir = SnapshotDir::open(path.clone()).unwrap();
        let mut names: Vec<_> = fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 1 + KEEP_OLDER, "{names:?}");
        assert!(names.iter().all(|n| n.ends_with(".snap")));
        assert_eq!(dir.latest().unwrap().unwrap().0, meta(4));
    }
}
