//! The library's error type. `Corrupt` (the bytes on disk are wrong) is kept apart from
//! `Io` (the disk or the OS failed) so callers can answer EIO, retry, or name the damage.
//! It is `Clone` (the `io::Error` sits behind an `Arc`) so every waiter of a shared decode
//! gets the same error, nothing lost.

use std::path::PathBuf;
use std::sync::Arc;

use crate::codec::CodecError;
use crate::model::ModelError;

#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The container is damaged; `chunk` names the chunk when one is to blame.
    #[error("{}: corrupt{}: {what}", file.display(), chunk.map(|c| format!(" chunk {c}")).unwrap_or_default())]
    Corrupt {
        file: PathBuf,
        chunk: Option<u32>,
        what: String,
    },
    #[error("{}: format version {actual} is newer than this dcfs understands ({expected}); upgrade dcfs", file.display())]
    VersionTooNew { file: PathBuf, expected: u16, actual: u16 },
    #[error("{}: {source}", file.display())]
    Model {
        file: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("{}: changed while it was being read ({what}); nothing was written for it", file.display())]
    Changed { file: PathBuf, what: String },
    /// What was asked for does not exist (ENOENT at the mount).
    #[error("{}: {what}", path.display())]
    NotFound { path: PathBuf, what: String },
    /// A directory was needed and something else stands there (ENOTDIR).
    #[error("{}: {what}", path.display())]
    NotADirectory { path: PathBuf, what: String },
    /// A file was needed and a directory stands there (EISDIR).
    #[error("{}: {what}", path.display())]
    IsADirectory { path: PathBuf, what: String },
    /// Refused on purpose, e.g. a symlink that is never followed (EACCES).
    #[error("{}: {what}", path.display())]
    Refused { path: PathBuf, what: String },
    /// A write was asked of something read-only (EROFS).
    #[error("{}: {what}", path.display())]
    ReadOnly { path: PathBuf, what: String },
    /// The directory given as a pack is none: no marker, or a pack interrupted before it
    /// finished (EINVAL). Callers may offer to run `pack` again.
    #[error("{}: {what}", path.display())]
    NotAPack { path: PathBuf, what: String },
    /// Source and destination contain each other (EINVAL); nothing was read or written.
    #[error("{}: {what}", path.display())]
    Overlap { path: PathBuf, what: String },
    /// The destination holds something we will not write over (EEXIST): a non-empty
    /// directory that is not a pack, or a directory where a file or link goes.
    #[error("{}: {what}", path.display())]
    Occupied { path: PathBuf, what: String },
    /// A resource of our own could not be had, e.g. decode threads (EAGAIN); retrying may
    /// help, the data is not to blame.
    #[error("{}: {what}", path.display())]
    Resources { path: PathBuf, what: String },
    /// A request or argument that makes no sense (EINVAL); not for any case above.
    #[error("{}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }

    pub fn corrupt(file: impl Into<PathBuf>, chunk: Option<u32>, what: impl Into<String>) -> Error {
        Error::Corrupt {
            file: file.into(),
            chunk,
            what: what.into(),
        }
    }

    pub fn codec(file: impl Into<PathBuf>, chunk: u32, e: CodecError) -> Error {
        Error::corrupt(file, Some(chunk), e.to_string())
    }

    /// The errno the mount answers with: EIO for damaged data and for failures of the
    /// disk under the pack (the backing file's own errno would describe the pack, not the
    /// file being read), the matching errno for the path-shaped cases.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { .. }
            | Error::Corrupt { .. }
            | Error::VersionTooNew { .. }
            | Error::Model { .. }
            | Error::Changed { .. } => libc::EIO,
            Error::NotFound { .. } => libc::ENOENT,
            Error::NotADirectory { .. } => libc::ENOTDIR,
            Error::IsADirectory { .. } => libc::EISDIR,
            Error::Refused { .. } => libc::EACCES,
            Error::ReadOnly { .. } => libc::EROFS,
            Error::NotAPack { .. } | Error::Overlap { .. } | Error::Invalid { .. } => libc::EINVAL,
            Error::Occupied { .. } => libc::EEXIST,
            Error::Resources { .. } => libc::EAGAIN,
        }
    }

    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. } | Error::VersionTooNew { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_keeps_the_io_error_whole() {
        let e = Error::io("p", std::io::Error::from_raw_os_error(libc::ENOSPC));
        let c = e.clone();
        assert_eq!(c.to_string(), e.to_string());
        let Error::Io { source, .. } = c else {
            panic!("variant changed")
        };
        assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn errno_mapping() {
        let p = || PathBuf::from("p");
        let w = || String::from("w");
        let cases = [
            (
                Error::io("p", std::io::Error::from_raw_os_error(libc::ENOENT)),
                libc::EIO,
            ),
            (Error::corrupt("p", Some(3), "bad"), libc::EIO),
            (Error::NotFound { path: p(), what: w() }, libc::ENOENT),
            (Error::NotADirectory { path: p(), what: w() }, libc::ENOTDIR),
            (Error::IsADirectory { path: p(), what: w() }, libc::EISDIR),
            (Error::Refused { path: p(), what: w() }, libc::EACCES),
            (Error::ReadOnly { path: p(), what: w() }, libc::EROFS),
            (Error::NotAPack { path: p(), what: w() }, libc::EINVAL),
            (Error::Overlap { path: p(), what: w() }, libc::EINVAL),
            (Error::Occupied { path: p(), what: w() }, libc::EEXIST),
            (Error::Resources { path: p(), what: w() }, libc::EAGAIN),
            (Error::Invalid { path: p(), what: w() }, libc::EINVAL),
        ];
        for (e, want) in cases {
            assert_eq!(e.errno(), want, "{e}");
        }
    }
}
