//! The engine library's one error type. Every variant's text says what was being
//! done and why it failed; inner errors are part of that text, not a `source` chain
//! (the binary prints errors with their chain, which would repeat them).

use std::net::SocketAddr;

use mpn_config::ConfigError;
use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value breaks a rule.
    #[error("invalid configuration: {0}")]
    Config(ConfigError),
    #[error("cannot read config file {path}: {error}")]
    ReadConfig { path: String, error: std::io::Error },
    /// The file (or an `MPN_*` variable) does not parse; `message` names the key.
    #[error("invalid configuration ({file}): {message}")]
    ParseConfig { file: String, message: String },
    #[error(transparent)]
    PartitionsChanged(PartitionsChanged),
    /// Kafka refused or failed an operation.
    #[error("{doing}: {error}")]
    Kafka { doing: String, error: KafkaError },
    #[error("{0}")]
    Admin(mpn_kafka::admin::AdminError),
    /// The cursor topic did not answer in time, or its reader stopped.
    #[error("{0}")]
    CursorTopic(String),
    #[error("grpc.listen: cannot bind {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// A thread or task of the engine could not start or ended abnormally.
    #[error("{0}")]
    Runtime(String),
    /// The payment history's database or keys; `transient` when the database could
    /// not be reached (start-up retries it like Kafka).
    #[error("history: {message}")]
    History { message: String, transient: bool },
}

impl Error {
    /// Whether trying again later may succeed: Kafka could not be reached or did not
    /// answer in time (start-up retries these with back-off, staying not ready);
    /// every other error (the configuration, a changed partition count, a port in
    /// use, a missing topic the engine may not create) needs a person.
    pub fn is_transient(&self) -> bool {
        use mpn_kafka::admin::AdminError;
        // librdkafka refusing to create a client is the configuration (a bad
        // `kafka.properties` entry), not the network: retrying cannot help.
        let client_config = |e: &KafkaError| {
            matches!(
                e,
                KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..)
            )
        };
        match self {
            Error::Kafka { error, .. } => !client_config(error),
            Error::CursorTopic(_) => true,
            Error::Admin(AdminError::Unreachable { source, .. }) => !client_config(source),
            Error::Admin(AdminError::Create { .. }) => true,
            Error::History { transient, .. } => *transient,
            _ => false,
        }
    }

    /// The history could not be opened.
    pub fn history(e: mpn_history::HistoryError) -> Self {
        let transient = e.is_unreachable();
        Error::History {
            message: e.to_string(),
            transient,
        }
    }

    /// `doing` failed with `error` (for `map_err`).
    pub fn kafka(doing: impl Into<String>) -> impl FnOnce(KafkaError) -> Self {
        let doing = doing.into();
        move |error| Error::Kafka { doing, error }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl From<PartitionsChanged> for Error {
    fn from(e: PartitionsChanged) -> Self {
        Error::PartitionsChanged(e)
    }
}

impl From<mpn_kafka::admin::AdminError> for Error {
    fn from(e: mpn_kafka::admin::AdminError) -> Self {
        Error::Admin(e)
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Runtime(format!("a start-up task failed: {e}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The input topic's partition count is not the one this deployment runs on (it was
/// grown). Cursors, CAFIS sequence numbers and CAFIS link owners are all computed
/// from the count, so the engine refuses to run on another one rather than skip or
/// renumber anything; `docs/runtime-semantics.md` ("The partition count is fixed")
/// gives the procedure.
#[derive(Debug, thiserror::Error)]
#[error(
    "kafka.input_topic `{topic}` has {now} partitions, but this deployment runs on {pinned} \
     (recorded in the cursor topic `{cursor_topic}` at its first start); the partition count \
     cannot change under a running deployment: its records on partitions {pinned} and up stay \
     in the topic unconsumed. Run a new deployment for the grown topic, as \
     docs/runtime-semantics.md \"The partition count is fixed\" describes"
)]
pub struct PartitionsChanged {
    pub topic: String,
    pub cursor_topic: String,
    pub pinned: usize,
    pub now: usize,
}

impl PartitionsChanged {
    pub fn new(kafka: &mpn_kafka::Config, pinned: usize, now: usize) -> Self {
        Self {
            topic: kafka.input_topic.clone(),
            cursor_topic: kafka.cursor_topic(),
            pinned,
            now,
        }
    }
}
