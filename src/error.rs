//! The library's error type. `Corrupt` (the bytes on disk are wrong) is kept apart from
//! `Io` (the disk or the OS failed) so callers can answer EIO, retry, or name the damage.

use std::path::PathBuf;

use crate::codec::CodecError;
use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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
    #[error("{}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
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

    /// A copy for every waiter of a shared decode (`io::Error` is not `Clone`: its kind and
    /// message are kept).
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Io { path, source } => Error::io(path, std::io::Error::new(source.kind(), source.to_string())),
            Error::Corrupt { file, chunk, what } => Error::corrupt(file, *chunk, what.clone()),
            other => Error::Invalid {
                path: PathBuf::new(),
                what: other.to_string(),
            },
        }
    }

    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. } | Error::VersionTooNew { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
