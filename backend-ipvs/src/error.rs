//! The backend's error type.

use proxy_core::DataplaneError;

use crate::MODE;
use crate::client::ClientError;
use crate::{link, rules};

/// Errors of the IPVS backend.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error(transparent)]
    Rules(#[from] rules::RulesError),
    #[error("sysctl {name}: {source}")]
    Sysctl {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {netns}: {source}")]
    Netns {
        netns: String,
        #[source]
        source: std::io::Error,
    },
}

impl IpvsError {
    pub(crate) fn into_dataplane(self, operation: &str) -> DataplaneError {
        match self {
            IpvsError::Client(ClientError::Unavailable) => {
                DataplaneError::unavailable(MODE, ClientError::Unavailable.to_string())
            }
            e => DataplaneError::failed(MODE, operation, e),
        }
    }
}
