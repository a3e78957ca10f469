//! Turning a requested file name into something safe to serve.
//!
//! Two steps: [`sanitize`] is pure (it normalises what the client sent and
//! refuses `..`), [`open_under_root`] does the file-system part (resolve
//! symlinks, check the result is still under the root, open without
//! following a last-moment symlink, require a regular file).
//!
//! Invariant: a [`PathError`] carries no server path, so nothing derived from
//! it can leak the layout of the server's disk into an error packet.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::codec::ErrorCode;

/// Why a request cannot be served. The messages are the ones sent to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("file not found")]
    NotFound,
    #[error("access violation")]
    AccessViolation,
}

impl PathError {
    pub fn code(self) -> ErrorCode {
        match self {
            PathError::NotFound => ErrorCode::FileNotFound,
            PathError::AccessViolation => ErrorCode::AccessViolation,
        }
    }
}

/// Normalises a requested name to a relative `a/b/c` path: backslashes (sent
/// by some PXE clients) become `/`, leading `/` and empty or `.` components
/// are dropped. Any `..` component or NUL byte is refused outright
/// rather than resolved, so a request cannot even probe outside the root.
pub fn sanitize(requested: &str) -> Result<String, PathError> {
    if requested.contains('\0') {
        return Err(PathError::AccessViolation);
    }
    let normalised = requested.replace('\\', "/");
    let mut parts = Vec::new();
    for part in normalised.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err(PathError::AccessViolation),
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return Err(PathError::NotFound);
    }
    Ok(parts.join("/"))
}

/// Opens `relative` (from [`sanitize`]) under `root`. Blocking: call it from
/// `spawn_blocking`. Returns the open file and its size.
pub fn open_under_root(root: &Path, relative: &str) -> Result<(File, u64), PathError> {
    let root = root.canonicalize().map_err(|err| {
        tracing::warn!(error = %err, "TFTP root cannot be resolved");
        PathError::NotFound
    })?;
    let resolved = root
        .join(relative)
        .canonicalize()
        .map_err(io_to_path_error)?;
    if !resolved.starts_with(&root) {
        return Err(PathError::AccessViolation);
    }
    // `resolved` has no symlinks left; O_NOFOLLOW catches one swapped in
    // since, and O_NONBLOCK keeps a FIFO from hanging the open.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&resolved)
        .map_err(io_to_path_error)?;
    let meta = file.metadata().map_err(io_to_path_error)?;
    if !meta.is_file() {
        return Err(PathError::AccessViolation);
    }
    Ok((file, meta.len()))
}

fn io_to_path_error(err: io::Error) -> PathError {
    match err.kind() {
        io::ErrorKind::NotFound => PathError::NotFound,
        _ => PathError::AccessViolation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_table() {
        use PathError::*;
        let table: &[(&str, Result<&str, PathError>)] = &[
            ("undionly.kpxe", Ok("undionly.kpxe")),
            ("/undionly.kpxe", Ok("undionly.kpxe")),
            ("///grub/grub.cfg", Ok("grub/grub.cfg")),
            ("\\boot\\pxelinux.0", Ok("boot/pxelinux.0")),
            ("a//./b", Ok("a/b")),
            ("dir/", Ok("dir")),
            ("..", Err(AccessViolation)),
            ("../etc/passwd", Err(AccessViolation)),
            ("/../../etc/passwd", Err(AccessViolation)),
            ("a/../b", Err(AccessViolation)),
            ("a\\..\\..\\b", Err(AccessViolation)),
            ("a\0b", Err(AccessViolation)),
            ("/", Err(NotFound)),
            (".", Err(NotFound)),
            ("", Err(NotFound)),
            ("..foo/bar..", Ok("..foo/bar..")),
        ];
        for (input, expected) in table {
            assert_eq!(sanitize(input).as_deref(), expected.as_deref(), "{input:?}");
        }
    }

    #[test]
    fn open_confines_to_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("ok.bin"), b"hello").unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("escape"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("escdir")).unwrap();
        std::os::unix::fs::symlink("ok.bin", root.path().join("alias")).unwrap();

        let (_, size) = open_under_root(root.path(), "ok.bin").unwrap();
        assert_eq!(size, 5);
        assert_eq!(open_under_root(root.path(), "alias").unwrap().1, 5);
        assert_eq!(
            open_under_root(root.path(), "escape").unwrap_err(),
            PathError::AccessViolation
        );
        assert_eq!(
            open_under_root(root.path(), "escdir/secret").unwrap_err(),
            PathError::AccessViolation
        );
        assert_eq!(
            open_under_root(root.path(), "sub").unwrap_err(),
            PathError::AccessViolation
        );
        assert_eq!(
            open_under_root(root.path(), "missing").unwrap_err(),
            PathError::NotFound
        );
    }
}
