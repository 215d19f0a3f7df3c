//! Durability in one place: fsync of files and directories, durable rename,
//! preallocation, positional writes. Every other module goes through here.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// How a file is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fdatasync`: data and the metadata needed to read it back (size). The
    /// WAL uses this for every flush.
    #[default]
    Data,
    /// `fsync`: data and all metadata.
    All,
    /// No sync at all. Only for tests and benchmarks that measure everything
    /// else: nothing written under this policy survives a power loss.
    Never,
}

impl FsyncPolicy {
    /// Syncs `file` according to the policy.
    ///
    /// # Errors
    ///
    /// The error of `fdatasync`/`fsync`.
    pub fn sync(self, file: &File) -> io::Result<()> {
        match self {
            FsyncPolicy::Data => file.sync_data(),
            FsyncPolicy::All => file.sync_all(),
            FsyncPolicy::Never => Ok(()),
        }
    }
}

/// Fsyncs a directory, making the creation, removal and renaming of its
/// entries durable.
///
/// # Errors
///
/// The error of `open` or `fsync` on the directory.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically and durably: write a temporary file
/// next to it, fsync it, rename it over `path`, fsync the directory.
///
/// # Errors
///
/// Any I/O error on the way; `path` then holds either the old or the new
/// contents, never a mix.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "atomic_write: path has no file name",
        )
    })?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let f = File::create(&tmp)?;
        f.write_all_at(bytes, 0)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// Preallocates `len` bytes of `file` (the file size becomes at least `len`)
/// so that later writes inside it cannot fail for lack of space. Uses
/// `fallocate`, falling back to writing zeros where it is not supported.
///
/// # Errors
///
/// `ENOSPC` when the disk is full, or any other I/O error.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let off_len = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "preallocation too large"))?;
        loop {
            // SAFETY: fallocate on a valid, open file descriptor owned by `file`;
            // no memory is passed to the kernel.
            let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off_len) };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => break,
                _ => return Err(e),
            }
        }
    }
    zero_fill(file, len)
}

fn zero_fill(file: &File, len: u64) -> io::Result<()> {
    let cur = file.metadata()?.len();
    if cur >= len {
        return Ok(());
    }
    let zeros = vec![0u8; 1 << 20];
    let mut pos = cur;
    while pos < len {
        let n = (len - pos).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// Cuts `file` at `at` and re-extends it to `len` bytes of zeros after it:
/// removes a torn tail so that nothing of it can reappear later.
///
/// # Errors
///
/// Any I/O error of `ftruncate`, `fallocate` or `fsync`.
pub fn zero_tail(file: &File, at: u64, len: u64) -> io::Result<()> {
    file.set_len(at)?;
    preallocate(file, len.max(at))?;
    file.sync_all()
}

/// Whether an I/O error means "no space left on the device".
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_contents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two!").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two!");
        assert!(!dir.path().join("state.tmp").exists());
    }

    #[test]
    fn preallocate_and_zero_tail() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        preallocate(&f, 8192).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 8192);
        f.write_all_at(&[7u8; 100], 0).unwrap();
        zero_tail(&f, 10, 8192).unwrap();
        let mut buf = vec![1u8; 100];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..10], &[7u8; 10]);
        assert!(buf[10..].iter().all(|&b| b == 0));
        assert_eq!(f.metadata().unwrap().len(), 8192);
        zero_fill(&f, 10000).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 10000);
    }
}
