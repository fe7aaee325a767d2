//! The entry point of a member: opens the data directory, starts the node, the peer transport
//! and the client listeners, and runs until a signal or a fatal error.

use crate::config::ServerConfig;

/// Why a member stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    NotImplemented(&'static str),
}

/// Runs a member until it is told to stop (SIGINT / SIGTERM) or fails.
pub async fn run(config: ServerConfig) -> Result<(), ServerError> {
    let _ = config;
    Err(ServerError::NotImplemented("the server is being written"))
}
