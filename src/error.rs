//! One error type for the whole crate.
//!
//! Every variant answers two questions an operator asks first: whose fault is it
//! ([`Fault`]) and is it worth retrying ([`Error::is_retryable`]).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who has to act for the error to go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bad configuration, arguments or input data: the user fixes it.
    User,
    /// A system we depend on (broker, disk, a shared library) failed: often transient.
    External,
    /// A bug or broken invariant in sailstream itself.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {key}: {problem}")]
    Config { key: String, problem: String },

    #[error("invalid {what}: {problem}")]
    InvalidInput { what: String, problem: String },

    #[error(
        "store at {path} is locked by another process (a running worker?); stop it, or open a checkpoint / read-only replica instead"
    )]
    StoreLocked { path: PathBuf },

    #[error(
        "store at {path} has format version {found}, newer than the {supported} this build understands; upgrade sailstream"
    )]
    StoreFormatTooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error(
        "store at {path} has format version {found}, older than the {supported} this build reads; open it once with a writer (`sailstream worker` or `sailstream replay`) to upgrade it in place"
    )]
    StoreFormatTooOld {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error("store corrupt: {context}")]
    StoreCorrupt { context: String },

    #[error("rocksdb: {context}: {source}")]
    RocksDb {
        context: String,
        #[source]
        source: rocksdb::Error,
    },

    #[error("kafka: {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("parquet/arrow: {context}: {message}")]
    Columnar { context: String, message: String },

    #[error("model manifest {path}: {key}: {problem}")]
    Manifest {
        path: PathBuf,
        key: String,
        problem: String,
    },

    /// The item cannot be embedded at all (no modality left after decoding, too many tokens of nothing, ...).
    #[error("cannot embed item '{item_id}': {problem}")]
    NotEmbeddable { item_id: String, problem: String },

    #[error("onnx runtime: {context}: {message}")]
    OnnxRuntime { context: String, message: String },

    #[error("metrics: {0}")]
    Metrics(String),

    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn fault(&self) -> Fault {
        match self {
            Error::Config { .. }
            | Error::InvalidInput { .. }
            | Error::StoreLocked { .. }
            | Error::StoreFormatTooNew { .. }
            | Error::StoreFormatTooOld { .. }
            | Error::Manifest { .. }
            | Error::NotEmbeddable { .. } => Fault::User,
            Error::RocksDb { .. }
            | Error::Kafka { .. }
            | Error::Io { .. }
            | Error::OnnxRuntime { .. }
            | Error::Metrics(_) => Fault::External,
            Error::Columnar { .. } => Fault::User,
            Error::StoreCorrupt { .. } | Error::Internal(_) => Fault::Internal,
        }
    }

    /// Whether the same call may succeed later without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kafka { source, .. } => !matches!(
                source,
                rdkafka::error::KafkaError::ClientConfig(..)
                    | rdkafka::error::KafkaError::ClientCreation(_)
                    | rdkafka::error::KafkaError::Subscription(_)
            ),
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
            ),
            Error::StoreLocked { .. } => true,
            _ => false,
        }
    }

    pub fn config(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            problem: problem.into(),
        }
    }

    pub fn invalid(what: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::InvalidInput {
            what: what.into(),
            problem: problem.into(),
        }
    }

    pub fn manifest(
        path: &std::path::Path,
        key: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        Error::Manifest {
            path: path.to_path_buf(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    pub fn ort(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Error::OnnxRuntime {
            context: context.into(),
            message: e.to_string(),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        Error::Kafka {
            context: context.into(),
            source,
        }
    }

    pub fn rocks(context: impl Into<String>, source: rocksdb::Error) -> Self {
        Error::RocksDb {
            context: context.into(),
            source,
        }
    }

    pub fn columnar(context: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Columnar {
            context: context.into(),
            message: message.to_string(),
        }
    }
}
